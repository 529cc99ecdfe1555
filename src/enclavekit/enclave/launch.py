"""The minimal entry point of an enclave process: ``python -m enclavekit.enclave APP --listen ... --state ...``.

It imports the enclave runtime and the app, and nothing else: no CLI library, no web framework, no ORM. What an
enclave process loads is code its clients trust when they accept its PCRs (see ``docs/tcb.md``), so this module
uses :mod:`argparse` and the standard :mod:`logging`, and ``enclavekit enclave run`` is a thin wrapper around
:func:`run`. Prints one JSON line ``{"ready": true, ...}`` on stdout when serving; exits 2 on a configuration
error and 1 on any other enclavekit error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from enclavekit.enclave.runtime import RuntimeOptions, load_app, serve_app
from enclavekit.errors import ConfigurationError, Error
from enclavekit.log import log_level

__all__ = ["main", "parse_settings", "run"]

DEFAULT_LISTEN = "vsock://any:5000"


def parse_settings(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` items as a mapping; raises :class:`ConfigurationError` for an item without ``=``."""
    settings = dict(item.split("=", 1) for item in items if "=" in item)
    if len(settings) != len(items):
        raise ConfigurationError("--set takes KEY=VALUE")
    return settings


def run(
    spec: str,
    *,
    listen: str = DEFAULT_LISTEN,
    state: Path = Path(".enclavekit"),
    name: str | None = None,
    device: bool = False,
    refresh: float = 600.0,
    advertise: str | None = None,
    settings: Mapping[str, str] | None = None,
    config: Path | None = None,
) -> int:
    """Boot the app ``spec`` (``module:attribute``) and serve it until SIGTERM/SIGINT; returns the exit status."""
    try:
        logging.basicConfig(level=log_level(), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
        enclave, _ = load_app(spec)
        if name:
            enclave.name = name
        app_settings = dict(settings or {})
        if advertise:
            app_settings["advertise"] = advertise
        options = RuntimeOptions(
            listen=listen,
            state_dir=state,
            device=device,
            refresh_interval=refresh,
            settings=app_settings,
            config=config,
        )
        asyncio.run(serve_app(enclave, spec, options, on_ready=lambda r: print(json.dumps(r), flush=True)))
    except ConfigurationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m enclavekit.enclave",
        description="Run an enclave app until SIGTERM/SIGINT (in a Nitro Enclave with --device, else simulated).",
    )
    parser.add_argument("app", help="the app as module:attribute, e.g. enclavekit.enclave.demo:app")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="vsock://any:PORT, unix:///PATH, tcp://H:P")
    parser.add_argument("--state", type=Path, default=Path(".enclavekit"), help="state folder (the simulator's CA)")
    parser.add_argument("--name", default=None, help="name in logs (default: the app's)")
    parser.add_argument("--device", action="store_true", help="use /dev/nsm (inside a real Nitro Enclave)")
    parser.add_argument("--refresh-interval", type=float, default=600.0, help="seconds between attestation refreshes")
    parser.add_argument("--advertise", default=None, help="address other enclaves reach this one at")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="handed to the app")
    parser.add_argument(
        "--config", type=Path, default=None, help="the app's configuration file; measured into PCR0 (in the EIF)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and :func:`run` the app; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = parse_settings(args.set)
    except ConfigurationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return run(
        args.app,
        listen=args.listen,
        state=args.state,
        name=args.name,
        device=args.device,
        refresh=args.refresh_interval,
        advertise=args.advertise,
        settings=settings,
        config=args.config,
    )
