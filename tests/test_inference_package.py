"""The encrypted model package: EKMC chunks, the signed manifest, and the enclave-side loader that refuses
anything that does not verify — with the real model, a real KMS emulator and the simulated NSM."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from enclavekit.errors import ConfigurationError
from enclavekit.kms import KmsClient, KmsService, RunningEmulator
from enclavekit.kms.recipient import VerifiedRecipient
from enclavekit.nsm import NsmSimulator
from enclavekit.services.inference.chunks import HEADER_SIZE, TAG_SIZE, ChunkHeader, open_stream, seal_stream
from enclavekit.services.inference.config import InferenceConfig, Limits
from enclavekit.services.inference.errors import ChunkInvalid, ManifestInvalid, ModelRefused
from enclavekit.services.inference.loader import MANIFEST_FILE, TOKENIZER_FILE, WEIGHTS_FILE, KeyRelease, load_package
from enclavekit.services.inference.manifest import Manifest
from enclavekit.services.inference.model_files import ModelFiles, bundled_model_dir
from enclavekit.services.inference.package import enclave_key_policy, package_model
from tests.test_kms_fixtures import boto3_kms, emulator_for, kms_endpoint

KEY = bytes(range(32))


class _PlaintextKms(KmsService):
    """The emulator, which with ``leak`` set also answers a Recipient request with plaintext (a fake KMS)."""

    leak = False

    def _release(self, secret: bytes, recipient: VerifiedRecipient | None) -> dict[str, str]:
        answer = super()._release(secret, recipient)
        if self.leak:
            answer["Plaintext"] = base64.b64encode(secret).decode()
        return answer


PREFIX = bytes.fromhex("a0a1a2a3a4a5a6")
VECTOR_PLAINTEXT = bytes(4096) + b"end"


def _seal(plaintext: bytes, chunk_size: int = 4096, key: bytes = KEY) -> bytes:
    return b"".join(seal_stream(key, io.BytesIO(plaintext), len(plaintext), chunk_size=chunk_size, nonce_prefix=PREFIX))


# --- EKMC chunks -----------------------------------------------------------------------------------------------


def test_chunk_format_matches_the_documented_vector() -> None:
    """docs/inference.md's vector: an independent ChaCha20-Poly1305 call with the documented nonce gives chunk 1."""
    sealed = _seal(VECTOR_PLAINTEXT)
    header = bytes.fromhex("454b4d43010100001000a0a1a2a3a4a5a60000000000001003")
    assert sealed[:HEADER_SIZE] == header
    last = ChaCha20Poly1305(KEY).encrypt(PREFIX + b"\x00\x00\x00\x01" + b"\x01", b"end", header)
    assert last.hex() == "66ce689121f9a1fcbe01d17190d52cafdf9ec1"
    assert sealed.endswith(last)
    assert hashlib.sha256(sealed).hexdigest() == "e8608552fd7540d05986ad23ec5d39b469fd10d31a26b00478c168437e93cf72"
    opened = open_stream(KEY, io.BytesIO(sealed))
    assert bytes(opened.plaintext) == VECTOR_PLAINTEXT
    assert opened.sha256 == hashlib.sha256(VECTOR_PLAINTEXT).digest()


def _chunks(sealed: bytes, chunk_size: int = 4096) -> tuple[bytes, list[bytes]]:
    header = ChunkHeader.from_bytes(sealed[:HEADER_SIZE])
    body = sealed[HEADER_SIZE:]
    step = chunk_size + TAG_SIZE
    return sealed[:HEADER_SIZE], [body[i : i + step] for i in range(0, len(body), step)][: header.chunks]


def test_reordered_chunks_are_refused() -> None:
    header, chunks = _chunks(_seal(bytes(range(256)) * 64 + b"x" * 4096))  # 3 chunks of 4096 + tail
    chunks[0], chunks[1] = chunks[1], chunks[0]
    with pytest.raises(ChunkInvalid, match="chunk 0"):
        open_stream(KEY, io.BytesIO(header + b"".join(chunks)))


def test_dropping_the_final_chunk_is_refused_even_with_a_fixed_up_length() -> None:
    plaintext = bytes(4096 * 2)
    header, chunks = _chunks(_seal(plaintext))
    shorter = ChunkHeader.from_bytes(header)
    forged = replace(shorter, plaintext_length=4096).to_bytes()  # claim one chunk: the AAD changes, tags fail
    with pytest.raises(ChunkInvalid):
        open_stream(KEY, io.BytesIO(forged + chunks[0]))
    with pytest.raises(ChunkInvalid, match="ends inside chunk 1"):
        open_stream(KEY, io.BytesIO(header + chunks[0]))


def test_tampered_chunk_and_trailing_bytes_are_refused() -> None:
    sealed = bytearray(_seal(VECTOR_PLAINTEXT))
    sealed[HEADER_SIZE + 10] ^= 1
    with pytest.raises(ChunkInvalid, match="chunk 0"):
        open_stream(KEY, io.BytesIO(bytes(sealed)))
    with pytest.raises(ChunkInvalid, match="follow"):
        open_stream(KEY, io.BytesIO(_seal(VECTOR_PLAINTEXT) + b"\x00"))


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"EKMC\x02\x01" + bytes(19),
        b"EKMC\x01\x07" + bytes(19),
        ChunkHeader(4096, PREFIX, 0).to_bytes()[:6] + (16).to_bytes(4, "big") + bytes(15),  # chunk size 16
        ChunkHeader(4096, PREFIX, 0).to_bytes()[:17] + (1 << 60).to_bytes(8, "big"),  # 1 EiB: no allocation
    ],
)
def test_garbage_headers_are_refused_before_any_allocation(header: bytes) -> None:
    with pytest.raises(ChunkInvalid):
        open_stream(KEY, io.BytesIO(header))


def test_a_model_larger_than_the_manifest_says_is_refused_before_allocation() -> None:
    with pytest.raises(ChunkInvalid, match="over"):
        open_stream(KEY, io.BytesIO(_seal(VECTOR_PLAINTEXT)), max_plaintext=100)


# --- manifest and config -------------------------------------------------------------------------------------


def _manifest() -> Manifest:
    return Manifest(
        model_id="m",
        version="1",
        weights_sha256=bytes(32),
        weights_size=4099,
        tokenizer_sha256=bytes(32),
        config_sha256=bytes(32),
        chunk_size=4096,
        key_id="k",
        encrypted_data_key=b"blob",
        created_at=1,
    )


def test_manifest_signed_by_another_key_is_refused() -> None:
    publisher, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    data = _manifest().sign(other)
    with pytest.raises(ManifestInvalid, match="not signed by the pinned publisher key"):
        Manifest.verify(data, publisher.public_key().public_bytes_raw())
    assert Manifest.verify(data, other.public_key().public_bytes_raw()) == _manifest()


def test_manifest_with_an_edited_field_is_refused() -> None:
    publisher = Ed25519PrivateKey.generate()
    outer = json.loads(_manifest().sign(publisher))
    outer["manifest"]["weights_size"] = 1
    with pytest.raises(ManifestInvalid):
        Manifest.verify(json.dumps(outer).encode(), publisher.public_key().public_bytes_raw())


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"manifest": 1, "signature": "00"}', b"x" * 70000])
def test_garbage_manifest_is_refused(data: bytes) -> None:
    with pytest.raises(ManifestInvalid):
        Manifest.verify(data, bytes(32))


def test_config_round_trips_and_refuses_garbage() -> None:
    config = InferenceConfig(
        model_id="m", version="1", publisher_key=bytes(32), kms_key_id="k", limits=Limits(max_batch=8)
    )
    assert InferenceConfig.from_bytes(config.to_bytes()) == config
    for bad in (b"", b"[]", b'{"model_id": "m"}', config.to_bytes().replace(b'"max_batch":8', b'"max_batch":0')):
        with pytest.raises(ConfigurationError):
            InferenceConfig.from_bytes(bad)


# --- the loader, with the real model, KMS emulator and simulated NSM ----------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("inference-package")
    enclave = NsmSimulator(root / "sim", app={"main.py": b"the inference enclave"})
    publisher = Ed25519PrivateKey.generate()
    services: list[_PlaintextKms] = []

    def toggled(service: KmsService) -> KmsService:
        services.append(
            _PlaintextKms(service.keystore, verifier=service.verifier, region=service.region, account=service.account)
        )
        return services[0]

    with emulator_for(root / "kms", trust=[root / "sim"], service_factory=toggled) as running:
        kms = boto3_kms(running.url)
        key_id = kms.create_key(Policy=enclave_key_policy(enclave.pcr(0).hex()))["KeyMetadata"]["KeyId"]
        result = package_model(
            ModelFiles.in_folder(bundled_model_dir()),
            root / "package",
            model_id="minilm",
            version="v1",
            kms=kms,
            key_id=key_id,
            publisher=publisher,
            now=datetime.now(UTC),
        )
        config = InferenceConfig(
            model_id="minilm", version="v1", publisher_key=publisher.public_key().public_bytes_raw(), kms_key_id=key_id
        )
        yield {
            "root": root,
            "running": running,
            "enclave": enclave,
            "publisher": publisher,
            "package": result.folder,
            "manifest": result.manifest,
            "config": config,
            "kms": services[0],
        }


def _release(running: RunningEmulator, enclave: NsmSimulator) -> KeyRelease:
    client = KmsClient(kms_endpoint(running.url), enclave.client().attestation)
    return lambda blob, context, key_id: client.decrypt(blob, encryption_context=context, key_id=key_id)


def _copy(world: dict[str, Any], name: str) -> Path:
    target = world["root"] / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(world["package"], target)
    return target


def test_verified_package_loads_and_embeds(world: dict[str, Any]) -> None:
    loaded = load_package(world["package"], world["config"], _release(world["running"], world["enclave"]))
    assert loaded.manifest.model_hash == world["manifest"].model_hash
    vector = loaded.embedder.embed(["This is an example sentence"]).vectors[0]
    assert abs(float(vector[0]) - 0.0676569) < 1e-5


def test_host_cannot_decrypt_the_data_key_without_the_enclave(world: dict[str, Any]) -> None:
    from botocore.exceptions import ClientError

    kms = boto3_kms(world["running"].url)
    with pytest.raises(ClientError):
        kms.decrypt(
            CiphertextBlob=world["manifest"].encrypted_data_key,
            EncryptionContext={"model_id": "minilm", "version": "v1"},
        )


def test_enclave_with_other_code_gets_no_key(world: dict[str, Any]) -> None:
    other = NsmSimulator(world["root"] / "sim", app={"main.py": b"a different enclave"})
    with pytest.raises(ModelRefused, match="key release"):
        load_package(world["package"], world["config"], _release(world["running"], other))


@pytest.mark.parametrize("how", ["tamper", "truncate", "reorder", "drop_last"])
def test_bad_chunks_make_the_enclave_refuse_the_model(world: dict[str, Any], how: str) -> None:
    folder = _copy(world, f"bad-{how}")
    path = folder / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    step = world["manifest"].chunk_size + TAG_SIZE
    if how == "tamper":
        data[HEADER_SIZE + 5 * step + 100] ^= 0x40
    elif how == "truncate":
        del data[-1000:]
    elif how == "reorder":
        a, b = HEADER_SIZE + step, HEADER_SIZE + 2 * step
        data[a:b], data[b : b + step] = data[b : b + step], data[a:b]
    else:
        last = HEADER_SIZE + (len(data) - HEADER_SIZE) // step * step
        del data[last:]
    path.write_bytes(bytes(data))
    with pytest.raises(ModelRefused, match="weights"):
        load_package(folder, world["config"], _release(world["running"], world["enclave"]))


def test_manifest_signed_by_another_publisher_makes_the_enclave_refuse(world: dict[str, Any]) -> None:
    folder = _copy(world, "other-publisher")
    (folder / MANIFEST_FILE).write_bytes(world["manifest"].sign(Ed25519PrivateKey.generate()))
    with pytest.raises(ModelRefused, match="publisher"):
        load_package(folder, world["config"], _release(world["running"], world["enclave"]))


def test_swapped_tokenizer_is_refused(world: dict[str, Any]) -> None:
    folder = _copy(world, "swapped-tokenizer")
    (folder / TOKENIZER_FILE).write_bytes((folder / TOKENIZER_FILE).read_bytes().replace(b'"[UNK]"', b'"[UNX]"', 1))
    with pytest.raises(ModelRefused, match="tokenizer hash"):
        load_package(folder, world["config"], _release(world["running"], world["enclave"]))


def test_package_of_another_model_is_refused(world: dict[str, Any]) -> None:
    config = replace(world["config"], model_id="another-model")
    with pytest.raises(ModelRefused, match="this enclave serves"):
        load_package(world["package"], config, _release(world["running"], world["enclave"]))


def test_kms_answering_in_plaintext_makes_the_enclave_refuse(world: dict[str, Any]) -> None:
    world["kms"].leak = True
    try:
        with pytest.raises(ModelRefused, match="plaintext"):
            load_package(world["package"], world["config"], _release(world["running"], world["enclave"]))
    finally:
        world["kms"].leak = False
