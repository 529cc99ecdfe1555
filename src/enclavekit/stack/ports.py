"""Ports of the local stack that are part of a measured configuration: chosen once, then kept.

A port that an enclave's measured configuration names (the capture provider's, the KMS emulator's) must not
change across restarts of the whole stack, or PCR0 changes with it. :func:`stable_port` picks a free port the
first time and records it in a small JSON file in the state folder; later calls return the recorded one.
"""

from __future__ import annotations

import json
from pathlib import Path

from enclavekit.hostkit.sockets import free_port

__all__ = ["stable_port"]


def stable_port(record: Path, name: str, host: str) -> int:
    """A port for ``name`` chosen once and kept in ``record`` (it is part of the measured configuration).

    Guarantees: the same ``record`` and ``name`` give the same port on every call; other names in ``record``
    are kept. The port is free on ``host`` when first chosen (nothing holds it for the caller afterwards)."""
    ports: dict[str, int] = json.loads(record.read_text()) if record.exists() else {}
    port = ports.get(name)
    if not isinstance(port, int):
        port = free_port(host)
        ports[name] = port
        record.write_text(json.dumps(ports, indent=2) + "\n")
    return port
