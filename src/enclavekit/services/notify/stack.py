"""The notify stack under ``enclavekit up``: World ID stand-in, capture provider, egress proxy, enclave (behind
its relay), API, ingest worker and dispatcher — each its own process, listed in ``stack.json``.

The enclave's provider is fixed by its measured configuration (``STATE/notify/enclave-config.json``, part of
PCR0), provisioned once (:mod:`enclavekit.services.notify.provision`): the capture provider serves HTTPS with a
certificate from a local CA made once in ``STATE/notify/provider/`` (the stand-in provider's own files: its TLS
key and its API key), on a port chosen once and kept in ``STATE/notify/ports.json``; the API key reaches the
enclave only as KMS ciphertext. So the configuration, PCR0 and the KMS-persisted push key survive a restart of
the whole stack on the same state folder.

``STATE/notify/local.json`` records what the local commands (``send-test``, ``ingest``, ``captured``) need
to find: the enclave's relay and PCR0, the capture provider, the egress proxy.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path
from typing import Any

from enclavekit.errors import ConfigurationError
from enclavekit.stack.files import write_private
from enclavekit.stack.parts import StackPart
from enclavekit.stack.up import EnclaveSpec, ServiceSpec, Stack, python_command

__all__ = ["ENCLAVE_APP", "STACK_PART", "load_local", "start_notify"]

ENCLAVE_APP = "enclavekit.services.notify.enclave_app:app"


def _sets(values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        out += ["--set", f"{key}={','.join(map(str, value)) if isinstance(value, list | tuple) else value}"]
    return out


def _measured_pcr0(config: bytes) -> bytes:
    from enclavekit.enclave.runtime import expected_pcr0

    importlib.import_module(ENCLAVE_APP.partition(":")[0])
    return expected_pcr0(ENCLAVE_APP, config)


def load_local(state: Path) -> dict[str, Any]:
    """``STATE/notify/local.json`` of a running stack (raises FileNotFoundError when there is none)."""
    data = json.loads((state / "notify" / "local.json").read_text())
    assert isinstance(data, dict)
    return data


async def start_notify(stack: Stack) -> None:
    state = stack.state.root
    notify_dir = state / "notify"
    notify_dir.mkdir(parents=True, exist_ok=True)
    host = stack.host
    nats_url = stack.services["nats"]["url"]
    record = notify_dir / "captured.jsonl"
    from enclavekit.services.notify.provision import (
        bind_key,
        ensure_api_key,
        provision_config,
    )
    from enclavekit.stack.ports import stable_port
    from enclavekit.stack.tls import ensure_provider_tls

    provider_dir = notify_dir / "provider"
    tls = ensure_provider_tls(provider_dir, host)
    api_key_file = ensure_api_key(provider_dir / "api-key")
    capture_port = stable_port(notify_dir / "ports.json", "capture", host)

    from enclavekit.stack.kms import boto3_kms, ensure_local_kms

    local_kms = await ensure_local_kms(stack)
    kms_url = local_kms.url
    world_id = await stack.start_service(
        ServiceSpec(
            "notify_world_id",
            lambda s, port: python_command(
                "notify", "world-id", "--state", str(state), "--host", host, "--port", str(port)
            ),
        )
    )
    capture = await stack.start_service(
        ServiceSpec(
            "notify_capture",
            lambda s, port: python_command(
                "notify",
                "capture-server",
                "--api-key-file",
                str(api_key_file),
                "--record",
                str(record),
                "--tls-cert",
                str(tls.cert_file),
                "--tls-key",
                str(tls.key_file),
                "--host",
                host,
                "--port",
                str(capture_port),
            ),
            url=lambda h, p: f"https://{h}:{capture_port}",
        )
    )
    egress = await stack.start_service(
        ServiceSpec(
            "notify_egress",
            lambda s, port: python_command(
                "host", "egress", "--listen", f"tcp://{host}:{port}", "--allow", f"{host}:{capture_port}"
            ),
            url=lambda h, p: f"tcp://{h}:{p}",
        )
    )
    kms = boto3_kms(kms_url, local_kms.ca_file)
    config_path = notify_dir / "enclave-config.json"
    config = await asyncio.to_thread(
        provision_config,
        config_path,
        kms=kms,
        provider_url=f"https://{host}:{capture_port}",
        ca_pem=tls.ca_pem,
        api_key=api_key_file.read_bytes().strip(),
        kms_endpoint=local_kms.measured(),
    )
    pcr0 = await asyncio.to_thread(_measured_pcr0, config.raw)
    await asyncio.to_thread(bind_key, kms, config.kms.key_id, [pcr0])
    enclave_args = ("--config", str(config_path), "--set", f"egress_proxy={egress}")  # KMS: in the config
    enclave = await stack.start_enclave(EnclaveSpec("notify", ENCLAVE_APP, extra_args=enclave_args))
    if enclave["pcr0"] != pcr0.hex():
        raise ConfigurationError(
            f"the notify enclave booted with PCR0 {enclave['pcr0']}, not the {pcr0.hex()} its KMS key is bound to"
        )
    relay = await stack.start_relay("notify", enclave["address"])
    common = {
        "state_dir": state,
        "nats_url": nats_url,
        "enclave": relay,
        "enclave_pcr0": [enclave["pcr0"]],
        "simulator_roots": [state],
        "kms_url": kms_url,
        "kms_ca_file": local_kms.ca_file,
        "world_id_url": world_id,
    }
    local = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in common.items()},
        "braze_url": capture,
        "egress_proxy": egress,
        "enclave_config": str(config_path),
        "capture_record": str(record),
    }
    path = notify_dir / "local.json"
    write_private(path, json.dumps(local, indent=2, default=str).encode())
    await stack.start_service(
        ServiceSpec(
            "notify_api",
            lambda s, port: python_command(
                "notify", "api", "--host", host, "--port", str(port), *_sets({**common, "s3_endpoint_url": None})
            ),
        )
    )
    await stack.start_service(
        ServiceSpec(
            "notify_ingest",
            lambda s, port: python_command(
                "notify", "ingest-worker", "--host", host, "--port", str(port), *_sets(common)
            ),
        )
    )
    await stack.start_service(
        ServiceSpec(
            "notify_dispatcher",
            lambda s, port: python_command("notify", "dispatcher", "--host", host, "--port", str(port), *_sets(common)),
        )
    )


STACK_PART = StackPart("notify", order=20, start=start_notify)
"""For ``enclavekit up``: after the KMS emulator (its API key reaches the enclave as KMS ciphertext)."""
