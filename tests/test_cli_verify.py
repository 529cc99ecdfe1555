"""``enclavekit verify`` as other tools call it: a real process, its exit code and its JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from enclavekit.nsm import NsmSimulator
from tests.nitro_samples import sample, samples, valid_samples

ENCLAVEKIT = [sys.executable, "-m", "enclavekit.cli"]


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENCLAVEKIT, *map(str, args)], capture_output=True, text=True, timeout=60)


def _path(name: str) -> Path:
    from tests.conftest import fixtures_dir

    return fixtures_dir("nitro", "samples", name)


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("enclavekit ")


def test_every_real_document_in_one_batch_as_json() -> None:
    files = [_path(s.name) for s in samples()]
    result = run("verify", *files, "--at", "doc", "--allow-debug", "--json")
    assert result.returncode == 1  # the corrupt one
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["file"]).name for line in lines] == [s.name for s in samples()]
    for line, s in zip(lines, samples(), strict=True):
        assert set(line) >= {
            "file",
            "valid",
            "tee",
            "error",
            "debug",
            "timestamp",
            "module_id",
            "measurements",
            "checks",
        }
        assert line["tee"] == "nitro"
        if s.valid:
            assert line["valid"] is True
            assert line["error"] is None
            assert line["module_id"] == s.facts["module_id"]
            assert line["measurements"]["pcr0"] == s.facts["pcrs"]["0"]
            assert line["debug"] is s.facts["debug_mode"]
            assert all(check["ok"] for check in line["checks"])
        else:
            assert line["valid"] is False
            assert line["error"]["code"] == "malformed"


def test_exit_zero_only_when_every_file_is_valid() -> None:
    nondebug = [_path(s.name) for s in valid_samples() if not s.facts["debug_mode"]]
    assert run("verify", *nondebug, "--at", "doc").returncode == 0
    debug = _path(next(s.name for s in valid_samples() if s.facts["debug_mode"]))
    result = run("verify", *nondebug, debug, "--at", "doc", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout.splitlines()[-1])["error"]["code"] == "debug_mode"


def test_today_every_real_document_has_expired() -> None:
    result = run("verify", _path("base_2024-11-30_nondebug.cbor"), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["code"] == "certificate_expired"


def test_at_accepts_unix_seconds_and_iso8601() -> None:
    s = sample("base_2024-11-30")
    unix = str(s.facts["timestamp_ms"] / 1000 + 5)
    assert run("verify", _path(s.name), "--at", unix).returncode == 0
    assert run("verify", _path(s.name), "--at", "2024-11-30T16:30:00Z").returncode == 0
    assert run("verify", _path(s.name), "--at", "2024-12-25T00:00:00").returncode == 1


def test_policy_file_is_applied(tmp_path: Path) -> None:
    s = sample("base_2024-11-30")
    good = tmp_path / "good.toml"
    good.write_text(f'[[nitro.measurements]]\nPCR0 = "{s.facts["pcrs"]["0"]}"\n')
    assert run("verify", _path(s.name), "--at", "doc", "--policy", good).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[nitro.measurements]]\nPCR0 = "{"00" * 48}"\n')
    result = run("verify", _path(s.name), "--at", "doc", "--policy", bad, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["code"] == "measurement_mismatch"


def test_usage_errors_exit_2_without_a_traceback(tmp_path: Path) -> None:
    s = sample("base_2024-11-30")
    result = run("verify", _path(s.name), "--at", "yesterday")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    empty = tmp_path / "empty.toml"
    empty.write_text("[nitro]\n")
    result = run("verify", _path(s.name), "--policy", empty)
    assert result.returncode == 2
    assert "pins no measurements" in result.stderr
    assert "Traceback" not in result.stderr


def test_garbage_files_are_invalid_not_crashes(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x84" + b"\xff" * 100)
    other = tmp_path / "other.bin"
    other.write_bytes(b"not evidence at all")
    result = run("verify", garbage, other, "--json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    codes = [json.loads(line)["error"]["code"] for line in result.stdout.splitlines()]
    assert codes == ["malformed", "malformed"]


def test_missing_file_is_a_usage_error_naming_the_path_not_an_invalid_document(tmp_path: Path) -> None:
    missing = tmp_path / ("a-folder-name-long-enough-to-pass-eighty-columns" * 2) / "missing.cbor"
    result = run("verify", _path("base_2024-11-30_nondebug.cbor"), missing, "--at", "doc", "--json")
    assert result.returncode == 2
    assert str(missing) in result.stderr and "cannot read" in result.stderr
    assert len(result.stderr.splitlines()) == 1  # one line, not wrapped at 80 columns for a tool reading it
    assert result.stdout == ""  # nothing was verified: a usage error, not a verdict
    assert "Traceback" not in result.stderr


def test_simulated_document_without_trust_sim_root_is_untrusted_and_the_hint_names_the_flag(tmp_path: Path) -> None:
    document = tmp_path / "sim.cbor"
    document.write_bytes(NsmSimulator(tmp_path / "state").client().attestation())
    result = run("verify", document, "--json")
    assert result.returncode == 1
    line = json.loads(result.stdout)
    assert line["error"]["code"] == "chain_untrusted"
    assert "--trust-sim-root" in line["hint"]
    assert "--trust-sim-root" not in line["error"]["message"]  # the core names no flag
    human = run("verify", document)
    assert "--trust-sim-root" in human.stdout
    trusted = run("verify", document, "--trust-sim-root", tmp_path / "state", "--json")
    assert trusted.returncode == 0 and "hint" not in json.loads(trusted.stdout)


def test_a_batch_ends_with_a_one_line_summary_and_json_stdout_stays_one_line_per_file() -> None:
    files = [_path(s.name) for s in samples()]
    human = run("verify", *files, "--at", "doc")
    assert human.returncode == 1  # the corrupt one
    debug = sum(1 for s in valid_samples() if s.facts["debug_mode"])
    verified = len(valid_samples()) - debug
    assert human.stdout.splitlines()[-1] == f"{verified} verified, {debug + 1} invalid, 0 errors"
    as_json = run("verify", *files, "--at", "doc", "--json")
    lines = as_json.stdout.splitlines()
    assert len(lines) == len(files) and all(json.loads(line)["file"] for line in lines)
    assert f"{verified} verified, {debug + 1} invalid, 0 errors" in as_json.stderr
    single = run("verify", files[0], "--at", "doc")
    assert "verified," not in single.stdout  # one file: its verdict is the summary


def test_human_output_names_the_verdict_and_the_checks() -> None:
    result = run("verify", _path("base_2024-11-30_nondebug.cbor"), "--at", "doc")
    assert "VALID" in result.stdout
    assert "certificate.chain" in result.stdout
    assert "PCR0" in result.stdout


def test_core_messages_name_no_command_line_flag() -> None:
    # the CLI adds flag hints; a core message naming a flag leaks into the trust service and the library API
    import ast
    import re

    from enclavekit.attestation import nitro

    flag = re.compile(r"(?<![\w-])--[a-z]")
    root = Path(nitro.__file__).parent
    leaks = []
    for source in sorted(root.glob("*.py")):
        tree = ast.parse(source.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
            if id(node) not in docstrings and flag.search(text):
                leaks.append(f"{source.name}:{getattr(node, 'lineno', 0)}: {text[:60]}")
    assert not leaks, leaks
