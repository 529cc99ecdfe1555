"""The vault's trust-deciding settings are measured: a hostile host that changes any of them (its own attestation
root, another replica count or quorum, another KMS key) gets another PCR0, so KMS releases it no material and the
vault's peers refuse it; the old host settings that decided trust are refused at boot; a peer whose attestation
chains to a root the host made is refused even when it claims the vault's own PCR0. Real processes, the real KMS
emulator (over HTTP), real NSM-simulator documents."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.enclave.measured_config import ForbiddenLaunchSetting, InvalidEnclaveConfig, check_launch_settings
from enclavekit.enclave.runtime import image_files
from enclavekit.errors import Error
from enclavekit.kms import EmulatorThread, KmsClient, open_service
from enclavekit.kms.measured import MeasuredKmsEndpoint
from enclavekit.nsm import NsmSimulator, load_root
from enclavekit.nsm.errors import SimulatorStateError
from enclavekit.services.vault.enclave_config import (
    ALLOWED_LAUNCH_SETTINGS,
    NotAnOperator,
    VaultEnclaveConfig,
    vault_config_document,
)
from enclavekit.services.vault.errors import LedgerUnavailable
from enclavekit.services.vault.guesses import GuessEntry
from enclavekit.services.vault.ledger_peers import MergeRefused, PeerReplica, merge_binding, verify_merge
from enclavekit.services.vault.sealing import encryption_context
from enclavekit.services.vault.stack import ENCLAVE_APP, expected_pcr0, provision_vault_config
from enclavekit.services.vault.wire import LedgerMerge

BOOT_TIMEOUT = 60.0


@dataclass
class World:
    state: Path
    kms_url: str
    config_path: Path
    config: VaultEnclaveConfig
    pcr0: str

    def document(self) -> dict[str, Any]:
        value = json.loads(self.config.raw)
        assert isinstance(value, dict)
        return value

    def kms(self, attester: Any) -> KmsClient:
        return KmsClient.connect(
            attester,
            region_name="us-east-1",
            endpoint_url=self.kms_url,
            aws_access_key_id="t",
            aws_secret_access_key="t",
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("vault-config")
    state = root / "state"
    state.mkdir()
    expected_pcr0(state)  # the simulator's root, which the KMS emulator trusts
    service = open_service(root / "kms", trusted_roots=[load_root(state)], region="us-east-1")
    with EmulatorThread(service) as emulator:
        endpoint = MeasuredKmsEndpoint(emulator.url, "us-east-1", None, unsafe_plain_http=True)
        path, pcr0 = provision_vault_config(state, emulator.url, endpoint)
        yield World(state, emulator.url, path, VaultEnclaveConfig.from_bytes(path.read_bytes()), pcr0)


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _host_root(folder: Path) -> str:
    """A root certificate the host made (its own NSM simulator's), as PEM."""
    expected_pcr0(folder)
    der = load_root(folder)
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def _hostile(world: World, tmp_path: Path, change: str) -> bytes:
    document = world.document()
    if change == "own_root":
        document["attestation_roots"].append(_host_root(tmp_path / "host-ca"))
    elif change == "replicas":
        document["ledger"] = {"replicas": 1, "quorum": 1}
    elif change == "key_id":
        document["kms"]["key_id"] = "host-chosen-key"
    elif change == "guess_limit":
        document["guess_limit"] = 255
    data = _canonical(document)
    VaultEnclaveConfig.from_bytes(data)  # a well-formed configuration: only the measurement tells it apart
    return data


def _launch(
    world: World, tmp_path: Path, *args: str, state: Path | None = None, objects: bool = True
) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "enclavekit.enclave",
        ENCLAVE_APP,
        "--state",
        str(state or world.state),
        "--listen",
        f"unix://{tmp_path / 'vault.sock'}",
        *(["--set", f"objects_route=unix://{tmp_path / 'objects.sock'}"] if objects else []),
        *args,
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _refused(process: subprocess.Popen[str]) -> str:
    """The error of a boot that must fail (exit 2: a configuration error), never a serving enclave."""
    try:
        out, err = process.communicate(timeout=BOOT_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert '"ready": true' not in out
    assert process.returncode == 2, (process.returncode, err[-2000:])
    return err


MUTATIONS: list[Callable[[dict[str, Any]], Any]] = [
    lambda d: d.update(format="enclavekit-notify-config"),
    lambda d: d.update(version=2),
    lambda d: d.update(trust_sim_root="/tmp/host"),
    lambda d: d["kms"].update(key_id=""),
    lambda d: d["kms"].update(region="mars"),
    lambda d: d["kms"].update(endpoint="http://host"),
    lambda d: d.update(ledger={"replicas": 3, "quorum": 1}),
    lambda d: d.update(ledger={"replicas": 4, "quorum": 2}),
    lambda d: d.update(ledger={"replicas": 3, "quorum": 4}),
    lambda d: d.update(ledger={"replicas": 0, "quorum": 0}),
    lambda d: d.update(ledger={"replicas": 99, "quorum": 60}),
    lambda d: d.update(ledger={"replicas": True, "quorum": 1}),
    lambda d: d.update(attestation_roots=[]),
    lambda d: d.update(attestation_roots=["not a certificate"]),
    lambda d: d.update(attestation_roots=d["attestation_roots"] * 2),
    lambda d: d.update(attestation_roots=d["attestation_roots"] * 5),
    lambda d: d.update(guess_limit=0),
    lambda d: d.update(guess_limit=256),
    lambda d: d.update(guess_limit="10"),
    lambda d: d.update(recovery={"delay_s": 0}),
    lambda d: d.update(recovery={"delay_s": 31 * 24 * 3600}),
    lambda d: d.update(recovery={"delay_s": "86400"}),
    lambda d: d.update(recovery={"delay": 5}),
    lambda d: d.update(recovery=[]),
]


@pytest.mark.parametrize("mutate", MUTATIONS)
def test_a_malformed_vault_config_is_refused_with_a_specific_error(world: World, mutate: Any) -> None:
    document = world.document()
    mutate(document)
    with pytest.raises(InvalidEnclaveConfig) as caught:
        VaultEnclaveConfig.from_bytes(_canonical(document))
    assert caught.value.code == "invalid_enclave_config"


@pytest.mark.parametrize("garbage", [b"", b"\xff\xfe", b"[]", b"null", b"{" * 100_000, b" " * 70_000])
def test_garbage_instead_of_a_vault_config_is_refused(garbage: bytes) -> None:
    with pytest.raises(InvalidEnclaveConfig):
        VaultEnclaveConfig.from_bytes(garbage)


def test_the_local_stack_measures_the_simulator_root_and_a_majority_quorum(world: World) -> None:
    assert world.config.roots == (load_root(world.state),)
    assert (world.config.replicas, world.config.quorum, world.config.guess_limit) == (3, 2, 10)
    assert image_files(ENCLAVE_APP, world.config.raw)["config"] == world.config.raw


@pytest.mark.parametrize("change", ["own_root", "replicas", "key_id", "guess_limit"])
def test_host_changing_a_trust_deciding_setting_gets_another_pcr0(world: World, tmp_path: Path, change: str) -> None:
    assert expected_pcr0(world.state, config=_hostile(world, tmp_path, change)) != world.pcr0


@pytest.mark.parametrize("change", ["own_root", "replicas", "key_id"])
def test_kms_releases_no_vault_material_to_an_enclave_with_a_host_changed_config(
    world: World, tmp_path: Path, change: str
) -> None:
    context = encryption_context("alice", 1)
    genuine = NsmSimulator(world.state, app=image_files(ENCLAVE_APP, world.config.raw))
    assert genuine.pcr(0).hex() == world.pcr0
    owner = world.kms(genuine.client().attestation)
    sealed = owner.generate_data_key(world.config.kms_key_id, encryption_context=context)
    hostile = NsmSimulator(world.state, app=image_files(ENCLAVE_APP, _hostile(world, tmp_path, change)))
    kms = world.kms(hostile.client().attestation)
    with pytest.raises(Error) as caught:
        kms.decrypt(sealed.ciphertext_blob, encryption_context=context)
    assert "denied" in caught.value.code
    with pytest.raises(Error):
        kms.generate_data_key(world.config.kms_key_id, encryption_context=context)
    assert owner.decrypt(sealed.ciphertext_blob, encryption_context=context) == sealed.plaintext


@pytest.mark.parametrize("change", ["own_root", "replicas"])
def test_host_launching_the_vault_with_a_changed_config_is_refused_at_boot(
    world: World, tmp_path: Path, change: str
) -> None:
    path = tmp_path / "hostile.json"
    path.write_bytes(_hostile(world, tmp_path, change))
    error = _refused(_launch(world, tmp_path, "--config", str(path)))
    assert "releases material beyond this enclave image" in error


@pytest.mark.parametrize(
    "setting",
    [
        "trust_sim_root={state}",
        "kms_url=http://127.0.0.1:1",
        "kms_key_id=host-chosen-key",
        "kms_region=eu-west-1",
        "replicas=1",
        "quorum=1",
        "objects={state}",
    ],
)
def test_old_host_settings_that_decided_trust_are_refused_at_boot(world: World, tmp_path: Path, setting: str) -> None:
    launched = _launch(
        world,
        tmp_path,
        "--config",
        str(world.config_path),
        "--set",
        setting.format(state=world.state),
    )
    error = _refused(launched)
    assert f"launch setting {setting.partition('=')[0]!r} is not accepted" in error


def test_vault_without_its_measured_config_is_refused_at_boot(world: World, tmp_path: Path) -> None:
    assert "--config" in _refused(_launch(world, tmp_path))


def test_vault_without_the_hosts_object_route_is_refused_at_boot(world: World, tmp_path: Path) -> None:
    """The enclave has no disk of its own (Nitro): it boots only with a route to the host's object service."""
    error = _refused(_launch(world, tmp_path, "--config", str(world.config_path), objects=False))
    assert "objects_route" in error


def test_host_listing_more_peers_than_the_measured_replicas_is_refused_at_boot(world: World, tmp_path: Path) -> None:
    peers = ",".join(f"unix://{tmp_path / f'p{i}.sock'}" for i in range(3))
    launched = _launch(
        world,
        tmp_path,
        "--config",
        str(world.config_path),
        "--set",
        f"ledger_peers={peers}",
    )
    assert "the measured ledger has 3 replicas" in _refused(launched)


def test_launch_settings_outside_the_routes_are_refused() -> None:
    check_launch_settings(
        {"kms_route": "127.0.0.1:1", "ledger_peers": "unix:///a"}, ALLOWED_LAUNCH_SETTINGS, app="vault"
    )
    with pytest.raises(ForbiddenLaunchSetting) as caught:
        check_launch_settings({"trust_sim_root": "/tmp"}, ALLOWED_LAUNCH_SETTINGS, app="vault")
    assert caught.value.code == "forbidden_launch_setting"
    with pytest.raises(ForbiddenLaunchSetting):
        check_launch_settings({f"k{i}": "" for i in range(100)}, ALLOWED_LAUNCH_SETTINGS, app="vault")


def test_ledger_merge_attested_under_a_host_root_is_refused_even_with_the_vault_pcr0(
    world: World, tmp_path: Path
) -> None:
    entry = GuessEntry(generation=1)  # the host would like to reset alice's count
    binding = merge_binding("alice", entry, "replica-a")
    host_state = tmp_path / "host-nsm"
    host_state.mkdir()
    forged_image = NsmSimulator(host_state, app=image_files(ENCLAVE_APP, world.config.raw))
    assert forged_image.pcr(0).hex() == world.pcr0  # "same image" — only the root tells it apart
    genuine = NsmSimulator(world.state, app=image_files(ENCLAVE_APP, world.config.raw))
    other_config = NsmSimulator(world.state, app=image_files(ENCLAVE_APP, _hostile(world, tmp_path, "replicas")))
    pcr0 = bytes.fromhex(world.pcr0)

    def merge(document: bytes) -> LedgerMerge:
        return LedgerMerge(user="alice", entry=entry.to_json(), document=base64.b64encode(document).decode())

    for forged in (forged_image, other_config):
        with pytest.raises(MergeRefused):
            verify_merge(
                merge(forged.client().attestation(user_data=binding)),
                pcr0=pcr0,
                roots=world.config.roots,
                replica="replica-a",
            )
    accepted = verify_merge(
        merge(genuine.client().attestation(user_data=binding)), pcr0=pcr0, roots=world.config.roots, replica="replica-a"
    )
    assert accepted == entry


def test_ledger_merge_captured_before_every_replica_restarted_is_refused_by_the_new_boots(world: World) -> None:
    """The host captures alice's merge from her enrollment (her epoch, no guess counted), lets her vault lock, restarts
    every replica (genesis: the ledger forgot her, her vault fails closed) and replays the capture to the new boots,
    with her deleted header put back: each such cycle used to give 10 more guesses at her real PIN. A merge binds the
    receiving replica's boot identity, so a new boot refuses it."""
    entry = GuessEntry(generation=1, epoch="5e" * 16)
    genuine = NsmSimulator(world.state, app=image_files(ENCLAVE_APP, world.config.raw))
    document = genuine.client().attestation(user_data=merge_binding("alice", entry, "boot-before"))
    captured = LedgerMerge(user="alice", entry=entry.to_json(), document=base64.b64encode(document).decode())
    pcr0 = bytes.fromhex(world.pcr0)
    assert verify_merge(captured, pcr0=pcr0, roots=world.config.roots, replica="boot-before") == entry
    with pytest.raises(MergeRefused):
        verify_merge(captured, pcr0=pcr0, roots=world.config.roots, replica="boot-after")
    read = LedgerMerge(user="alice", entry=GuessEntry().to_json(), document="")  # a read needs no document
    assert verify_merge(read, pcr0=pcr0, roots=world.config.roots, replica="boot-after") == GuessEntry()


def test_ledger_merge_moved_to_another_user_or_carrying_another_entry_is_refused(world: World) -> None:
    """A genuine merge for bob (whose PIN the host chose, and whose count is low) sent as alice's, or alice's merge
    with its entry swapped for a lower count: the document binds the user and the entry, so neither is merged."""
    genuine = NsmSimulator(world.state, app=image_files(ENCLAVE_APP, world.config.raw))
    pcr0 = bytes.fromhex(world.pcr0)
    bobs = GuessEntry(generation=1, epoch="b0" * 16)
    document = base64.b64encode(genuine.client().attestation(user_data=merge_binding("bob", bobs, "r"))).decode()
    for user, entry in (("alice", bobs), ("bob", GuessEntry(generation=1, epoch="b0" * 16, limit=255))):
        with pytest.raises(MergeRefused):
            verify_merge(
                LedgerMerge(user=user, entry=entry.to_json(), document=document),
                pcr0=pcr0,
                roots=world.config.roots,
                replica="r",
            )


def test_peer_enclave_attesting_under_a_host_root_does_not_count_as_a_replica(world: World, tmp_path: Path) -> None:
    """The host runs the vault image with the genuine configuration on its own NSM simulator (its own root): the
    same PCR0, so it even boots. A vault enclave reaching it with the measured roots refuses it as a peer."""
    host_state = tmp_path / "host-state"
    host_state.mkdir()
    launched = _launch(
        world,
        tmp_path,
        "--config",
        str(world.config_path),
        state=host_state,
    )
    address = f"unix://{tmp_path / 'vault.sock'}"
    try:

        async def no_attest(user_data: bytes) -> bytes:
            raise AssertionError("a snapshot needs no document")

        async def check() -> None:
            pcr0 = bytes.fromhex(world.pcr0)
            # Control: trusting the host's root, the same enclave (same PCR0) answers. It never says ready: a
            # replica of a measured three that reaches no peer neither catches up nor starts empty.
            deadline = time.monotonic() + BOOT_TIMEOUT
            while True:
                try:
                    trusting = PeerReplica(address, pcr0, (load_root(host_state),), no_attest)
                    identity, is_ready, view, entries = await trusting.snapshot()
                    break
                except (SimulatorStateError, LedgerUnavailable):  # its simulator root not made yet, not listening
                    assert launched.poll() is None, launched.stderr and launched.stderr.read()
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert identity and not is_ready and view is None and entries == {}
            await trusting.close()
            measured = PeerReplica(address, pcr0, world.config.roots, no_attest)
            with pytest.raises(LedgerUnavailable) as caught:
                await measured.snapshot()
            assert "has not caught up" not in caught.value.message
            await measured.close()

        asyncio.run(check())
    finally:
        launched.terminate()
        try:
            launched.wait(timeout=10)
        except subprocess.TimeoutExpired:
            launched.kill()
            launched.wait()


def test_operator_document_signed_by_another_key_is_refused(world: World) -> None:
    operator, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    raw = operator.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    config = VaultEnclaveConfig.from_bytes(
        vault_config_document(kms_key_id="k", roots_der=[load_root(world.state)], operator_keys=(raw,))
    )
    assert config.require_operator_signature(b"invite", operator.sign(b"invite")) == raw
    with pytest.raises(NotAnOperator):
        config.require_operator_signature(b"invite", stranger.sign(b"invite"))
    with pytest.raises(NotAnOperator):
        config.require_operator_signature(b"invite-2", operator.sign(b"invite"))


def test_the_local_stack_measures_its_operator_key(world: World) -> None:
    from enclavekit.client.identity import load
    from enclavekit.services.vault.stack import operator_key_path

    assert world.config.operator_keys == (load(operator_key_path(world.state)).public_key,)
