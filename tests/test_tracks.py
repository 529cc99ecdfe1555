"""Enclave tracks across real processes: genesis, joins, deaths, a new genesis, and peers that do not belong."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.client import AttestedClient
from enclavekit.nsm import load_root
from enclavekit.stack.tls import ensure_provider_tls
from tests.apps.tracked import LEAK, STATE, Empty
from tests.polling import wait_for

CLI = [sys.executable, "-m", "enclavekit.cli"]
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Enclave:
    process: subprocess.Popen[str]
    socket: Path
    log: Path
    ready: dict[str, str] | None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


class Cluster:
    def __init__(self, tmp_path: Path, nats_url: str) -> None:
        self.tmp_path = tmp_path
        self.nats_url = nats_url
        self.track = f"t{uuid.uuid4().hex[:10]}"
        self.state = tmp_path / "state"
        self.enclaves: list[Enclave] = []
        self.restored: dict[str, bool] = {}

    def start(
        self,
        name: str,
        *,
        app: str = "tests.apps.tracked:app",
        state: Path | None = None,
        pythonpath: str = "",
        join_timeout: float = 20,
        wait: bool = True,
        advertise: str | None = None,
        extra_env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> Enclave:
        socket_path = self.tmp_path / f"{name}.sock"
        log = self.tmp_path / f"{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(ROOT)) if p),
            "TRACK_NAME": self.track,
            "TRACK_NATS_URL": self.nats_url,
            "TRACK_TTL": "2",
            "TRACK_RENEW": "0.3",
            "TRACK_JOIN_TIMEOUT": str(join_timeout),
            **(extra_env or {}),
        }
        process = subprocess.Popen(
            [
                *CLI,
                "enclave",
                "run",
                app,
                "--listen",
                f"unix://{socket_path}",
                "--state",
                str(state or self.state),
                *(["--advertise", advertise] if advertise else []),
                *extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            text=True,
            env=env,
        )
        enclave = Enclave(process, socket_path, log, None)
        self.enclaves.append(enclave)
        if wait:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line, f"{name} exited before it was ready: {log.read_text()[-2000:]}"
            enclave.ready = json.loads(line)
        return enclave

    def state_of(self, enclave: Enclave, state: Path | None = None) -> tuple[str, bool]:
        """(fingerprint, genesis) of a member; see ``full_state`` for ``restored`` too."""
        assert enclave.ready is not None
        policy = NitroPolicy(
            measurements=[{0: bytes.fromhex(enclave.ready["pcr0"])}], roots=(load_root(state or self.state),)
        )

        async def ask() -> tuple[str, bool]:
            async with AttestedClient.nitro(f"unix://{enclave.socket}", policy) as client:
                answer = await client.call(STATE, Empty())
                self.restored[enclave.socket.name] = answer.restored
                return answer.fingerprint, answer.genesis

        return asyncio.run(ask())

    def leak(self, enclave: Enclave) -> str:
        assert enclave.ready is not None
        policy = NitroPolicy(measurements=[{0: bytes.fromhex(enclave.ready["pcr0"])}], roots=(load_root(self.state),))

        async def ask() -> str:
            async with AttestedClient.nitro(f"unix://{enclave.socket}", policy) as client:
                return (await client.call(LEAK, Empty())).hex

        return asyncio.run(ask())

    def stop_all(self) -> None:
        for enclave in self.enclaves:
            enclave.kill()


@pytest.fixture
def cluster(tmp_path: Path, nats_url: str) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, nats_url)
    try:
        yield cluster
    finally:
        cluster.stop_all()


def test_track_lifecycle_genesis_joins_survivors_and_a_new_genesis_after_the_lease_expires(
    cluster: Cluster,
) -> None:
    first = cluster.start("e1")
    second = cluster.start("e2")
    third = cluster.start("e3")
    fingerprint, genesis = cluster.state_of(first)
    assert genesis
    assert cluster.state_of(second) == (fingerprint, False)
    assert cluster.state_of(third) == (fingerprint, False)

    first.kill()
    second.kill()
    fourth = cluster.start("e4")  # joins from the survivor
    assert cluster.state_of(fourth) == (fingerprint, False)

    third.kill()
    fourth.kill()
    started = time.monotonic()
    fifth = cluster.start("e5")  # nobody left: waits for the lease to expire, then genesis
    new_fingerprint, genesis = cluster.state_of(fifth)
    assert genesis
    assert new_fingerprint != fingerprint
    assert time.monotonic() - started < 15


def test_redis_lease_store_runs_the_same_lifecycle(tmp_path: Path) -> None:
    """Redis as the lease store (the machine's Redis): genesis, a join, then a new genesis once all are gone."""
    import redis

    url = os.environ.get("ENCLAVEKIT_TEST_REDIS", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {url}")
    cluster = Cluster(tmp_path, url)
    try:
        first = cluster.start("r1")
        second = cluster.start("r2")
        fingerprint, genesis = cluster.state_of(first)
        assert genesis
        assert cluster.state_of(second) == (fingerprint, False)
        first.kill()
        second.kill()
        third = cluster.start("r3")
        new_fingerprint, genesis = cluster.state_of(third)
        assert genesis
        assert new_fingerprint != fingerprint
    finally:
        cluster.stop_all()


def test_two_enclaves_booting_at_once_agree_on_one_secret(cluster: Cluster) -> None:
    a = cluster.start("a", wait=False)
    b = cluster.start("b", wait=False)
    for enclave in (a, b):
        assert enclave.process.stdout is not None
        enclave.ready = json.loads(enclave.process.stdout.readline())
    (fa, ga), (fb, gb) = cluster.state_of(a), cluster.state_of(b)
    assert fa == fb
    assert ga != gb  # exactly one genesis


def test_enclave_with_other_code_is_refused_the_secret(cluster: Cluster, tmp_path: Path) -> None:
    member = cluster.start("member")
    package = tmp_path / "changed"
    package.mkdir()
    shutil.copy(ROOT / "tests" / "apps" / "tracked.py", package / "__init__.py")
    with (package / "__init__.py").open("a") as handle:
        handle.write("\nEXFILTRATE = True\n")
    intruder = cluster.start("intruder", app="changed:app", pythonpath=str(tmp_path), join_timeout=3, wait=False)
    assert intruder.process.wait(30) != 0  # never got the secret, and could not do genesis either
    assert "measurement_mismatch" in intruder.log.read_text()
    assert "handed the secret" not in member.log.read_text()


def test_joiner_refuses_a_member_whose_document_chains_to_a_foreign_root(cluster: Cluster, tmp_path: Path) -> None:
    foreign_state = tmp_path / "foreign-state"
    impostor = cluster.start("impostor", state=foreign_state)  # same code, another (untrusted) NSM root
    assert cluster.state_of(impostor, foreign_state)[1]  # it did genesis
    joiner = cluster.start("joiner", join_timeout=3, wait=False)
    assert joiner.process.wait(30) != 0
    assert "chain_untrusted" in joiner.log.read_text()


def test_no_secret_in_the_lease_store_the_relayed_join_or_the_logs(cluster: Cluster, tmp_path: Path) -> None:
    """The member advertises a capturing host relay, so the join crosses the host; then search for the secret."""
    from enclavekit.stack.processes import free_port

    relay_port = free_port()
    capture = tmp_path / "relayed.bin"
    member_socket = tmp_path / "m1.sock"
    relay = subprocess.Popen(
        [
            *CLI,
            "host",
            "relay",
            "--listen",
            f"tcp://127.0.0.1:{relay_port}",
            "--upstream",
            f"unix://{member_socket}",
            "--capture",
            str(capture),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None
        relay.stdout.readline()
        member = cluster.start("m1", advertise=f"tcp://127.0.0.1:{relay_port}")
        joiner = cluster.start("j1")
        assert cluster.state_of(joiner)[0] == cluster.state_of(member)[0]
        secret = bytes.fromhex(cluster.leak(member))
    finally:
        relay.terminate()
        relay.wait(10)
    assert len(secret) == 32
    forms = [secret, secret.hex().encode(), base64.b64encode(secret)]
    relayed = capture.read_bytes()
    assert len(relayed) > 2000, "the join went through the relay"
    stored = asyncio.run(_kv_values(cluster))
    assert stored, "the lease store holds the lease and members"
    for form in forms:
        assert form not in relayed
        assert form not in stored
        for enclave in (member, joiner):
            assert form not in enclave.log.read_bytes()


def _track_keys(cluster: Cluster) -> list[str]:
    """The keys the track's lease bucket still holds (the lease, members); empty once every entry expired."""
    from enclavekit.enclave.tracks import NatsLeaseStore

    async def keys() -> list[str]:
        store = NatsLeaseStore(cluster.nats_url, ttl=2)
        try:
            return await store.keys(cluster.track)
        finally:
            await store.close()

    return asyncio.run(keys())


async def _kv_values(cluster: Cluster) -> bytes:
    """Every message the lease bucket's stream still stores, read by sequence (no KV watcher, no key listing)."""
    from nats.js.errors import NotFoundError

    from enclavekit.enclave.tracks import NatsLeaseStore

    nc = await nats.connect(cluster.nats_url)
    try:
        js = nc.jetstream()
        stream = f"KV_{NatsLeaseStore.bucket_name(cluster.track)}"
        state = (await js.stream_info(stream)).state
        stored = []
        for seq in range(state.first_seq, state.last_seq + 1):
            with contextlib.suppress(NotFoundError):  # replaced by a later write to the same key
                stored.append((await js.get_msg(stream, seq)).data or b"")
        return b"".join(stored)
    finally:
        await nc.close()


async def test_member_listing_is_complete_while_members_renew(nats_url: str) -> None:
    """Listing members must not miss one because others write meanwhile: ``KeyValue.keys()`` can (nats.py#842)
    and a joiner that sees no member would wait for the lease to expire instead of joining."""
    from enclavekit.enclave.tracks import Member, NatsLeaseStore

    track = f"t{uuid.uuid4().hex[:10]}"
    writers = [NatsLeaseStore(nats_url, ttl=30) for _ in range(3)]
    reader = NatsLeaseStore(nats_url, ttl=30)
    members = [Member(f"m{index}", f"tcp://10.0.0.{index}:5000") for index in range(6)]
    try:
        for index, member in enumerate(members):
            await writers[index % 3].renew(track, member)
        stop = asyncio.Event()

        async def renew_forever(store: NatsLeaseStore, mine: list[Member]) -> None:
            while not stop.is_set():
                for member in mine:
                    await store.renew(track, member)

        renewing = [asyncio.create_task(renew_forever(store, members[index::3])) for index, store in enumerate(writers)]
        try:
            for _ in range(100):
                assert sorted(m.id for m in await reader.members(track)) == [m.id for m in members]
        finally:
            stop.set()
            await asyncio.gather(*renewing)
        await writers[0].leave(track, members[0])
        assert sorted(m.id for m in await reader.members(track)) == [m.id for m in members[1:]]
    finally:
        for store in (*writers, reader):
            await store.close()


def test_persisted_track_survives_a_full_restart_only_for_code_the_key_policy_accepts(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Genesis wraps the secret with KMS; after every member is gone, the next enclave restores it from KMS,
    which releases it (as CiphertextForRecipient) only to an enclave whose PCR0 the key policy names."""
    import boto3

    import tests.apps.tracked  # noqa: F401 - measured below, as the enclave process measures itself
    from enclavekit.enclave.runtime import image_files
    from enclavekit.nsm import NsmSimulator

    NsmSimulator(cluster.state, app=image_files("tests.apps.tracked:app"))  # makes the root the emulator trusts
    tls = ensure_provider_tls(tmp_path / "kms-tls", "127.0.0.1")  # the emulator's CA, pinned by the config
    kms = subprocess.Popen(
        [*CLI, "kms", "serve", "--port", "0", "--state", str(tmp_path / "kms"), "--trust-sim-root", str(cluster.state),
         "--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        assert kms.stdout is not None
        url = json.loads(kms.stdout.readline())["url"]
        assert url.startswith("https://")
        config_file = tmp_path / "tracked-config.json"
        config_file.write_bytes(json.dumps({"kms_endpoint": {"url": url, "ca_pem": tls.ca_pem}}).encode())
        pcr0 = NsmSimulator(cluster.state, app=image_files("tests.apps.tracked:app", config_file.read_bytes())).pcr(0)
        client = boto3.client(
            "kms",
            endpoint_url=url,
            region_name="us-east-1",
            verify=str(tls.cert_file.with_name("ca.pem")),
            aws_access_key_id="x",
            aws_secret_access_key="y",
        )
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Admin",
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::111122223333:role/admin"},
                    "Action": ["kms:DescribeKey"],
                    "Resource": "*",
                },
                {
                    "Sid": "Enclave",
                    "Effect": "Allow",
                    "Principal": {"AWS": "arn:aws:iam::111122223333:role/enclave"},
                    "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                    "Resource": "*",
                    "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0.hex()}},
                },
            ],
        }
        key_id = client.create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
        env = {"TRACK_KMS_KEY": key_id}
        args = ("--config", str(config_file))
        first = cluster.start("p1", extra_env=env, extra_args=args)
        second = cluster.start("p2", extra_env=env, extra_args=args)
        fingerprint, genesis = cluster.state_of(first)
        assert genesis
        assert cluster.state_of(second)[0] == fingerprint
        first.kill()
        second.kill()

        third = cluster.start("p3", extra_env=env, extra_args=args)  # a full restart: lease expired, nobody left
        assert cluster.state_of(third) == (fingerprint, True)
        assert cluster.restored[third.socket.name]
        assert "restored from KMS" in third.log.read_text()
        third.kill()

        package = tmp_path / "changed"
        package.mkdir()
        shutil.copy(ROOT / "tests" / "apps" / "tracked.py", package / "__init__.py")
        with (package / "__init__.py").open("a") as handle:
            handle.write("\nEXFILTRATE = True\n")
        wait_for(lambda: not _track_keys(cluster), 30, interval=0.2, what="the killed members' lease expires")
        # (so the intruder is the one to restore)
        intruder = cluster.start(
            "p4", app="changed:app", pythonpath=str(tmp_path), extra_env=env, extra_args=args, wait=False
        )
        assert intruder.process.wait(60) != 0
        assert "AccessDenied" in intruder.log.read_text() or "access_denied" in intruder.log.read_text()
    finally:
        kms.terminate()
        kms.wait(10)
