"""``enclavekit host relay``: the untrusted host's piece in front of one enclave."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import typer

from enclavekit.cli._app import app
from enclavekit.errors import ConfigurationError
from enclavekit.host.egress import EgressProxy, parse_allowlist
from enclavekit.host.relay import Relay, RelayLimits
from enclavekit.hostkit.process import announce, run_until_stopped, stop_on_signals
from enclavekit.rpc import Address, TcpAddress, parse_address

__all__ = ["relay_command"]

host_app = typer.Typer(help="The untrusted host side: relays and endpoints that never see plaintext.")
app.add_typer(host_app, name="host")


@host_app.command("relay")
def relay_command(
    listen: str = typer.Option(..., "--listen", help="tcp://HOST:PORT clients connect to."),
    upstream: str = typer.Option(..., "--upstream", help="The enclave: vsock://CID:PORT, unix:///PATH, tcp://..."),
    http: str | None = typer.Option(None, "--http", help="Also serve the attestation endpoint on tcp://HOST:PORT."),
    trust_sim_root: list[Path] = typer.Option([], "--trust-sim-root", help="Simulator state folder(s) to trust."),
    max_connections: int = typer.Option(1024, "--max-connections"),
    idle_timeout: float = typer.Option(300.0, "--idle-timeout", help="Seconds without traffic before closing."),
    capture: Path | None = typer.Option(
        None, "--capture", help="Append every relayed byte to FILE (what the host sees: for audits and tests)."
    ),
) -> None:
    """Relay ciphertext between clients and an enclave (and serve its attestation document over HTTP)."""
    try:
        listen_address = parse_address(listen)
        upstream_address = parse_address(upstream)
        http_address = parse_address(http) if http else None
        if not isinstance(listen_address, TcpAddress) or (http_address and not isinstance(http_address, TcpAddress)):
            raise ConfigurationError("--listen and --http take tcp://HOST:PORT")
        roots: tuple[bytes, ...] = ()
        if trust_sim_root:
            from enclavekit.nsm import load_root

            roots = tuple(load_root(d) for d in trust_sim_root)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    asyncio.run(_serve(listen_address, upstream_address, http_address, roots, max_connections, idle_timeout, capture))


async def _serve(
    listen: TcpAddress,
    upstream: Address,
    http: Address | None,
    roots: tuple[bytes, ...],
    max_connections: int,
    idle_timeout: float,
    capture: Path | None,
) -> None:
    limits = RelayLimits(max_connections=max_connections, idle_timeout=idle_timeout)
    tap = None
    if capture is not None:
        sink = capture.open("ab")

        def tap(direction: str, chunk: bytes) -> None:
            sink.write(chunk)
            sink.flush()

    relay = Relay(upstream, limits=limits, tap=tap)
    async with contextlib.AsyncExitStack() as exits:
        stop = exits.enter_context(stop_on_signals(asyncio.Event()))
        host, port = await relay.start(listen.host, listen.port)
        exits.push_async_callback(relay.close)
        ready: dict[str, object] = {"url": f"tcp://{host}:{port}", "upstream": str(upstream)}
        if isinstance(http, TcpAddress):
            from enclavekit.host.attestation_endpoint import attestation_app  # a web framework: only then
            from enclavekit.hostkit.server import running

            app = attestation_app(str(upstream), roots=roots)
            server = await exits.enter_async_context(running(app, host=http.host, port=http.port, lifespan="on"))
            ready["attestation_url"] = f"{server.url}/attestation"
        announce(ready)
        await stop.wait()


@host_app.command("egress")
def egress_command(
    listen: str = typer.Option(..., "--listen", help="Where enclaves connect: vsock://any:PORT, unix:///PATH, tcp://."),
    allow: list[str] = typer.Option(..., "--allow", help="HOST[:PORT] an enclave may CONNECT to (repeatable)."),
    max_connections: int = typer.Option(256, "--max-connections"),
) -> None:
    """An HTTP CONNECT proxy for enclaves, limited to --allow hosts; TLS ends inside the enclave."""
    try:
        allowlist = parse_allowlist(allow)
        address = parse_address(listen)
    except (ValueError, ConfigurationError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    proxy = EgressProxy(allowlist, limits=RelayLimits(max_connections=max_connections))

    async def start() -> dict[str, object]:
        bound = await proxy.start(address)
        return {"url": str(bound), "allow": sorted(f"{h}:{p}" for h, p in allowlist)}

    asyncio.run(run_until_stopped(start, proxy.close))
