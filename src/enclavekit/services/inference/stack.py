"""The inference service under ``enclavekit up``: the model packaged once into the state folder, the enclave
(``inference`` in ``stack.json``, behind its relay) and the host's gateway in front of the relay.

First ``up`` (or whenever the enclave's PCR0 changed, since the KMS key policy pins it): a publisher key
(``STATE/inference/publisher.pem``, 0600), a KMS key whose policy lets only an enclave with this PCR0 decrypt,
the encrypted package (``STATE/inference/package/``) and the enclave's configuration
(``STATE/inference/config.json``). ``STATE/inference/local.json`` records what the local commands need: the
gateway, the enclave's PCR0, the model hash.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from enclavekit.stack.processes import free_port
from enclavekit.stack.up import EnclaveSpec, ServiceSpec, Stack, python_command

__all__ = ["ENCLAVE_APP", "Prepared", "expected_pcr0", "load_local", "prepare_model", "start_inference"]

ENCLAVE_APP = "enclavekit.services.inference.enclave_app:app"


def expected_pcr0(state: Path, spec: str = ENCLAVE_APP) -> bytes:
    """The PCR0 the simulated enclave running ``spec`` will have (what the KMS key policy pins)."""
    from enclavekit.enclave.runtime import image_files
    from enclavekit.nsm import NsmSimulator

    importlib.import_module(spec.partition(":")[0])
    return NsmSimulator(state, app=image_files(spec)).pcr(0)


@dataclass(frozen=True, slots=True)
class Prepared:
    config: Path
    package: Path
    key_id: str
    pcr0: str
    model_hash: str


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as sink:
        sink.write(data)


def prepare_model(
    state: Path,
    kms_url: str,
    *,
    pcr0: bytes | None = None,
    model_dir: Path | None = None,
    workers: int = 1,
    max_batch: int = 256,
) -> Prepared:
    """Package the model for this stack's inference enclave unless a package for the same PCR0 exists."""
    import boto3

    from enclavekit.services.inference.config import InferenceConfig, Limits
    from enclavekit.services.inference.model_files import (
        DEFAULT_MODEL_ID,
        DEFAULT_VERSION,
        ModelFiles,
        bundled_model_dir,
    )
    from enclavekit.services.inference.package import (
        enclave_key_policy,
        load_publisher_key,
        package_model,
        write_publisher_key,
    )

    folder = state / "inference"
    folder.mkdir(parents=True, exist_ok=True)
    pcr0_hex = (pcr0 if pcr0 is not None else expected_pcr0(state)).hex()
    record = folder / "prepared.json"
    if record.exists():
        previous = json.loads(record.read_text())
        if previous.get("pcr0") == pcr0_hex and (Path(previous["package"]) / "manifest.json").exists():
            config = InferenceConfig.load(Path(previous["config"]))
            if config.workers == workers and config.limits.max_batch == max_batch:
                return Prepared(**previous)
    publisher_path = folder / "publisher.pem"
    publisher = load_publisher_key(publisher_path) if publisher_path.exists() else write_publisher_key(publisher_path)
    kms = boto3.client(
        "kms",
        endpoint_url=kms_url,
        region_name="us-east-1",
        aws_access_key_id="enclavekit",
        aws_secret_access_key="enclavekit",  # noqa: S106 - the local emulator ignores credentials
    )
    key_id = str(kms.create_key(Policy=enclave_key_policy(pcr0_hex))["KeyMetadata"]["KeyId"])
    files = ModelFiles.in_folder(model_dir or bundled_model_dir())
    result = package_model(
        files,
        folder / "package",
        model_id=DEFAULT_MODEL_ID,
        version=DEFAULT_VERSION,
        kms=kms,
        key_id=key_id,
        publisher=publisher,
        now=datetime.now(UTC),
    )
    config = InferenceConfig(
        model_id=DEFAULT_MODEL_ID,
        version=DEFAULT_VERSION,
        publisher_key=publisher.public_key().public_bytes_raw(),
        kms_key_id=key_id,
        workers=workers,
        limits=Limits(max_batch=max_batch),
    )
    config_path = folder / "config.json"
    config_path.write_bytes(json.dumps(config.to_json(), indent=1).encode())
    prepared = Prepared(
        config=config_path,
        package=result.folder,
        key_id=key_id,
        pcr0=pcr0_hex,
        model_hash=result.manifest.model_hash.hex(),
    )
    record.write_text(json.dumps({k: str(getattr(prepared, k)) for k in Prepared.__slots__}, indent=1))
    return prepared


def load_local(state: Path) -> dict[str, Any]:
    """``STATE/inference/local.json`` of a running stack (raises FileNotFoundError when there is none)."""
    data = json.loads((state / "inference" / "local.json").read_text())
    assert isinstance(data, dict)
    return data


def enclave_spec(prepared: Prepared, kms_url: str, name: str = "inference") -> EnclaveSpec:
    return EnclaveSpec(
        name,
        ENCLAVE_APP,
        extra_args=(
            "--set",
            f"config={prepared.config}",
            "--set",
            f"package={prepared.package}",
            "--set",
            f"kms_url={kms_url}",
        ),
    )


async def start_inference(stack: Stack) -> None:
    state = stack.state.root
    host = stack.host
    pcr0 = expected_pcr0(state)  # first: it also creates the simulator's root, which the KMS emulator trusts
    kms_url = stack.services.get("kms", {}).get("url")
    if kms_url is None:
        kms_url = await stack.start_service(
            ServiceSpec(
                "kms",
                lambda s, port: python_command(
                    "kms",
                    "serve",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--state",
                    str(state),
                    "--trust-sim-root",
                    str(state),
                ),
            )
        )
    prepared = prepare_model(state, kms_url, pcr0=pcr0)
    enclave = await stack.start_enclave(enclave_spec(prepared, kms_url))
    relay = await stack.start_relay("inference", enclave["address"])
    metrics_port = free_port(host)
    gateway = await stack.start_service(
        ServiceSpec(
            "inference_gateway",
            lambda s, port: python_command(
                "inference",
                "gateway",
                *("--upstream", relay, "--host", host, "--port", str(port), "--metrics-port", str(metrics_port)),
            ),
            url=lambda h, p: f"tcp://{h}:{p}",
        )
    )
    local = {
        "gateway": gateway,
        "relay": relay,
        "enclave_pcr0": enclave["pcr0"],
        "model_hash": prepared.model_hash,
        "gateway_metrics": f"http://{host}:{metrics_port}/metrics",
        "simulator_root": str(state),
    }
    _write_private(state / "inference" / "local.json", json.dumps(local, indent=2).encode())
