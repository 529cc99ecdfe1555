"""``enclavekit up`` finds each service's part (its ``STACK_PART``) by discovery, in the order the parts declare,
and takes another installed package's service from the ``enclavekit.stack`` entry-point group."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclavekit.errors import ConfigurationError
from enclavekit.stack.default import SERVICE_MODULES
from enclavekit.stack.parts import StackPart, discover


def test_the_services_start_in_the_order_their_parts_declare_whatever_the_list_order() -> None:
    parts = discover(reversed(SERVICE_MODULES), group="enclavekit.test.none")
    assert [part.name for part in parts] == ["vault", "notify", "inference", "trust"]
    assert [part.name for part in parts if part.prepare is not None] == ["vault"]  # before NATS: its authorization


def _installed(root: Path, module: str, source: str, entry: str) -> None:
    """A package installed the ordinary way: its module, and a dist-info folder naming its entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[enclavekit.test.stack]\n{module} = {module}:{entry}\n")


def test_another_package_adds_its_service_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = (
        "from enclavekit.stack.parts import StackPart\n"
        "async def start(stack):\n    pass\n"
        "STACK_PART = StackPart('extra', order=50, start=start)\n"
    )
    _installed(tmp_path, "enclavekit_extra_part", source, "STACK_PART")
    monkeypatch.syspath_prepend(str(tmp_path))
    parts = discover(SERVICE_MODULES, group="enclavekit.test.stack")
    assert [part.name for part in parts] == ["vault", "notify", "inference", "extra", "trust"]


def test_an_entry_point_that_is_not_a_stack_part_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(tmp_path, "enclavekit_bad_part", "STACK_PART = 'start me'\n", "STACK_PART")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match="not a StackPart"):
        discover((), group="enclavekit.test.stack")


def test_a_module_without_a_part_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"enclavekit\.stack\.kms"):
        discover(["enclavekit.stack.kms"], group="enclavekit.test.none")
    assert isinstance(discover(["enclavekit.services.trust.stack"], group="enclavekit.test.none")[0], StackPart)
