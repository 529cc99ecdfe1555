"""The notify stack under ``enclavekit up``: World ID stand-in, capture provider, egress proxy, enclave (behind
its relay), API, ingest worker and dispatcher — each its own process, listed in ``stack.json``.

``STATE/notify/local.json`` records what the local commands (``send-test``, ``ingest``, ``captured``) need
to find: the enclave's relay and PCR0, the capture provider and its key, the egress proxy.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from enclavekit.stack.up import EnclaveSpec, ServiceSpec, Stack, python_command

__all__ = ["ENCLAVE_APP", "load_local", "start_notify"]

ENCLAVE_APP = "enclavekit.services.notify.enclave_app:app"


def _sets(values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        out += ["--set", f"{key}={','.join(map(str, value)) if isinstance(value, list | tuple) else value}"]
    return out


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
    api_key = secrets.token_hex(16)
    record = notify_dir / "captured.jsonl"

    kms_url = stack.services.get("kms", {}).get("url")
    if kms_url is None:
        kms_url = await stack.start_service(
            ServiceSpec(
                "kms",
                lambda s, port: python_command(
                    "kms", "serve", "--host", host, "--port", str(port), "--state", str(state)
                ),
            )
        )
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
                "--api-key",
                api_key,
                "--record",
                str(record),
                "--host",
                host,
                "--port",
                str(port),
            ),
        )
    )
    capture_port = capture.rsplit(":", 1)[1]
    egress = await stack.start_service(
        ServiceSpec(
            "notify_egress",
            lambda s, port: python_command(
                "host", "egress", "--listen", f"tcp://{host}:{port}", "--allow", f"{host}:{capture_port}"
            ),
            url=lambda h, p: f"tcp://{h}:{p}",
        )
    )
    enclave = await stack.start_enclave(EnclaveSpec("notify", ENCLAVE_APP))
    relay = await stack.start_relay("notify", enclave["address"])
    common = {
        "state_dir": state,
        "nats_url": nats_url,
        "enclave": relay,
        "enclave_pcr0": [enclave["pcr0"]],
        "simulator_roots": [state],
        "kms_url": kms_url,
        "world_id_url": world_id,
    }
    local = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in common.items()},
        "braze_url": capture,
        "braze_api_key": api_key,
        "egress_proxy": egress,
        "capture_record": str(record),
    }
    path = notify_dir / "local.json"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as sink:
        json.dump(local, sink, indent=2, default=str)
    delivery = {"braze_url": capture, "braze_api_key_file": path, "egress_proxy": egress}
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
            lambda s, port: python_command(
                "notify", "dispatcher", "--host", host, "--port", str(port), *_sets({**common, **delivery})
            ),
        )
    )
