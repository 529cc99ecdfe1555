"""Load an encrypted model package inside the enclave: verify, release the key, stream-decrypt, check, load.

Order, each step failing closed with :class:`ModelRefused` (its message names the step): the manifest's
signature by the pinned publisher key; that it names the configured model, version and KMS key; the data key,
released by KMS only to this attested enclave (a plaintext answer is refused by the KMS client); every chunk of
the weights authenticated at its place into one buffer while hashing; the weights', tokenizer's and config's
SHA-256 against the manifest; then the strict safetensors parse (views over that buffer: the plaintext model is
held once). The package folder is host-fed: nothing in it is trusted before these checks.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from enclavekit.errors import Error
from enclavekit.services.inference.chunks import open_stream
from enclavekit.services.inference.config import InferenceConfig
from enclavekit.services.inference.engine import BertConfig, Embedder, Engine, NumpyEngine, Tokenizer
from enclavekit.services.inference.errors import ModelRefused
from enclavekit.services.inference.manifest import MAX_MANIFEST_SIZE, Manifest, encryption_context
from enclavekit.services.inference.tensors import load_tensors

__all__ = [
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "KeyRelease",
    "LoadedModel",
    "build_engine",
    "load_package",
]

logger = logging.getLogger(__name__)

MANIFEST_FILE: Final = "manifest.json"
WEIGHTS_FILE: Final = "weights.ekmc"
TOKENIZER_FILE: Final = "tokenizer.json"
CONFIG_FILE: Final = "config.json"
_MAX_SIDE_FILE: Final = 16 * 1024 * 1024

KeyRelease = Callable[[bytes, Mapping[str, str], str], bytes]
"""``(encrypted data key, encryption context, key id) -> data key``: KMS Decrypt with an attested Recipient."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A verified model, ready to embed, and how long each step took (seconds)."""

    manifest: Manifest
    embedder: Embedder
    timings: Mapping[str, float]


def _read(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ModelRefused(f"{path.name} is {size} bytes, over {limit}")
        return path.read_bytes()
    except OSError as exc:
        raise ModelRefused(f"cannot read {path.name}: {exc.strerror}") from exc


def _same(actual: bytes, expected: bytes, what: str) -> None:
    if not hmac.compare_digest(actual, expected):
        raise ModelRefused(f"the {what} hash {actual.hex()} is not the manifest's {expected.hex()}")


def build_engine(name: str, tensors: Mapping[str, Any], config_json: bytes) -> Engine:
    """The engine ``name`` (see :data:`~enclavekit.services.inference.config.ENGINES`) over ``tensors``."""
    bert = BertConfig.from_json(config_json)
    if name == "numpy":
        return NumpyEngine(tensors, bert)
    from enclavekit.services.inference.torch_engine import TorchEngine

    device, _, precision = name.removeprefix("torch-").partition("-")
    return TorchEngine(tensors, bert, device=device, dtype="float16" if precision == "fp16" else "float32")


def load_package(folder: Path, config: InferenceConfig, release: KeyRelease) -> LoadedModel:
    """The verified model of the package in ``folder``, or :class:`ModelRefused` (nothing is served then)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        manifest = Manifest.verify(_read(folder / MANIFEST_FILE, MAX_MANIFEST_SIZE), config.publisher_key)
    except Error as exc:
        raise ModelRefused(f"manifest: {exc.message}") from exc
    if (manifest.model_id, manifest.version) != (config.model_id, config.version):
        raise ModelRefused(
            f"the package holds {manifest.model_id} {manifest.version}, this enclave serves "
            f"{config.model_id} {config.version}"
        )
    if manifest.key_id != config.kms_key_id:
        raise ModelRefused(f"the package's key {manifest.key_id} is not the configured {config.kms_key_id}")
    tokenizer_json = _read(folder / TOKENIZER_FILE, _MAX_SIDE_FILE)
    config_json = _read(folder / CONFIG_FILE, _MAX_SIDE_FILE)
    _same(hashlib.sha256(tokenizer_json).digest(), manifest.tokenizer_sha256, "tokenizer")
    _same(hashlib.sha256(config_json).digest(), manifest.config_sha256, "config")
    timings["manifest"] = time.perf_counter() - started

    mark = time.perf_counter()
    try:
        key = release(
            manifest.encrypted_data_key, encryption_context(manifest.model_id, manifest.version), manifest.key_id
        )
    except Error as exc:
        raise ModelRefused(f"key release: {exc}") from exc
    if len(key) != 32:
        raise ModelRefused(f"the released data key is {len(key)} bytes, not 32")
    timings["key_release"] = time.perf_counter() - mark

    mark = time.perf_counter()
    try:
        with (folder / WEIGHTS_FILE).open("rb") as source:
            opened = open_stream(key, source, max_plaintext=manifest.weights_size)
    except OSError as exc:
        raise ModelRefused(f"cannot read {WEIGHTS_FILE}: {exc.strerror}") from exc
    except Error as exc:
        raise ModelRefused(f"weights: {exc.message}") from exc
    finally:
        del key
    if len(opened.plaintext) != manifest.weights_size:
        raise ModelRefused(f"the weights are {len(opened.plaintext)} bytes, the manifest says {manifest.weights_size}")
    _same(opened.sha256, manifest.weights_sha256, "weights")
    timings["decrypt"] = time.perf_counter() - mark

    mark = time.perf_counter()
    try:
        embedder = Embedder(
            Tokenizer(tokenizer_json), build_engine(config.engine, load_tensors(opened.plaintext), config_json)
        )
    except Error as exc:
        raise ModelRefused(f"load: {exc.message}") from exc
    timings["load"] = time.perf_counter() - mark
    logger.info(
        "model %s %s verified and loaded (manifest %s)",
        manifest.model_id,
        manifest.version,
        manifest.model_hash.hex()[:16],
    )
    return LoadedModel(manifest, embedder, timings)
