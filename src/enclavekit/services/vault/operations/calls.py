"""(work in progress)"""

from __future__ import annotations

from typing import Final

from enclavekit.services.vault.operations import Handler

__all__ = ["OPERATIONS", "PEER_OPERATIONS"]

OPERATIONS: Final[dict[str, Handler]] = {}
PEER_OPERATIONS: Final[dict[str, Handler]] = {}
