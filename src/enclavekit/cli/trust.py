"""``enclavekit trust``: the attestation verification service (Trust Center) — run it, feed it, ask it.

Contract of ``enclavekit trust submit`` (other tools rely on it): with ``--json``, one JSON object per file, one
per line: ``{file, task_id, app_id, status, verdict, valid, error: null | {code, message}, checks: [...]}``.
Exit 0 only if every file was accepted (and, with ``--wait``, verified), 1 otherwise, 2 for a usage error (no
service to talk to, a bad ``--at``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from enclavekit.attestation.evidence import MAX_EVIDENCE_SIZE
from enclavekit.attestation.verification_time import At, AtInvalid
from enclavekit.cli._app import app, no_stack_message, running_stack
from enclavekit.errors import Error
from enclavekit.hostkit.settings import load_settings
from enclavekit.services.trust.client import TERMINAL, TrustApiError, TrustClient
from enclavekit.services.trust.errors import EndpointUnavailable
from enclavekit.services.trust.model import Kind, TargetOptions
from enclavekit.services.trust.settings import DEFAULT_NATS_URL, TrustSettings
from enclavekit.stack.state import DEFAULT_STATE_DIR, StateDir

__all__ = ["trust_app"]

trust_app = typer.Typer(
    name="trust",
    help="The Trust Center: verify attestation on a schedule, keep the history, show it (web, badge, JSON, EAR).",
    no_args_is_help=True,
)
app.add_typer(trust_app, name="trust")

STATE = typer.Option(DEFAULT_STATE_DIR, "--state", help="State folder (the local stack's, by default).")


def _stack_nats(state: Path) -> str | None:
    stack = StateDir(state.resolve()).read_stack() or {}
    nats = (stack.get("services") or {}).get("nats") or {}
    url = nats.get("url")
    return url if isinstance(url, str) else None


def _settings(
    state: Path,
    *,
    database: str | None,
    objects: str | None,
    nats: str | None,
    pccs: str | None,
    registry: Path | None,
    registry_sha256: str | None,
    trust_sim_root: list[Path],
    concurrency: int | None,
    sets: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> TrustSettings:
    """Settings as every service's CLI takes them (:func:`enclavekit.hostkit.settings.load_settings`): defaults <
    ``ENCLAVEKIT_TRUST_<KEY>`` < ``--set KEY=VALUE`` < this command's own options."""
    given = {item.partition("=")[0].strip() for item in sets}
    overrides: dict[str, Any] = {
        "database_url": database,
        "objects_url": objects,
        "nats_url": nats or (None if "nats_url" in given else _stack_nats(state)),
        "pccs_url": pccs,
        "registry_path": registry,
        "registry_sha256": registry_sha256,
        "concurrency": concurrency,
        **(extra or {}),
    }
    if trust_sim_root:
        overrides["simulator_roots"] = tuple(p.resolve() for p in trust_sim_root)
    return load_settings(TrustSettings, service="trust", sets=sets, state_dir=state.resolve(), **overrides)


def _fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


# --- serve / worker ---------------------------------------------------------------------------------------------


DATABASE = typer.Option(None, "--database", help="SQLAlchemy URL (default: SQLite in STATE/trust).")
OBJECTS = typer.Option(None, "--objects", help="Object store: a folder or s3://bucket/prefix (default STATE/trust).")
NATS = typer.Option(None, "--nats", help=f"NATS URL (default: the stack's, else {DEFAULT_NATS_URL}).")
PCCS = typer.Option(None, "--pccs", help="Intel PCCS URL for TDX collateral (default: offline).")
REGISTRY = typer.Option(None, "--registry", help="OS measurement registry TOML (default: the built-in one).")
REGISTRY_PIN = typer.Option(None, "--registry-sha256", help="SHA-256 pin of --registry (required with it).")
SIM_ROOTS = typer.Option([], "--trust-sim-root", help="Trust the simulated NSM root of this state folder.")
CONCURRENCY = typer.Option(None, "--concurrency", help="Tasks a worker process runs at once (default 5).")
SETS = typer.Option([], "--set", help="A setting KEY=VALUE (repeatable; lists comma-separated).")


@trust_app.command("serve")
def serve_command(
    state: Path = STATE,
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(0, "--port", help="TCP port (0: any free port; the ready line says which)."),
    database: str | None = DATABASE,
    objects: str | None = OBJECTS,
    nats: str | None = NATS,
    pccs: str | None = PCCS,
    registry: Path | None = REGISTRY,
    registry_sha256: str | None = REGISTRY_PIN,
    trust_sim_root: list[Path] = SIM_ROOTS,
    concurrency: int | None = CONCURRENCY,
    workers: bool = typer.Option(True, "--workers/--no-workers", help="Run worker loops in this process too."),
    stack_enclaves: str | None = typer.Option(None, "--stack-enclaves", help="JSON list of stack.json enclaves."),
    stack_file: Path | None = typer.Option(None, "--stack-file", help="Register the enclaves of this stack.json."),
    frame_ancestor: list[str] = typer.Option([], "--frame-ancestor", help="Origin allowed to embed the widget."),
    public_url: str | None = typer.Option(None, "--public-url", help="URL people reach the web app at."),
    sets: list[str] = SETS,
) -> None:
    """Run the web app, the dispatcher and (by default) workers. Prints {"ready": true, "url": ...} when up."""
    from enclavekit.log import configure_logging
    from enclavekit.services.trust.runtime import serve

    configure_logging()
    try:
        enclaves = json.loads(stack_enclaves) if stack_enclaves else []
        if not isinstance(enclaves, list):
            raise ValueError("--stack-enclaves must be a JSON list")
        extra: dict[str, Any] = {"public_url": public_url}
        if frame_ancestor:
            extra["frame_ancestors"] = tuple(frame_ancestor)
        settings = _settings(
            state,
            database=database,
            objects=objects,
            nats=nats,
            pccs=pccs,
            registry=registry,
            registry_sha256=registry_sha256,
            trust_sim_root=trust_sim_root,
            concurrency=concurrency,
            sets=sets,
            extra=extra,
        )
        status = asyncio.run(
            serve(settings, host=host, port=port, workers=workers, enclaves=enclaves, stack_file=stack_file)
        )
    except (Error, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    raise typer.Exit(status)


@trust_app.command("worker")
def worker_command(
    state: Path = STATE,
    database: str | None = DATABASE,
    objects: str | None = OBJECTS,
    nats: str | None = NATS,
    pccs: str | None = PCCS,
    registry: Path | None = REGISTRY,
    registry_sha256: str | None = REGISTRY_PIN,
    trust_sim_root: list[Path] = SIM_ROOTS,
    concurrency: int | None = CONCURRENCY,
    sets: list[str] = SETS,
) -> None:
    """Run a worker process: pull verification tasks from JetStream until stopped."""
    from enclavekit.log import configure_logging
    from enclavekit.services.trust.runtime import run_worker

    configure_logging()
    try:
        settings = _settings(
            state,
            database=database,
            objects=objects,
            nats=nats,
            pccs=pccs,
            registry=registry,
            registry_sha256=registry_sha256,
            trust_sim_root=trust_sim_root,
            concurrency=concurrency,
            sets=sets,
        )
        status = asyncio.run(run_worker(settings))
    except (Error, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    raise typer.Exit(status)


# --- submit -----------------------------------------------------------------------------------------------------


def _service_url(state: Path, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    stack = running_stack(state)
    if stack is None:
        raise _fail(f"{no_stack_message(state)}\nor name a trust service with --url URL")
    service = (stack.get("services") or {}).get("trust_web") or {}
    found = service.get("url")
    if not isinstance(found, str):
        raise _fail(f"the stack running in {state.resolve()} has no trust service (give --url)")
    return found.rstrip("/")


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: {what} over {limit} bytes")
    return data


def _outcome(task: dict[str, Any]) -> dict[str, Any]:
    report = task.get("report") or {}
    status = task.get("status")
    out: dict[str, Any] = {
        "task_id": task.get("id"),
        "app_id": task.get("app_id"),
        "status": status,
        "verdict": task.get("verdict"),
        "valid": None,
        "error": None,
        "checks": [],
    }
    if status == "completed":
        out["valid"] = bool(report.get("valid"))
        out["error"] = report.get("error")
        out["checks"] = report.get("checks") or []
    elif status in ("failed", "cancelled"):
        out["valid"] = False
        out["error"] = task.get("error")
    return out


@trust_app.command("submit")
def submit_command(
    files: list[Path] = typer.Argument(
        ..., help="Evidence: Nitro documents, TDX quotes, dstack bundles.", show_default=False
    ),
    collateral: Path | None = typer.Option(None, "--collateral", help="Intel collateral JSON for TDX quotes."),
    compose: Path | None = typer.Option(None, "--compose", help="app-compose.json of a dstack bundle."),
    at: str = typer.Option("now", "--at", help="Verify as of: now, doc, UNIX seconds or ISO 8601."),
    name: str | None = typer.Option(None, "--name", help="Name shown in the web app."),
    kind: Kind | None = typer.Option(None, "--kind", help="app, kms, gateway or enclave (default: guessed)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for each verdict."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for verdicts with --wait."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file, one per line."),
    state: Path = STATE,
    url: str | None = typer.Option(None, "--url", help="The trust service's URL (instead of --state)."),
) -> None:
    """Submit evidence files to the trust service; with --wait, print each verdict and its checks."""
    try:
        try:
            at_text = At.parse(at).text
        except AtInvalid as exc:
            raise ValueError(f"--at: {exc.message}") from exc
        extras = {
            "collateral": _read_limited(collateral, 1024 * 1024, "collateral") if collateral else None,
            "compose": _read_limited(compose, 1024 * 1024, "app-compose file") if compose else None,
        }
    except (ValueError, OSError, Error) as exc:
        raise _fail(str(exc)) from exc
    base = _service_url(state, url)
    results: list[dict[str, Any]] = []
    all_good = True
    with TrustClient(base) as client:
        for path in files:
            results.append(_submit_one(client, path, extras, at_text, name, kind))
        if wait:
            deadline = time.monotonic() + timeout
            for result in results:
                if result.get("task_id") is not None:
                    result.update(_wait_for(client, str(result["task_id"]), deadline))
    out = Console(highlight=False, soft_wrap=True)
    for result in results:
        if wait or result.get("task_id") is None:
            all_good &= result.get("valid") is True
        if as_json:
            typer.echo(json.dumps(result))
        else:
            _print_human(out, result, base)
    raise typer.Exit(0 if all_good else 1)


def _submit_one(
    client: TrustClient,
    path: Path,
    extras: dict[str, bytes | None],
    at: str,
    name: str | None,
    kind: Kind | None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "file": str(path),
        "task_id": None,
        "app_id": None,
        "status": "rejected",
        "verdict": None,
        "valid": False,
        "error": None,
        "checks": [],
    }
    try:
        evidence = _read_limited(path, MAX_EVIDENCE_SIZE, "evidence")
    except (OSError, ValueError) as exc:
        result["error"] = {
            "code": "unreadable",
            "message": f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
        }
        return result
    try:
        accepted = client.submit(
            evidence,
            collateral=extras.get("collateral"),
            compose=extras.get("compose"),
            at=at,
            name=name,
            kind=None if kind is None else str(kind),
            filename=path.name,
        )
    except TrustApiError as exc:
        result["error"] = exc.to_json()
        return result
    except EndpointUnavailable as exc:
        result["error"] = {"code": "service_unavailable", "message": exc.message}
        return result
    result.update(task_id=accepted.get("task_id"), app_id=accepted.get("app_id"), status=accepted.get("status"))
    result["valid"] = None
    return result


def _wait_for(client: TrustClient, task_id: str, deadline: float) -> dict[str, Any]:
    delay = 0.1
    last: dict[str, Any] = {}
    while True:
        try:
            last = client.task(task_id)
            if last.get("status") in TERMINAL:
                return _outcome(last)
        except (TrustApiError, EndpointUnavailable):
            pass
        if time.monotonic() > deadline:
            outcome: dict[str, Any] = _outcome(last) if last else {"status": "pending", "valid": None}
            outcome["valid"] = False if outcome.get("valid") is None else outcome["valid"]
            outcome["error"] = outcome.get("error") or {
                "code": "timeout",
                "message": f"no verdict for task {task_id} within --timeout",
            }
            return outcome
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def _print_human(console: Console, result: dict[str, Any], base: str) -> None:
    verdict = result.get("verdict") or result.get("status")
    colour = {"verified": "green", "failed": "red", "incomplete": "yellow", "rejected": "red"}.get(str(verdict), "cyan")
    line = f"{result['file']}: [bold {colour}]{str(verdict).upper()}[/bold {colour}]"
    if result.get("task_id"):
        line += f"  {base}/tasks/{result['task_id']}"
    console.print(line)
    if result.get("error"):
        console.print(f"  {result['error'].get('code')}: {result['error'].get('message')}")
    for check in result.get("checks") or []:
        if check.get("status") in ("failed", "error"):
            mark = "[red]✗[/red]" if check["status"] == "failed" else "[yellow]![/yellow]"
            console.print(f"  {mark} {check['name']}: {check['detail']}")


# --- register ---------------------------------------------------------------------------------------------------


@trust_app.command("register")
def register_command(
    endpoint: str = typer.Argument(..., help="URL answering with attestation evidence (GET).", show_default=False),
    name: str | None = typer.Option(None, "--name"),
    kind: Kind = typer.Option(Kind.APP, "--kind"),
    pcr0: str | None = typer.Option(None, "--pcr0", help="Require this PCR0 (Nitro; 96 hex digits)."),
    nonce: bool = typer.Option(False, "--nonce", help="Send ?nonce=HEX and require it in the document."),
    trust_sim: bool = typer.Option(False, "--trust-sim", help="Accept the service's trusted simulator roots."),
    state: Path = STATE,
    url: str | None = typer.Option(None, "--url", help="Register through this service's API (needs --token)."),
    token: str | None = typer.Option(None, "--token", envvar="ENCLAVEKIT_TRUST_ADMIN_TOKEN", help="Admin token."),
    database: str | None = DATABASE,
    trust_sim_root: list[Path] = SIM_ROOTS,
) -> None:
    """Register an endpoint to poll and re-verify on schedule (directly in STATE's database, or via --url)."""
    logging.basicConfig(level=logging.WARNING)
    try:
        options = TargetOptions(pcrs={0: pcr0.lower()} if pcr0 else {}, nonce=nonce, trust_simulator=trust_sim)
    except Error as exc:
        raise _fail(exc.message) from exc
    if url:
        try:
            with TrustClient(url, token=token) as client:
                result = client.register(endpoint, name=name, kind=str(kind), options=options.to_json())
        except TrustApiError as exc:
            raise _fail(f"{exc.service_code}: {exc.message}", 1) from exc
        except EndpointUnavailable as exc:
            raise _fail(exc.message) from exc
        typer.echo(json.dumps(result))
        return
    from enclavekit.services.trust.service import TrustService

    try:
        settings = _settings(
            state,
            database=database,
            objects=None,
            nats=None,
            pccs=None,
            registry=None,
            registry_sha256=None,
            trust_sim_root=trust_sim_root,
            concurrency=None,
        )
        service = TrustService(settings)
        try:
            accepted = service.register_endpoint(endpoint, name=name, kind=kind, options=options)
        finally:
            service.close()
    except Error as exc:
        raise _fail(exc.message, 1) from exc
    typer.echo(json.dumps({**accepted.to_json(), "created": accepted.created}))
