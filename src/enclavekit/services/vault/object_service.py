"""The host's object service for vault enclaves (untrusted): stores the ciphertext they send, nothing more.

``enclavekit vault objects serve --listen ADDR --store URL`` answers the routes of
:mod:`~enclavekit.services.vault.remote_objects` (get, put, delete, list) from an
:class:`~enclavekit.services.vault.objects.ObjectStore` chosen by URL: ``file:///STATE/vault/objects`` locally,
``s3://bucket`` at scale (the same code; ``--s3-endpoint`` for an S3-compatible server). It sees what the host
sees anyway — object keys, sizes, timing — and checks its own input like any boundary: key shapes, object sizes,
frame sizes. One log line per call: route, key, outcome, time.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from enclavekit.errors import Error
from enclavekit.rpc import CallContext, InvalidRequest, Router, RpcServer, ServerLimits
from enclavekit.services.vault.errors import VaultUnavailable
from enclavekit.services.vault.objects import ObjectStore, check_key
from enclavekit.services.vault.remote_objects import (
    OBJECTS_DELETE,
    OBJECTS_GET,
    OBJECTS_LIST,
    OBJECTS_PUT,
    ObjectData,
    ObjectDone,
    ObjectKey,
    ObjectKeys,
    ObjectPrefix,
    ObjectPut,
    check_prefix,
    decode_object,
)

__all__ = ["ObjectService"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ObjectService:
    """Serves ``store`` to vault enclaves over plain RPC (``unsafe_plaintext``: only ciphertext crosses)."""

    def __init__(self, store: ObjectStore, *, limits: ServerLimits | None = None) -> None:
        self.store = store
        self.router = Router()
        self.router.add(OBJECTS_GET, self.get)
        self.router.add(OBJECTS_PUT, self.put)
        self.router.add(OBJECTS_DELETE, self.delete)
        self.router.add(OBJECTS_LIST, self.list)
        self.server = RpcServer(self.router, unsafe_plaintext=True, limits=limits or ServerLimits())

    async def start(self, address: str) -> str:
        return str(await self.server.start(address))

    async def close(self) -> None:
        await self.server.close()

    async def get(self, request: ObjectKey, call: CallContext) -> ObjectData:
        with _logged("get", request.key):
            data = await self.store.get(_checked(check_key, request.key))
            return ObjectData(data=None if data is None else base64.b64encode(data).decode())

    async def put(self, request: ObjectPut, call: CallContext) -> ObjectDone:
        with _logged("put", request.key):
            await self.store.put(_checked(check_key, request.key), _checked(decode_object, request.data))
            return ObjectDone()

    async def delete(self, request: ObjectKey, call: CallContext) -> ObjectDone:
        with _logged("delete", request.key):
            await self.store.delete(_checked(check_key, request.key))
            return ObjectDone()

    async def list(self, request: ObjectPrefix, call: CallContext) -> ObjectKeys:
        with _logged("list", request.prefix):
            return ObjectKeys(keys=await self.store.list(_checked(check_prefix, request.prefix)))


def _checked(check: Callable[[str], T], value: str) -> T:
    """``check(value)``, its ``ValueError`` answered as ``rpc_invalid_request``."""
    try:
        return check(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


@contextlib.contextmanager
def _logged(what: str, key: str) -> Iterator[None]:
    """One log line per call (what, which key, the outcome, milliseconds); a store failure that is not an
    enclavekit error (an OSError, a botocore error) is answered ``vault_unavailable``, never a traceback."""
    started, outcome = time.perf_counter(), "ok"
    try:
        yield
    except Error as exc:
        outcome = exc.code
        raise
    except Exception as exc:
        outcome = type(exc).__name__
        raise VaultUnavailable(f"the object store failed ({type(exc).__name__})") from exc
    finally:
        elapsed = (time.perf_counter() - started) * 1000
        # The folder, not the object's name: a ballot's name is its voting key, which the log must not pair with
        # the moment (and so the user) of a request.
        folder = key if key.endswith("/") else key.rsplit("/", 1)[0] + "/"
        logger.info("vault objects %s %s outcome=%s ms=%.1f", what, folder, outcome, elapsed)
