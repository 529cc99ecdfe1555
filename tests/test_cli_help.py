"""The ``enclavekit`` help as a newcomer reads it: flags without a value placeholder, usage lines as click writes
them (Typer's own rendering shows ``--json <bool>`` and ``{files}...``, which read as a value to type)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from enclavekit.cli import app

CLI = [sys.executable, "-m", "enclavekit.cli"]
TYPE_PLACEHOLDER = re.compile(r"<(bool|str|int|float|path|list\[[^\]]*\])>", re.IGNORECASE)


def _command_paths(command: Any, path: list[str]) -> Iterator[list[str]]:
    """Every command's path, sub-commands loaded as the root group loads them (lazily, by name)."""
    yield path
    if hasattr(command, "list_commands"):
        ctx = command.context_class(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                yield from _command_paths(sub, [*path, name])


def _every_help_page() -> Iterator[tuple[str, str]]:
    runner = CliRunner()
    for path in _command_paths(typer.main.get_command(app), []):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0, (path, result.output)
        yield " ".join(path) or "enclavekit", result.output


def test_no_help_page_shows_a_type_placeholder_after_a_flag_or_an_option() -> None:
    pages = dict(_every_help_page())
    assert len(pages) > 20, "every sub-command's page was rendered"
    shown = {name: TYPE_PLACEHOLDER.findall(text) for name, text in pages.items() if TYPE_PLACEHOLDER.search(text)}
    assert not shown, shown


def test_usage_lines_name_arguments_without_braces() -> None:
    for name, text in _every_help_page():
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        assert not re.search(r"\{\w+\}", usage), (name, usage)


@pytest.mark.parametrize(
    ("argv", "expected", "absent"),
    [
        (
            ["verify", "--help"],
            [r"Usage: \S.* verify \[OPTIONS\] FILES\.\.\.", r"--policy\s+PATH", r"--at\s+TEXT"],
            [r"--json\s+\S*bool"],
        ),
        (["status", "--help"], [r"--state\s+PATH", r"--json\s+Print"], [r"<bool>"]),
    ],
)
def test_help_of_the_installed_command_reads_as_click_writes_it(
    argv: list[str], expected: list[str], absent: list[str]
) -> None:
    shown = subprocess.run(
        [*CLI, *argv], capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "120"}
    )
    for pattern in expected:
        assert re.search(pattern, shown.stdout), (pattern, shown.stdout)
    for pattern in absent:
        assert not re.search(pattern, shown.stdout, re.IGNORECASE), (pattern, shown.stdout)
