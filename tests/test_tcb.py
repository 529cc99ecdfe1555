"""A minimal, measured TCB: enclave processes load no host framework, light imports stay light, the inventory.

Each enclave app runs as a real process started from the minimal entry point (``python -m enclavekit.enclave``),
with ``-X importtime`` so that every module it ever imports (at boot and while answering calls) is written to
its stderr, and ``/proc/PID/maps`` shows which native libraries it mapped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from enclavekit.attestation.nitro import NitroPolicy
from enclavekit.cli._app import COMMANDS
from enclavekit.client import AttestedClient
from enclavekit.enclave.app import HEALTH, HealthRequest
from enclavekit.enclave.tcb import inventory, lock_hashes
from enclavekit.errors import ConfigurationError
from enclavekit.nsm import load_root

ROOT = Path(__file__).resolve().parents[1]
ENCLAVE_LOCK = ROOT / "requirements-enclave.lock"

HOST_FRAMEWORKS = frozenset(
    {
        "alembic",
        "boto3",
        "botocore",
        "click",
        "fastapi",
        "greenlet",
        "httpx",
        "jinja2",
        "markupsafe",
        "multipart",
        "prometheus_client",
        "psycopg",
        "redis",
        "rich",
        "sqlalchemy",
        "starlette",
        "structlog",
        "typer",
        "uvicorn",
    }
)
"""Top-level packages of the host side: none may be imported by an enclave process."""

HOST_NATIVE = ("sqlalchemy", "greenlet", "markupsafe", "psycopg", "_dcap_qvl", "uvloop", "httptools")

APPS = ["enclavekit.enclave.demo:app", "enclavekit.services.notify.enclave_app:app"]


def _imported(importtime_stderr: str) -> set[str]:
    names = set()
    for line in importtime_stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line)
        if match:
            names.add(match.group(1).split(".")[0])
    return names


@pytest.mark.parametrize("spec", APPS)
async def test_enclave_process_loads_no_host_framework(tmp_path: Path, spec: str) -> None:
    socket_path = tmp_path / "enclave.sock"
    argv = [sys.executable, "-X", "importtime", "-m", "enclavekit.enclave", spec]
    process = subprocess.Popen(
        [*argv, "--listen", f"unix://{socket_path}", "--state", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr").open("wb"),
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline() or "{}")
        assert ready.get("ready") is True, (tmp_path / "stderr").read_text()[-2000:]
        policy = NitroPolicy(measurements=[{0: bytes.fromhex(ready["pcr0"])}], roots=(load_root(tmp_path),))
        async with AttestedClient.nitro(f"unix://{socket_path}", policy) as client:
            for _ in range(3):
                assert (await client.call(HEALTH, HealthRequest())).status == "ok"
        maps = Path(f"/proc/{process.pid}/maps").read_text()
    finally:
        process.terminate()
        process.wait(15)
    stderr = (tmp_path / "stderr").read_text()
    imported = _imported(stderr)
    assert "enclavekit" in imported, "-X importtime wrote the imports"
    assert not re.search(r"\|\s*enclavekit\.cli\b", stderr), "an enclave process must not load the CLI"
    assert imported & HOST_FRAMEWORKS == set()
    mapped = {line.split()[-1] for line in maps.splitlines() if ".so" in line}
    assert [path for path in mapped if any(name in path.lower() for name in HOST_NATIVE)] == []


@pytest.mark.parametrize(
    "module",
    [
        "enclavekit.cli",
        "enclavekit.kms.cms",
        "enclavekit.kms",
        "enclavekit.services.notify.client",
        "enclavekit.services.trust.client",
        "enclavekit.services.trust",
        "enclavekit.attestation.nitro",
    ],
)
def test_light_import_does_not_pull_in_host_frameworks(module: str) -> None:
    probe = f"import sys, json, {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True).stdout))
    banned = {"sqlalchemy", "fastapi", "starlette", "uvicorn", "boto3", "botocore", "alembic", "jinja2"}
    assert loaded & banned == set()


def test_cli_help_lists_every_command_without_importing_any() -> None:
    shown = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "enclavekit.cli", "--help"], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s", shown.stdout, re.M), name
    for module in {module for module, _ in COMMANDS.values()}:
        assert f"| {module}\n" not in shown.stderr, f"--help imported {module}"


def test_lazy_command_table_matches_what_the_modules_register() -> None:
    """Every command a CLI module registers is in the table, with the help it really has (``--help`` shows the
    table without importing the modules, so a command missing from it could not be found)."""
    import importlib
    import pkgutil

    import typer

    import enclavekit.cli
    from enclavekit.cli import app

    for module in pkgutil.iter_modules(enclavekit.cli.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"enclavekit.cli.{module.name}")
    root = typer.main.get_command(app)
    assert set(root.commands) == set(COMMANDS)  # type: ignore[attr-defined]
    ctx = typer.Context(root)
    for name, (_, help_text) in COMMANDS.items():
        command = root.get_command(ctx, name)  # type: ignore[attr-defined]
        assert command is not None, name
        assert command.get_short_help_str(limit=500) == help_text, name


def test_unknown_command_is_still_a_usage_error_with_a_suggestion() -> None:
    result = subprocess.run([sys.executable, "-m", "enclavekit.cli", "no-such-command"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "no-such-command" in result.stderr
    typo = subprocess.run([sys.executable, "-m", "enclavekit.cli", "verfy", "x"], capture_output=True, text=True)
    assert typo.returncode == 2
    assert "Did you mean 'verify'?" in typo.stderr, "a command not loaded yet is still suggested"


def test_enclave_entry_point_rejects_a_setting_without_a_value(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "enclavekit.enclave", "enclavekit.enclave.demo:app", "--set", "novalue"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "KEY=VALUE" in result.stderr


def test_enclave_entry_point_rejects_an_app_that_is_not_one(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "enclavekit.enclave", "enclavekit.errors:Error", "--state", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not an EnclaveApp" in result.stderr


def test_notify_inventory_names_only_enclave_distributions_pinned_in_the_enclave_lock() -> None:
    found = inventory("enclavekit.services.notify.enclave_app:app", lockfile=ENCLAVE_LOCK)
    names = {d.name for d in found.distributions}
    assert {"cryptography", "pynacl", "cbor2", "pydantic"} <= names
    assert names & {n.replace("_", "-") for n in HOST_FRAMEWORKS} == set()
    assert all(d.hashes and all(h.startswith("sha256:") for h in d.hashes) for d in found.distributions)
    assert "enclavekit.services.notify.enclave_app" in found.modules
    assert not [m for m in found.modules if m.split(".")[:2] in (["enclavekit", "cli"], ["enclavekit", "stack"])]
    assert found.lines > 1000
    assert set(found.to_json()) == {"app", "distributions", "modules", "lines"}


def test_tcb_command_prints_the_inventory_as_json() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "enclavekit.cli", "enclave", "tcb", "enclavekit.enclave.demo:app", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["app"] == "enclavekit.enclave.demo:app"
    assert "enclavekit.enclave.demo" in data["modules"]
    assert data["lines"] > 0


def test_inventory_of_an_app_that_cannot_be_imported_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot import"):
        inventory("enclavekit.no_such_module:app")


def test_garbage_lockfile_yields_no_hashes_and_an_unreadable_one_is_a_configuration_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.lock"
    garbage.write_bytes(b"\x00\xff not a lockfile\n    --hash=sha256:zz\n")
    with pytest.raises(ConfigurationError):
        lock_hashes(garbage)  # not UTF-8
    garbage.write_text("pkg==1.0 \\\n    --hash=sha256:nothex\nother\n    --hash=sha256:" + "a" * 64 + "\n")
    assert lock_hashes(garbage) == {"pkg": ()}
    with pytest.raises(ConfigurationError, match="cannot read"):
        lock_hashes(tmp_path / "missing.lock")


@pytest.mark.parametrize("spec", ["", "no-colon", "a:b:c", "os:system; rm -rf /", "x" * 300 + ":app"])
def test_inventory_refuses_a_spec_that_is_not_module_attribute(spec: str) -> None:
    with pytest.raises(ConfigurationError, match="module:attribute"):
        inventory(spec)


def test_trust_page_of_a_local_enclave_shows_what_runs_inside(tmp_path: Path) -> None:
    import asyncio
    import socket
    import threading
    import urllib.request

    import uvicorn

    from enclavekit.services.trust.api import create_app
    from enclavekit.services.trust.service import TrustService
    from enclavekit.services.trust.settings import TrustSettings

    service = TrustService(TrustSettings(state_dir=tmp_path))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[listener])), daemon=True)
    try:
        enclave = {"name": "demo", "app": "enclavekit.enclave.demo:app", "pcr0": "ab" * 48, "address": "unix:///x"}
        assert service.register_stack_enclaves([enclave]) == ["enclave-demo"]
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/apps/enclave-demo"
        for _ in range(100):
            if server.started:
                break
            threading.Event().wait(0.05)
        with urllib.request.urlopen(url, timeout=10) as response:
            page = response.read().decode()
        assert 'id="tcb"' in page
        assert "enclavekit enclave tcb enclavekit.enclave.demo:app" in page
        assert "cryptography" in page and "sqlalchemy" not in page.split('id="tcb"')[1].split("</section>")[0]
        bogus = {"name": "bogus", "app": "enclavekit.no_such_module:app", "address": "unix:///y"}
        service.register_stack_enclaves([bogus])
        assert "enclave-bogus" not in service.local_tcb, "an app that cannot be imported has no inventory"
    finally:
        server.should_exit = True
        if thread.is_alive():
            thread.join(10)
        service.close()


def test_verifying_a_nitro_document_loads_no_tdx_verifier() -> None:
    """`enclavekit verify DOC` of a Nitro document must not pay for dcap-qvl, dstack or TDX policies."""
    from tests.conftest import fixtures_dir

    document = fixtures_dir("nitro", "samples", "evervault_2022-10-13_nondebug.cbor")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "enclavekit.cli", "verify", str(document), "--at", "doc"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    imported = {m.group(1) for m in re.finditer(r"\|\s*(\S+)\n", result.stderr)}
    assert "enclavekit.attestation.nitro" in imported
    assert imported & {"dcap_qvl", "enclavekit.attestation.tdx", "enclavekit.attestation.dstack"} == set()


def test_enclave_lockfile_pins_the_core_and_no_host_distribution() -> None:
    """The enclave image installs requirements-enclave.lock: it must hold every core dependency, all hashed, and
    nothing of the host side (a host package slipping into the core would silently grow every enclave's TCB)."""
    import tomllib

    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-") for requirement in core}
    pinned = lock_hashes(ENCLAVE_LOCK)
    assert wanted <= set(pinned)
    assert all(pinned.values()), "every distribution is pinned by hash"
    host = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "redis", "jinja2", "markupsafe"}
    host |= {"typer", "rich", "prometheus-client", "python-multipart", "greenlet", "boto3", "botocore", "click"}
    assert set(pinned) & host == set()
    assert len(pinned) <= 13
