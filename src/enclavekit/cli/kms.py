"""``enclavekit kms serve``: the local KMS emulator (AWS KMS JSON protocol) on its own.

When it listens it prints one JSON line on stdout, ``{"ready": true, "url": "http://H:P"}`` (the stack
supervisor waits for it), then serves until SIGTERM or SIGINT and exits 0. Logs go to stderr. Exit code 2: a
usage or configuration error (an unusable state folder, a missing simulator root, a port in use).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import typer

from enclavekit.cli._app import app
from enclavekit.errors import Error
from enclavekit.hostkit.process import announce, stop_on_signals
from enclavekit.kms.emulator import DEFAULT_PORT, RunningEmulator, open_service, serve
from enclavekit.kms.service import DEFAULT_ACCOUNT, DEFAULT_REGION
from enclavekit.nsm.ca import load_root

__all__ = ["kms_app", "serve_command"]

kms_app = typer.Typer(
    name="kms",
    help="The local KMS emulator: AWS KMS's protocol, key policies with Nitro attestation conditions.",
    no_args_is_help=True,
)
app.add_typer(kms_app, name="kms")


@kms_app.command("serve")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=0, max=65535, help="Port (0: any free port)."),
    state: Path = typer.Option(Path(".enclavekit"), "--state", help="State folder; keys live in STATE/kms/."),
    trust_sim_root: list[Path] = typer.Option(
        [],
        "--trust-sim-root",
        help="Also trust the NSM simulator root kept in this state folder (repeatable). The AWS root is always "
        "trusted; simulated enclaves are trusted only when named here.",
    ),
    region: str = typer.Option(DEFAULT_REGION, "--region", help="Region in key ARNs."),
    account: str = typer.Option(DEFAULT_ACCOUNT, "--account", help="Account id in key ARNs."),
    log_level: str = typer.Option("info", "--log-level", help="Logging level on stderr."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Serve HTTPS: certificate chain (PEM)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="Serve HTTPS: private key (PEM)."),
) -> None:
    """Run the KMS emulator until SIGTERM/SIGINT (HTTPS with --tls-cert/--tls-key, as enclaves require)."""
    if (tls_cert is None) != (tls_key is None):
        typer.echo("error: give both --tls-cert and --tls-key, or neither", err=True)
        raise typer.Exit(2)
    tls = None if tls_cert is None or tls_key is None else (tls_cert, tls_key)
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        roots = [load_root(folder) for folder in trust_sim_root]
        service = open_service(state, trusted_roots=roots, region=region, account=account)
    except Error as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    def ready(running: RunningEmulator) -> None:
        announce({"url": running.url})
        trusted = ", ".join(str(p) for p in trust_sim_root) or "none"
        logging.getLogger("enclavekit.kms").info(
            "KMS emulator at %s, %d key(s) in %s, simulator roots trusted: %s",
            running.url,
            len(service.keystore),
            service.keystore.directory,
            trusted,
        )

    async def main() -> None:
        with stop_on_signals(asyncio.Event()) as stop:
            await serve(service, host=host, port=port, on_ready=ready, stop=stop, tls=tls)

    try:
        asyncio.run(main())
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        service.keystore.close()
