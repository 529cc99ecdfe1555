"""The simulated NSM behaves like the device: measured PCRs, locking, errors, DescribeNSM, GetRandom."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest

from enclavekit.nsm import Nsm, NsmSimulator, measure_code
from enclavekit.nsm.errors import NsmInputTooLarge, NsmInvalidIndex, NsmReadOnlyIndex
from enclavekit.nsm.measure import BOOT_IMAGE, ZERO_PCR, extend, measure_enclave

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
MODULE_ID = re.compile(r"^i-[0-9a-f]{17}-enc[0-9a-f]{16}$")  # the shape of every real module_id


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _app(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


# --- measurement -------------------------------------------------------------------------------------------------


def test_pcr0_changes_when_the_code_changes(tmp_path: Path, state: Path) -> None:
    app = _app(tmp_path / "app", {"main.py": "print('v1')\n", "lib/util.py": "X = 1\n"})
    before = NsmSimulator(state, app=app)
    (app / "lib" / "util.py").write_text("X = 2\n")
    after = NsmSimulator(state, app=app)
    assert before.pcr(0) != after.pcr(0)
    assert before.pcr(2) != after.pcr(2)
    assert before.pcr(1) == after.pcr(1)  # the simulated kernel and bootstrap did not change


def test_same_code_gives_the_same_pcr0_in_any_folder_and_any_order(tmp_path: Path) -> None:
    first = _app(tmp_path / "a", {"main.py": "print(1)\n", "z.py": "", "pkg/m.py": "M = 1\n"})
    second = _app(tmp_path / "b", {"pkg/m.py": "M = 1\n", "z.py": "", "main.py": "print(1)\n"})
    (second / "__pycache__").mkdir()
    (second / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\x00bytecode")
    (second / "stale.pyc").write_bytes(b"\x00")
    assert measure_code(first) == measure_code(second)
    one = NsmSimulator(tmp_path / "s1", app=first)
    two = NsmSimulator(tmp_path / "s2", app=second)
    assert one.pcr(0) == two.pcr(0)
    assert one.pcr(4) != two.pcr(4)  # another (simulated) parent instance


@pytest.mark.parametrize(
    "changed",
    [
        {"main.py": b"print(2)\n", "util.py": b"X = 1\n"},  # content
        {"main2.py": b"print(1)\n", "util.py": b"X = 1\n"},  # a file renamed
        {"main.py": b"print(1)\nX = 1\n", "util.py": b""},  # content moved between files
        {"main.py": b"print(1)\n", "util.py": b"X = 1\n", "new.py": b""},  # an empty file added
    ],
)
def test_any_change_to_the_measured_tree_changes_the_measurement(changed: dict[str, bytes]) -> None:
    original = {"main.py": b"print(1)\n", "util.py": b"X = 1\n"}
    assert measure_code(original) != measure_code(changed)


def test_code_measurement_follows_its_documented_format() -> None:
    expected = hashlib.sha384(b"enclavekit-code-measurement-v1\x00")
    for name, content in sorted({"b.py": b"B", "a/x.py": b"AX"}.items()):
        expected.update(len(name).to_bytes(8, "big") + name.encode() + len(content).to_bytes(8, "big") + content)
    assert measure_code({"b.py": b"B", "a/x.py": b"AX"}) == expected.digest()
    assert measure_code({"./a//x.py": b"AX", "b.py": b"B"}) == expected.digest()


def test_measured_paths_cannot_escape_their_tree() -> None:
    with pytest.raises(ValueError, match="leaves its tree"):
        measure_code({"../secret": b""})


def test_pcrs_are_derived_as_documented(state: Path) -> None:
    app = {"main.py": b"print('hi')\n"}
    simulator = NsmSimulator(state, app=app, role_arn="arn:aws:iam::123456789012:role/enclave")
    digest = measure_code(app)
    zero = bytes(48)
    pcr1 = hashlib.sha384(zero + hashlib.sha384(BOOT_IMAGE).digest()).digest()
    assert simulator.pcr(1) == pcr1
    assert simulator.pcr(2) == hashlib.sha384(zero + digest).digest()
    assert simulator.pcr(0) == hashlib.sha384(pcr1 + digest).digest()
    assert simulator.pcr(3) == hashlib.sha384(zero + b"arn:aws:iam::123456789012:role/enclave").digest()
    assert simulator.pcr(4) == hashlib.sha384(zero + simulator.instance_id.encode()).digest()
    assert all(simulator.pcr(i) == zero for i in (5, 6, 7, 8, *range(9, 32)))


def test_debug_mode_zeroes_pcr0_to_2_and_pcr8_like_the_real_nsm(state: Path) -> None:
    simulator = NsmSimulator(state, app={"main.py": b""}, debug=True)
    assert [simulator.pcr(i) for i in (0, 1, 2, 8)] == [ZERO_PCR] * 4
    assert simulator.pcr(4) != ZERO_PCR  # PCR3/PCR4 stay set in debug mode, as in real debug documents


def test_app_digest_can_be_given_instead_of_code(state: Path) -> None:
    digest = measure_code(b"image")
    assert NsmSimulator(state, app_digest=digest).pcr(0) == NsmSimulator(state, app=b"image").pcr(0)
    with pytest.raises(ValueError, match="not both"):
        NsmSimulator(state, app=b"image", app_digest=digest)
    with pytest.raises(ValueError, match="48-byte"):
        measure_enclave(b"short", instance_id="i-0")


# --- PCR registers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(16))
def test_boot_pcrs_refuse_extension(state: Path, index: int) -> None:
    nsm = NsmSimulator(state, app=b"app").client()
    before = nsm.describe_pcr(index)
    with pytest.raises(NsmReadOnlyIndex) as caught:
        nsm.extend_pcr(index, b"rewrite history")
    assert caught.value.code == "nsm_read_only_index"
    assert nsm.describe_pcr(index) == before
    assert before.locked


def test_application_pcr_extends_as_sha384_of_old_value_and_data(state: Path) -> None:
    nsm = NsmSimulator(state).client()
    assert nsm.describe_pcr(16).data == ZERO_PCR
    assert not nsm.describe_pcr(16).locked
    first = nsm.extend_pcr(16, b"config v1")
    assert first == hashlib.sha384(ZERO_PCR + b"config v1").digest()
    second = nsm.extend_pcr(16, b"")
    assert second == extend(first, b"")
    assert nsm.describe_pcr(16).data == second


def test_locked_application_pcr_refuses_extension_and_a_second_lock(state: Path) -> None:
    nsm = NsmSimulator(state).client()
    value = nsm.extend_pcr(20, b"measured config")
    nsm.lock_pcr(20)
    assert nsm.describe_pcr(20).locked
    with pytest.raises(NsmReadOnlyIndex):
        nsm.extend_pcr(20, b"tamper")
    with pytest.raises(NsmReadOnlyIndex):
        nsm.lock_pcr(20)
    assert nsm.describe_pcr(20).data == value
    assert 20 in nsm.describe_nsm().locked_pcrs


def test_lock_pcrs_locks_the_range_from_zero(state: Path) -> None:
    nsm = NsmSimulator(state).client()
    nsm.lock_pcrs(18)
    assert nsm.describe_nsm().locked_pcrs == tuple(range(18))
    with pytest.raises(NsmReadOnlyIndex):
        nsm.extend_pcr(17, b"x")
    nsm.extend_pcr(18, b"x")
    with pytest.raises(NsmInvalidIndex):
        nsm.lock_pcrs(33)
    nsm.lock_pcrs(32)
    assert nsm.describe_nsm().locked_pcrs == tuple(range(32))


@pytest.mark.parametrize("index", [32, 100, 0xFFFF])
def test_pcr_beyond_the_bank_is_an_invalid_index(state: Path, index: int) -> None:
    nsm = NsmSimulator(state).client()
    for call in (lambda: nsm.describe_pcr(index), lambda: nsm.extend_pcr(index, b"x"), lambda: nsm.lock_pcr(index)):
        with pytest.raises(NsmInvalidIndex):
            call()


def test_locked_application_pcr_is_reported_in_the_document_and_unlocked_ones_are_not(state: Path) -> None:
    simulator = NsmSimulator(state)
    nsm = simulator.client()
    nsm.extend_pcr(16, b"locked")
    nsm.lock_pcr(16)
    nsm.extend_pcr(17, b"still open")
    payload = cbor2.loads(cbor2.loads(nsm.attestation())[2])
    assert list(payload["pcrs"]) == list(range(17))
    assert payload["pcrs"][16] == simulator.pcr(16)


# --- DescribeNSM, GetRandom, raw protocol ------------------------------------------------------------------------


def test_describe_nsm_reports_what_a_real_nsm_reports(state: Path) -> None:
    simulator = NsmSimulator(state)
    description = simulator.client().describe_nsm()
    assert (description.version, description.max_pcrs, description.digest.value) == ("1.0.0", 32, "SHA384")
    assert description.locked_pcrs == tuple(range(16))
    assert description.module_id == simulator.module_id
    assert MODULE_ID.match(description.module_id)
    assert description.module_id.startswith(simulator.instance_id + "-enc")


def test_module_id_encodes_the_enclave_start_time_like_aws(state: Path) -> None:
    simulator = NsmSimulator(state, now=Clock(), random=lambda n: b"\xab" * n)
    enclave = simulator.module_id.split("-enc")[1]
    assert int(enclave[:12], 16) == int(T0.timestamp() * 1000)
    assert enclave[12:] == "abab"


def test_each_enclave_process_has_its_own_module_id(state: Path) -> None:
    assert NsmSimulator(state).module_id != NsmSimulator(state).module_id


def test_get_random_returns_256_bytes_from_the_injected_source(state: Path) -> None:
    assert len(NsmSimulator(state).client().get_random()) == 256
    fixed = NsmSimulator(state, random=lambda n: b"\x5a" * n)
    assert fixed.client().get_random() == b"\x5a" * 256


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (b"\xff", "InvalidOperation"),
        (cbor2.dumps("Shutdown"), "InvalidOperation"),
        (cbor2.dumps({"ExtendPCR": {"index": 16, "data": 5}}), "InvalidArgument"),
        (cbor2.dumps({"Attestation": {"user_data": b"u" * 1025}}), "InputTooLarge"),
        (cbor2.dumps({"DescribePCR": {"index": 32}}), "InvalidIndex"),
        (cbor2.dumps({"ExtendPCR": {"index": 0, "data": b"x"}}), "ReadOnlyIndex"),
        (b"\x40" * 0x1001, "InputTooLarge"),
    ],
)
def test_simulator_answers_bad_requests_with_the_device_error(state: Path, request_: bytes, error: str) -> None:
    assert cbor2.loads(NsmSimulator(state).handle(request_)) == {"Error": error}


def test_oversized_fields_are_refused_by_the_client_before_sending(state: Path) -> None:
    sent: list[bytes] = []
    simulator = NsmSimulator(state)

    def recording(request: bytes) -> bytes:
        sent.append(request)
        return simulator.handle(request)

    with pytest.raises(NsmInputTooLarge):
        Nsm(recording).attestation(public_key=b"k" * 1025)
    assert sent == []


def test_naive_clock_is_refused(state: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        NsmSimulator(state, now=lambda: datetime(2026, 1, 1))


def test_measurement_test_vector() -> None:
    """The vector written down in docs/nsm.md: the code measurement is a format of our own, so it is pinned."""
    app = measure_code({"main.py": b"print('hello')\n"})
    assert app.hex() == (
        "9d1443929225b576186a542de61138fb27642c52f7c735dd3700fd516f3e42122b9b5a6881e4b63a197719b9c1e77167"
    )
    assert measure_code({}).hex() == (
        "c764b95bf1bd35a41a3670f8306c2e071ca2857737bea03e68d8869c14ccbf7d47fbaf1e08b0b3f9cfb6761b69a28d4d"
    )
    measured = measure_enclave(app, instance_id="i-0123456789abcdef0")
    assert measured[1].hex() == (
        "777be5bb19538837ef17327f732e043643ced1f7a2e3c60648ad682866030741bb12d5677c9def95756be74ffc8d5d15"
    )
    assert measured[2].hex() == (
        "c2363b23fcc4da3a8e1cf0659a4076a47efd18c4ff3c2a968641938793926a743bd45f8ad48b19d514161f58f1523b8a"
    )
    assert measured[0].hex() == (
        "3e3a2eb6d14d07bd2760717f7326497903678c9ece38d0b591521953c6fd45ac6cab48ec342ce36587c4e822c7be68c4"
    )
    assert measured[4].hex() == (
        "d6432900ac1c343cb40286898792c55e962aef0cc35c4910c0c286145b51af19e782cb21cc31a042671d7dfbd398251c"
    )
