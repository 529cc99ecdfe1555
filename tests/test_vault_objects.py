"""Vault objects through the host: one contract for the folder, S3 (moto's server speaking the real S3 protocol)
and the enclave's RemoteObjectStore in front of either; and a hostile object service — another user's object, an
old version, garbage, a huge answer, a hang — gets a specific error, never a crash and never a wrong state."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from enclavekit.errors import Error
from enclavekit.rpc import CallContext, Route, Router, RpcServer, ServerLimits
from enclavekit.services.vault import remote_objects as wire
from enclavekit.services.vault.core import VaultCore
from enclavekit.services.vault.errors import VaultUnavailable
from enclavekit.services.vault.guesses import GuessLedger
from enclavekit.services.vault.keys import UNSAFE_TEST_ARGON2
from enclavekit.services.vault.object_service import ObjectService
from enclavekit.services.vault.objects import (
    MAX_OBJECT,
    DirectoryObjectStore,
    ObjectStore,
    S3ObjectStore,
    object_store,
)
from enclavekit.services.vault.remote_objects import RemoteObjectStore
from enclavekit.services.vault.sealing import KmsSealer
from tests.vault_support import VaultWorld, vault_world

S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto in server mode: a real HTTP server answering the S3 REST protocol, which boto3 talks to unchanged."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _s3(endpoint: str) -> S3ObjectStore:
    bucket = f"vault-{secrets.token_hex(6)}"
    store = S3ObjectStore.connect(bucket, endpoint_url=endpoint, **S3_CREDENTIALS)
    store.client.create_bucket(Bucket=bucket)
    return store


@dataclass
class Served:
    """An object service (the host's process, here in the test's loop) over ``backing``, and the enclave's client."""

    backing: ObjectStore
    service: ObjectService
    remote: RemoteObjectStore


@pytest.fixture
async def served_folder(tmp_path: Path) -> AsyncIterator[Served]:
    async with _Serve(DirectoryObjectStore(tmp_path / "objects"), tmp_path) as served:
        yield served


class _Serve:
    def __init__(self, backing: ObjectStore, tmp_path: Path, *, timeout: float = 10.0) -> None:
        self.backing, self.path, self.timeout = backing, tmp_path / "objects.sock", timeout

    async def __aenter__(self) -> Served:
        self.service = ObjectService(self.backing)
        address = await self.service.start(f"unix://{self.path}")
        self.remote = RemoteObjectStore(address, timeout=self.timeout)
        return Served(self.backing, self.service, self.remote)

    async def __aexit__(self, *exc: object) -> None:
        await self.remote.close()
        await self.service.close()


@pytest.fixture(params=["folder", "s3", "remote-folder", "remote-s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    kind: str = request.param
    backing: ObjectStore = (
        _s3(request.getfixturevalue("s3_endpoint")) if kind.endswith("s3") else DirectoryObjectStore(tmp_path / "o")
    )
    if not kind.startswith("remote"):
        yield backing
        return
    async with _Serve(backing, tmp_path) as served:
        yield served.remote


# --- the contract: the same test against every store ------------------------------------------------------------


async def test_object_round_trip_overwrite_delete_and_missing(store: ObjectStore) -> None:
    assert await store.get("vaults/alice/header.1") is None
    await store.put("vaults/alice/header.1", b"\x00first")
    assert await store.get("vaults/alice/header.1") == b"\x00first"
    await store.put("vaults/alice/header.1", b"second, longer than the first")
    assert await store.get("vaults/alice/header.1") == b"second, longer than the first"  # whole, never half
    await store.delete("vaults/alice/header.1")
    await store.delete("vaults/alice/header.1")  # deleting a missing object is not an error
    assert await store.get("vaults/alice/header.1") is None


async def test_list_names_only_that_users_objects_sorted(store: ObjectStore) -> None:
    for key in ["vaults/alice/items/b.1", "vaults/alice/index.1.1", "vaults/alice2/header.1", "vaults/bob/header.1"]:
        await store.put(key, b"x")
    assert await store.list("vaults/alice/") == ["vaults/alice/index.1.1", "vaults/alice/items/b.1"]
    assert await store.list("vaults/carol/") == []


async def test_largest_object_round_trips_and_a_larger_one_is_refused(store: ObjectStore) -> None:
    largest = secrets.token_bytes(MAX_OBJECT)
    await store.put("vaults/alice/items/big.1", largest)
    assert await store.get("vaults/alice/items/big.1") == largest
    with pytest.raises(ValueError, match="too large"):
        await store.put("vaults/alice/items/big.2", largest + b"!")


@pytest.mark.parametrize("key", ["vaults/alice/../bob/header.1", "elsewhere/x", "vaults/al ice/x", "vaults/a"])
async def test_keys_outside_a_users_folder_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="not a vault object key"):
        await store.put(key, b"x")
    with pytest.raises(ValueError, match="not a vault object key"):
        await store.get(key)


@pytest.mark.parametrize("kind", ["folder", "s3"])
async def test_oversized_object_planted_in_the_store_is_vault_unavailable(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The host writes a huge object behind the store's back: reading it fails cleanly, it is not loaded whole."""
    huge = b"x" * (MAX_OBJECT + 1)
    store: ObjectStore
    if kind == "s3":
        store = s3 = _s3(request.getfixturevalue("s3_endpoint"))
        s3.client.put_object(Bucket=s3.bucket, Key="vaults/alice/items/huge.1", Body=huge)
    else:
        store = DirectoryObjectStore(tmp_path)
        (tmp_path / "vaults" / "alice" / "items").mkdir(parents=True)
        (tmp_path / "vaults" / "alice" / "items" / "huge.1").write_bytes(huge)
    with pytest.raises(VaultUnavailable):
        await store.get("vaults/alice/items/huge.1")


async def test_remote_store_reaches_a_planted_oversized_object_as_vault_unavailable(
    served_folder: Served, tmp_path: Path
) -> None:
    folder = tmp_path / "objects" / "vaults" / "alice"
    folder.mkdir(parents=True)
    (folder / "header.1").write_bytes(b"x" * (MAX_OBJECT + 1))
    with pytest.raises(VaultUnavailable):
        await served_folder.remote.get("vaults/alice/header.1")
    await served_folder.remote.put("vaults/alice/header.2", b"ok")  # the connection and the service live on
    assert await served_folder.remote.get("vaults/alice/header.2") == b"ok"


async def test_object_store_url_picks_folder_or_s3(tmp_path: Path, s3_endpoint: str) -> None:
    assert object_store((tmp_path / "o").as_uri()) == DirectoryObjectStore(tmp_path / "o")
    assert object_store(str(tmp_path / "o")) == DirectoryObjectStore(tmp_path / "o")
    s3 = object_store("s3://vault-objects", s3_endpoint_url=s3_endpoint, s3_region="eu-west-1")
    assert isinstance(s3, S3ObjectStore) and s3.bucket == "vault-objects"
    assert s3.client.meta.endpoint_url == s3_endpoint and s3.client.meta.region_name == "eu-west-1"
    for bad in ("s3://", "s3://bucket/prefix", "http://example.com/x"):
        with pytest.raises(Error):
            object_store(bad)


# --- a hostile object service ------------------------------------------------------------------------------------


@dataclass
class HostileStore:
    """The host's store, which the host can make lie: ``swap`` maps a key to another key's object, ``frozen`` serves
    a snapshot taken earlier, ``garbage`` answers random bytes for keys with this suffix, ``hang`` never answers."""

    inner: DirectoryObjectStore
    swap: Callable[[str], str] = field(default=lambda key: key)
    frozen: dict[str, bytes] | None = None
    garbage: str | None = None
    hang: bool = False

    async def snapshot(self, user: str) -> dict[str, bytes]:
        keys = await self.inner.list(f"vaults/{user}/")
        return {key: data for key in keys if (data := await self.inner.get(key)) is not None}

    async def get(self, key: str) -> bytes | None:
        if self.hang:
            await asyncio.Event().wait()
        if self.garbage is not None and key.endswith(self.garbage):
            return secrets.token_bytes(200)
        if self.frozen is not None:
            return self.frozen.get(key)
        return await self.inner.get(self.swap(key))

    async def put(self, key: str, data: bytes) -> None:
        await self.inner.put(key, data)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def list(self, prefix: str) -> list[str]:
        if self.frozen is not None:
            return sorted(k for k in self.frozen if k.startswith(prefix))
        return await self.inner.list(prefix)


def _core(world: VaultWorld, objects: ObjectStore) -> VaultCore:
    return VaultCore(
        GuessLedger(world.replicas), KmsSealer(world.kms_client(), world.key_id), objects, argon2=UNSAFE_TEST_ARGON2
    )


@dataclass
class Hostile:
    world: VaultWorld
    store: HostileStore
    remote: RemoteObjectStore
    core: VaultCore


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[Hostile]:
    with vault_world(tmp_path) as world:
        store = HostileStore(DirectoryObjectStore(world.objects_dir))
        async with _Serve(store, tmp_path, timeout=1.0) as served:
            core = _core(world, served.remote)
            for user, value in (("alice", b"alice's value"), ("bob", b"bob's value")):
                opened = await core.enroll(user, "2468")
                await core.store(opened).commit({"item": value}, {"names": ["item"]})
            yield Hostile(world, store, served.remote, core)


async def _read(core: VaultCore, user: str) -> bytes:
    store = core.store(await core.unlock(user, "2468"))
    return await store.read_item("item")


async def _code(call: Awaitable[Any]) -> str:
    with pytest.raises(Error) as caught:
        await call
    return caught.value.code


async def test_remote_store_serves_the_vault_through_the_host(hostile: Hostile) -> None:
    assert await _read(hostile.core, "alice") == b"alice's value"
    cold = _core(hostile.world, hostile.remote)  # another enclave, nothing warm
    assert await _read(cold, "bob") == b"bob's value"
    stored = [p.read_bytes() for p in hostile.world.objects_dir.rglob("*") if p.is_file()]
    assert stored and not any(b"value" in data for data in stored)  # the host holds ciphertext


async def test_service_answering_another_users_objects_is_state_rolled_back(hostile: Hostile) -> None:
    hostile.store.swap = lambda key: key.replace("vaults/alice/", "vaults/bob/")
    assert await _code(_read(hostile.core, "alice")) == "state_rolled_back"  # bob's header is not alice's
    hostile.store.swap = lambda key: key.replace("/bob/", "/alice/") if "/index." in key else key
    assert await _code(_read(_core(hostile.world, hostile.remote), "bob")) == "state_rolled_back"  # alice's index


async def test_service_answering_an_old_version_is_state_rolled_back(hostile: Hostile) -> None:
    old = await hostile.store.snapshot("alice")
    store = hostile.core.store(await hostile.core.unlock("alice", "2468"))
    await store.commit({"item": b"alice's newer value"}, {"names": ["item"]})
    hostile.store.frozen = old
    assert await _code(_read(_core(hostile.world, hostile.remote), "alice")) == "state_rolled_back"


async def test_service_answering_garbage_is_state_corrupt_or_rolled_back(hostile: Hostile) -> None:
    hostile.store.garbage = "/header.1"
    assert await _code(_read(hostile.core, "alice")) == "state_corrupt"
    hostile.store.garbage = "/index.1.1"
    assert await _code(_read(hostile.core, "alice")) == "state_rolled_back"  # no readable index as new as the ledger
    hostile.store.garbage = "item.1"
    assert await _code(_read(hostile.core, "alice")) == "state_rolled_back"  # not the object the index names
    hostile.store.garbage = None
    assert await _read(hostile.core, "alice") == b"alice's value"  # nothing was lost or crashed


async def test_service_that_hangs_is_vault_unavailable_within_the_timeout(hostile: Hostile) -> None:
    hostile.store.hang = True
    started = asyncio.get_running_loop().time()
    assert await _code(_read(hostile.core, "alice")) == "vault_unavailable"
    assert asyncio.get_running_loop().time() - started < 5  # the timeout is 1 s; never forever
    hostile.store.hang = False
    assert await _read(hostile.core, "alice") == b"alice's value"


# --- a service that speaks the protocol badly (the host controls its code) --------------------------------------


class _LyingService:
    """An object service that answers what ``answer`` makes of each request, bypassing the models' checks."""

    def __init__(self, answer: Callable[[str, Any], Any]) -> None:
        self.router = Router()
        routes: tuple[Route[Any, Any], ...] = (
            wire.OBJECTS_GET,
            wire.OBJECTS_PUT,
            wire.OBJECTS_DELETE,
            wire.OBJECTS_LIST,
        )
        for route in routes:
            self.router.add(route, self._handler(route.name, answer))
        self.server = RpcServer(
            self.router, unsafe_plaintext=True, limits=ServerLimits(max_frame_size=16 * 1024 * 1024)
        )

    @staticmethod
    def _handler(name: str, answer: Callable[[str, Any], Any]) -> Callable[[Any, CallContext], Awaitable[Any]]:
        async def handle(request: Any, call: CallContext) -> Any:
            return answer(name, request)

        return handle


def _lie(name: str, request: wire.ObjectKey | wire.ObjectPut | wire.ObjectPrefix) -> Any:
    if name == wire.OBJECTS_LIST.name:
        return wire.ObjectKeys.model_construct(keys=["vaults/bob/header.1", "vaults/alice/../bob/x"])
    if name == wire.OBJECTS_GET.name:
        key = getattr(request, "key", "")
        if key.endswith("huge.1"):
            return wire.ObjectData.model_construct(data="A" * (5 * 1024 * 1024))  # over the client's frame limit
        if key.endswith("big.1"):
            return wire.ObjectData.model_construct(data=base64.b64encode(bytes(MAX_OBJECT + 3)).decode())
        return wire.ObjectData.model_construct(data="%% not base64 %%")
    return wire.ObjectDone()


async def test_service_answering_out_of_bounds_is_vault_unavailable_never_a_crash(tmp_path: Path) -> None:
    liar = _LyingService(_lie)
    address = await liar.server.start(f"unix://{tmp_path / 'liar.sock'}")
    remote = RemoteObjectStore(str(address), timeout=2.0)
    try:
        for call in (
            remote.get("vaults/alice/header.1"),  # garbage base64
            remote.get("vaults/alice/items/big.1"),  # decodes to more than MAX_OBJECT
            remote.list("vaults/alice/"),  # another user's key, a path traversal
            remote.get("vaults/alice/items/huge.1"),  # a frame over the limit: the connection is dropped
        ):
            assert await _code(call) == "vault_unavailable"
        await remote.put("vaults/alice/header.1", b"x")  # reconnects after the dropped connection
    finally:
        await remote.close()
        await liar.server.close()


async def test_unreachable_object_service_is_vault_unavailable(tmp_path: Path) -> None:
    remote = RemoteObjectStore(f"unix://{tmp_path / 'nobody.sock'}", timeout=1.0)
    assert await _code(remote.get("vaults/alice/header.1")) == "vault_unavailable"
    assert await _code(remote.list("vaults/alice/")) == "vault_unavailable"


async def test_object_service_process_stores_the_enclaves_objects_in_s3(s3_endpoint: str, tmp_path: Path) -> None:
    """``vault objects serve --store s3://...`` as the host runs it (its own process): what the enclave's remote
    store puts lands in the bucket, through boto3 on the host."""
    bucket = _s3(s3_endpoint)
    socket_path = tmp_path / "objects.sock"
    argv = [sys.executable, "-m", "enclavekit.cli", "vault", "objects", "serve", "--listen", f"unix://{socket_path}"]
    argv += ["--store", f"s3://{bucket.bucket}", "--s3-endpoint", s3_endpoint, "--s3-region", "us-east-1"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE)
    remote = RemoteObjectStore(f"unix://{socket_path}")
    try:
        assert process.stdout is not None
        ready = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        assert ready["ready"] is True
        await remote.put("vaults/alice/header.1", b"ciphertext")
        assert await remote.get("vaults/alice/header.1") == b"ciphertext"
        assert await remote.list("vaults/alice/") == ["vaults/alice/header.1"]
        stored = bucket.client.get_object(Bucket=bucket.bucket, Key="vaults/alice/header.1")["Body"].read()
        assert stored == b"ciphertext"
    finally:
        await remote.close()
        process.terminate()
        await process.wait()


def test_vault_enclave_code_loads_no_aws_sdk() -> None:
    """boto3 stays on the host: the vault enclave's app and its object store import neither boto3 nor botocore
    (nor any host framework of tests/test_tcb.py)."""
    from tests.test_tcb import HOST_FRAMEWORKS

    code = (
        "import sys, enclavekit.services.vault.enclave_app, enclavekit.services.vault.remote_objects\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(run.stdout.split())
    assert "enclavekit" in loaded and not loaded & HOST_FRAMEWORKS, loaded & HOST_FRAMEWORKS


async def test_object_service_restarted_between_calls_is_reached_again(tmp_path: Path) -> None:
    """The host restarts its object service (the stack's supervisor does after a crash): the enclave's store
    reconnects on its own and nothing is lost (the objects are in the folder)."""
    folder = DirectoryObjectStore(tmp_path / "objects")
    first = ObjectService(folder)
    address = await first.start(f"unix://{tmp_path / 'objects.sock'}")
    remote = RemoteObjectStore(address, timeout=2.0)
    try:
        await remote.put("vaults/alice/header.1", b"before")
        await first.close()
        second = ObjectService(folder)
        await second.start(address)
        try:
            assert await remote.get("vaults/alice/header.1") == b"before"
            await remote.put("vaults/alice/header.2", b"after")
        finally:
            await second.close()
    finally:
        await remote.close()
