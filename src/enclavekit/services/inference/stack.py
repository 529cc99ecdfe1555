"""The inference service under ``enclavekit up``: the model packaged once into the state folder, the enclave
(``inference`` in ``stack.json``, with its relay for attestation and raw sessions) and the host's gateway, which
forwards its clients' sessions straight to the enclave's socket (ADR 0026: one host process on the request path,
not two).

First ``up`` (or whenever the configuration or the enclave's code changed): a publisher key
(``STATE/inference/publisher.pem``, 0600), a KMS key, the enclave's measured configuration
(``STATE/inference/config.json``: publisher key, KMS key id, KMS endpoint and its pinned CA, limits), the PCR0 that
code and configuration give (:func:`enclavekit.enclave.runtime.expected_pcr0`), the key's policy bound to that
PCR0 (PutKeyPolicy), and the encrypted package (``STATE/inference/package/``). The enclave then boots with
``--config`` — nothing that decides trust is a launch setting. ``STATE/inference/local.json`` records what the
local commands need: the gateway, the enclave's PCR0, the model hash, and ``upstream``, the enclave address the
gateway forwards to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclavekit.errors import ConfigurationError
from enclavekit.stack.files import write_private
from enclavekit.stack.parts import StackPart
from enclavekit.stack.processes import free_port
from enclavekit.stack.up import EnclaveSpec, ServiceSpec, Stack, python_command

if TYPE_CHECKING:
    from enclavekit.kms.measured import MeasuredKmsEndpoint

__all__ = ["ENCLAVE_APP", "STACK_PART", "Prepared", "expected_pcr0", "load_local", "prepare_model", "start_inference"]

ENCLAVE_APP = "enclavekit.services.inference.enclave_app:app"


def expected_pcr0(config: bytes, spec: str = ENCLAVE_APP) -> bytes:
    """The PCR0 the simulated enclave running ``spec`` with the measured ``config`` will have (what the KMS key
    policy pins)."""
    from enclavekit.enclave import runtime

    return runtime.expected_pcr0(spec, config)


@dataclass(frozen=True, slots=True)
class Prepared:
    config: Path
    package: Path
    key_id: str
    pcr0: str
    model_hash: str


def prepare_model(
    state: Path,
    kms_url: str,
    *,
    kms_ca_file: Path | None = None,
    kms_endpoint: MeasuredKmsEndpoint | None = None,
    model_dir: Path | None = None,
    workers: int = 1,
    max_batch: int = 256,
    spec: str = ENCLAVE_APP,
) -> Prepared:
    """Package the model for this stack's inference enclave unless a package for the same configuration and PCR0
    exists. ``kms_url``/``kms_ca_file``: where the host (the publisher) reaches KMS, verifying its CA;
    ``kms_endpoint``: the KMS the enclave's measured configuration names (default: the same URL, that CA pinned)."""
    import boto3

    from enclavekit.kms.measured import MeasuredKmsEndpoint
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

    if kms_endpoint is None:
        ca_pem = None if kms_ca_file is None else kms_ca_file.read_text()
        kms_endpoint = MeasuredKmsEndpoint(kms_url.rstrip("/"), "us-east-1", ca_pem)
    folder = state / "inference"
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "prepared.json"
    if record.exists():
        previous = json.loads(record.read_text())
        if (Path(previous["package"]) / "manifest.json").exists() and Path(previous["config"]).exists():
            raw = Path(previous["config"]).read_bytes()
            config = InferenceConfig.from_bytes(raw)
            same = config.workers == workers and config.limits.max_batch == max_batch
            if (
                same
                and config.kms_endpoint() == kms_endpoint
                and previous.get("pcr0") == expected_pcr0(raw, spec).hex()
            ):
                return Prepared(**previous)
    publisher_path = folder / "publisher.pem"
    publisher = load_publisher_key(publisher_path) if publisher_path.exists() else write_publisher_key(publisher_path)
    kms = boto3.client(
        "kms",
        endpoint_url=kms_url,
        region_name="us-east-1",
        verify=str(kms_ca_file) if kms_ca_file is not None else None,
        aws_access_key_id="enclavekit",
        aws_secret_access_key="enclavekit",  # noqa: S106 - the local emulator ignores credentials
    )
    # The key first (the configuration names it), bound to no enclave until PCR0 is known.
    key_id = str(kms.create_key(Policy=enclave_key_policy("00" * 48))["KeyMetadata"]["KeyId"])
    endpoint_document = kms_endpoint.to_document()
    config = InferenceConfig(
        model_id=DEFAULT_MODEL_ID,
        version=DEFAULT_VERSION,
        publisher_key=publisher.public_key().public_bytes_raw(),
        kms_key_id=key_id,
        kms_region=kms_endpoint.region,
        kms_url=endpoint_document["url"],
        kms_ca_pem=endpoint_document.get("ca_pem"),
        unsafe_kms_plain_http=kms_endpoint.unsafe_plain_http,
        workers=workers,
        limits=Limits(max_batch=max_batch),
    )
    config_path = folder / "config.json"
    raw_config = json.dumps(config.to_json(), indent=1).encode()
    write_private(config_path, raw_config)
    pcr0 = expected_pcr0(raw_config, spec)
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=enclave_key_policy(pcr0.hex()))
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
    prepared = Prepared(
        config=config_path,
        package=result.folder,
        key_id=key_id,
        pcr0=pcr0.hex(),
        model_hash=result.manifest.model_hash.hex(),
    )
    record.write_text(json.dumps({k: str(getattr(prepared, k)) for k in Prepared.__slots__}, indent=1))
    return prepared


def load_local(state: Path) -> dict[str, Any]:
    """``STATE/inference/local.json`` of a running stack (raises FileNotFoundError when there is none)."""
    data = json.loads((state / "inference" / "local.json").read_text())
    assert isinstance(data, dict)
    return data


def enclave_spec(prepared: Prepared, name: str = "inference") -> EnclaveSpec:
    """The enclave booted with its measured configuration; the package folder is the only launch setting (the
    package is signed and its key released only to the measured PCR0, so the host choosing it decides nothing)."""
    return EnclaveSpec(
        name, ENCLAVE_APP, extra_args=("--config", str(prepared.config), "--set", f"package={prepared.package}")
    )


async def start_inference(stack: Stack) -> None:
    from enclavekit.stack.kms import ensure_local_kms

    state = stack.state.root
    host = stack.host
    local_kms = await ensure_local_kms(stack)
    prepared = prepare_model(state, local_kms.url, kms_ca_file=local_kms.ca_file, kms_endpoint=local_kms.measured())
    enclave = await stack.start_enclave(enclave_spec(prepared))
    if enclave["pcr0"] != prepared.pcr0:
        raise ConfigurationError(
            f"the inference enclave booted with PCR0 {enclave['pcr0']}, not the {prepared.pcr0} its KMS key is bound to"
        )
    relay = await stack.start_relay("inference", enclave["address"])
    upstream = str(enclave["address"])  # the gateway is the request path's only host hop (ADR 0026)
    metrics_port = free_port(host)
    gateway = await stack.start_service(
        ServiceSpec(
            "inference_gateway",
            lambda s, port: python_command(
                "inference",
                "gateway",
                *("--upstream", upstream, "--host", host, "--port", str(port), "--metrics-port", str(metrics_port)),
            ),
            url=lambda h, p: f"tcp://{h}:{p}",
        )
    )
    local = {
        "gateway": gateway,
        "relay": relay,
        "upstream": upstream,
        "enclave_pcr0": enclave["pcr0"],
        "model_hash": prepared.model_hash,
        "gateway_metrics": f"http://{host}:{metrics_port}/metrics",
        "simulator_root": str(state),
    }
    write_private(state / "inference" / "local.json", json.dumps(local, indent=2).encode())


STACK_PART = StackPart("inference", order=30, start=start_inference)
"""For ``enclavekit up``: after the KMS emulator (the model's key is bound to the enclave's PCR0)."""
