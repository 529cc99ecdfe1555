"""``enclavekit verify``'s fast path (issue #12): it must answer exactly as the Typer command does, load no CLI
framework, and still end the process properly (atexit handlers, every line flushed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from enclavekit.cli._verify_options import OPTIONS, VerifyArgs, parse_fast
from enclavekit.nsm import NsmSimulator
from tests.nitro_samples import samples

FAST = [sys.executable, "-m", "enclavekit.cli"]
# The Typer command, reached without main(): how every command line went before the fast path existed (named as
# click names ``python -m enclavekit.cli``, for usage lines to compare).
TYPER = [
    sys.executable,
    "-c",
    "import sys; from enclavekit.cli import app; app(sys.argv[1:], prog_name='python -m enclavekit.cli')",
]


def _path(name: str) -> Path:
    from tests.conftest import fixtures_dir

    return fixtures_dir("nitro", "samples", name)


def _run(prefix: list[str], args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, "verify", *args], capture_output=True, text=True, timeout=60)


def _command_lines(tmp_path: Path) -> list[list[str]]:
    doc = str(_path("evervault_2022-10-13_nondebug.cbor"))
    other = str(_path("base_2024-11-30_nondebug.cbor"))
    simulated = tmp_path / "sim.cbor"
    simulated.write_bytes(NsmSimulator(tmp_path / "state").client().attestation())
    policy = tmp_path / "policy.toml"
    policy.write_text("[nitro]\n")
    return [
        [doc, "--at", "doc"],
        [doc, "--at=doc", "--json"],
        ["--json", doc, "--at", "doc", other],  # options between the files
        [doc, other, "--at", "doc"],  # human report and its summary line
        [doc, "--format", "ear", "--at", "doc"],
        [doc, "--at", "1665651482", "--allow-debug", "--json"],  # a warning on stderr
        [doc, "--at", "doc", "--unsafe-no-collateral", "--json"],
        [str(simulated), "--json", "--at", "doc"],  # untrusted, with its hint
        [str(simulated), "--trust-sim-root", str(tmp_path / "state"), "--at", "doc"],
        [doc, "--at", "yesterday"],  # usage errors: exit 2, one line on stderr
        [doc, "--format", "xml"],
        [doc, "--pccs", "ftp://example.com"],
        [doc, "--policy", str(policy)],
        [doc, "--policy", str(tmp_path / "missing.toml")],
        [doc, str(tmp_path / "missing.cbor"), "--at", "doc", "--json"],
        [doc, "--collateral", str(policy), "--at", "doc", "--json"],
        [doc, "--bogus"],  # what the fast parser refuses goes to Typer: click's own message
        [doc, "-h"],
        [doc, "--json=yes"],
        [doc, "--at"],
        [],
    ]


def test_fast_path_answers_every_command_line_exactly_as_the_typer_command(tmp_path: Path) -> None:
    """A second parser could drift from the command it shortcuts: same stdout, stderr and exit status, always."""
    for args in _command_lines(tmp_path):
        fast, typer = _run(FAST, args), _run(TYPER, args)
        assert (fast.returncode, fast.stdout, fast.stderr) == (typer.returncode, typer.stdout, typer.stderr), args
        assert "Traceback" not in fast.stderr, args


def test_fast_parser_reads_exactly_the_options_the_typer_command_declares() -> None:
    """One table for both parsers: a parameter added to the Typer command alone would make the fast path
    refuse (or misread) it; this keeps the two sets of flags, defaults and help lines equal."""
    import typer.main

    from enclavekit.cli import app
    from enclavekit.cli.verify import verify_command

    command = typer.main.get_command(app).get_command(None, "verify")  # type: ignore[attr-defined]
    assert command is not None and command.callback is not None
    declared = {param.name: (param.opts, param.default, getattr(param, "help", None)) for param in command.params}
    assert set(declared) == {option.name for option in OPTIONS} == set(VerifyArgs.__slots__)
    for option in OPTIONS:
        opts, default, help_text = declared[option.name]
        assert opts == ([option.name] if option.flag is None else [option.flag])
        if option.flag is not None:
            assert help_text == option.help
            assert default == ([] if option.kind == "repeated_path" else option.default)
    assert verify_command.__doc__ and verify_command.__doc__.startswith("Verify attestation evidence.")
    every = ["a.cbor", "--at", "doc", "--policy", "p.toml", "--allow-debug", "--trust-sim-root", "s1"]
    every += ["--trust-sim-root", "s2", "--collateral", "c.json", "--pccs", "https://pccs", "--compose", "app.json"]
    every += ["--unsafe-no-collateral", "--format", "ear", "--json", "b.cbor"]
    assert parse_fast(every) == VerifyArgs(
        files=[Path("a.cbor"), Path("b.cbor")],
        at="doc",
        policy=Path("p.toml"),
        allow_debug=True,
        trust_sim_root=[Path("s1"), Path("s2")],
        collateral=[Path("c.json")],
        pccs="https://pccs",
        compose=Path("app.json"),
        unsafe_no_collateral=True,
        output_format="ear",
        as_json=True,
    )


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["a", "--help"], ["a", "--bogus"], ["a", "-h"], ["a", "--at"], ["a", "--json=1"], ["--", "a"]],
)
def test_fast_parser_leaves_help_and_usage_errors_to_typer(args: list[str]) -> None:
    assert parse_fast(args) is None


def _imported(importtime_stderr: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"\|\s*(\S+)\n", importtime_stderr)}


def test_verifying_a_nitro_document_loads_no_cli_framework() -> None:
    """Typer, click and pydantic cost more than the whole verification; JSON output needs no rich either."""
    doc = str(_path("evervault_2022-10-13_nondebug.cbor"))
    for extra, unwanted in (([], {"typer", "click", "pydantic"}), (["--json"], {"typer", "click", "pydantic", "rich"})):
        result = subprocess.run(
            [*FAST[:1], "-X", "importtime", *FAST[1:], "verify", doc, "--at", "doc", *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        top = {name.split(".")[0] for name in _imported(result.stderr)}
        assert "enclavekit" in top and top & unwanted == set(), extra


def test_fast_exit_still_runs_atexit_handlers_and_flushes_every_line() -> None:
    """Skipping the interpreter's teardown must not skip what a normal exit guarantees."""
    files = [str(_path(s.name)) for s in samples()] * 20
    script = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "from enclavekit.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "verify", *files, "--at", "doc", "--allow-debug", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1  # one sample is corrupt
    lines = result.stdout.splitlines()
    assert len(lines) == len(files) and all(json.loads(line)["file"] for line in lines)
    assert result.stderr.rstrip().endswith("atexit ran")


def test_reader_closing_the_pipe_ends_both_paths_quietly_with_status_1() -> None:
    """`enclavekit verify *.cbor --json | head -1`: click exits 1 without a traceback; so must the fast path."""
    files = [str(_path(s.name)) for s in samples()] * 30  # far more than a pipe buffers: the writer must block
    outcomes = []
    for prefix in (FAST, TYPER):
        process = subprocess.Popen(
            [*prefix, "verify", *files, "--at", "doc", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert process.stdout is not None and process.stderr is not None
        assert json.loads(process.stdout.readline())["file"] == files[0]
        process.stdout.close()
        stderr = process.stderr.read()
        outcomes.append((process.wait(timeout=60), stderr))
    assert outcomes[0] == outcomes[1] == (1, b"")
