"""How ``enclavekit up`` finds the services it starts, without importing any of them by name.

Each service says how it starts in its own ``services/<name>/stack.py``, as a module attribute ``STACK_PART``
(a :class:`StackPart`): an optional ``prepare`` that runs before NATS starts (to add to its configuration), a
``start`` that runs once the stack's enclaves, relays and KMS emulator are up, and an ``order`` among the parts.
:func:`discover` loads the parts named by dotted module name (the project's own list is in
:mod:`enclavekit.stack.default`) and those other installed packages declare in the ``enclavekit.stack``
entry-point group, and sorts them by ``order``. See ADR 0020.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from enclavekit.errors import ConfigurationError

if TYPE_CHECKING:
    from enclavekit.stack.up import Stack

__all__ = ["ENTRY_POINT_GROUP", "StackPart", "discover"]

ENTRY_POINT_GROUP = "enclavekit.stack"
"""Entry points (``name = "package.module:STACK_PART"``) by which another installed package adds a service."""


@dataclass(frozen=True, slots=True)
class StackPart:
    """One service as ``enclavekit up`` runs it. Lower ``order`` starts first; ``prepare`` of every part runs
    before NATS starts, ``start`` of every part after the stack's own enclaves, relays and KMS emulator."""

    name: str
    order: int
    start: Callable[[Stack], Awaitable[None]]
    prepare: Callable[[Stack], None] | None = None


def _load(where: str, value: object) -> StackPart:
    if not isinstance(value, StackPart):
        raise ConfigurationError(f"{where}: STACK_PART is not a StackPart (got {type(value).__name__})")
    return value


def discover(modules: Iterable[str], *, group: str = ENTRY_POINT_GROUP) -> tuple[StackPart, ...]:
    """The parts of the modules named in ``modules`` (each module's ``STACK_PART``) and of the entry points in
    ``group``, in start order; a name given twice is one part. :class:`ConfigurationError` if one is not a part."""
    found: dict[str, StackPart] = {}
    for module in modules:
        part = _load(module, getattr(importlib.import_module(module), "STACK_PART", None))
        found.setdefault(part.name, part)
    for point in entry_points(group=group):
        part = _load(f"entry point {point.name} = {point.value}", point.load())
        found.setdefault(part.name, part)
    return tuple(sorted(found.values(), key=lambda part: (part.order, part.name)))
