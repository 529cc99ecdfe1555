"""The ``enclavekit`` command. Importing this package loads nothing heavy: the root Typer group loads when
:func:`main` needs it, and each sub-command's module (and what it needs: a web framework, the ORM, the AWS SDK)
only when that command runs. ``enclavekit verify DOC`` skips Typer altogether (see :func:`main`)."""

from __future__ import annotations

import atexit
import errno
import gc
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from enclavekit.errors import Error

if TYPE_CHECKING:
    import typer

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:  # ``from enclavekit.cli import app`` still works; it loads Typer then
    if name == "app":
        from enclavekit.cli._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fast_verify(argv: list[str]) -> int | None:
    """``enclavekit verify ...`` without Typer (issue #12: within 2x a plain script); ``None``: let Typer do it.

    The options come from the table the Typer command is built from, and whatever the small parser is not sure
    of (``--help``, a usage error) goes to Typer, so the output and the exit status are the same either way.
    """
    if argv[:1] != ["verify"]:
        return None
    gc.disable()  # a start-up allocates objects that all live to the end: collecting them only costs time
    try:
        from enclavekit.cli._verify_options import parse_fast

        args = parse_fast(argv[1:])
        if args is None:
            return None
        from enclavekit.cli._verify_run import run_verify
    finally:
        gc.freeze()  # what was imported stays: later collections (a batch of files) need not walk it
        gc.enable()
    try:
        return run_verify(args)
    except KeyboardInterrupt:
        return 130  # as Typer ends a command on Ctrl-C: quietly, 130
    except OSError as exc:  # the reader went away (`| head -1`): quietly 1, as click does
        if exc.errno != errno.EPIPE:
            raise
        sys.stdout = open(os.devnull, "w")  # noqa: PTH123, SIM115 - what is still buffered for the closed pipe is dropped
        return 1


def _exit_at_once(status: int) -> None:
    """Exit with ``status`` as ``SystemExit`` would, without tearing the interpreter down object by object.

    A one-shot command has nothing left to release that the operating system does not reclaim: atexit handlers
    run, the output is flushed, then the process ends (with tens of milliseconds of module teardown skipped;
    it was a third of `enclavekit verify DOC`). Where that is not certain (another thread still runs, a flush
    fails, e.g. a closed pipe) the interpreter exits the ordinary way, reporting what it always did.
    """
    if threading.active_count() > 1:
        raise SystemExit(status)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(status) from None
    os._exit(status)


def main() -> None:
    """The ``enclavekit`` process: run the command on ``sys.argv`` and end the process with its exit status.

    It never returns: it raises ``SystemExit``, or, after ``verify``'s fast path, ends the process at once with
    ``os._exit`` (atexit handlers run, output flushed). Code that must stay alive calls :data:`app` instead.
    """
    try:
        status = _fast_verify(sys.argv[1:])
        if status is not None:
            _exit_at_once(status)
        from enclavekit.cli._app import app

        app()
    except Error as exc:  # what a command did not handle itself, e.g. a bad ENCLAVEKIT_LOG_LEVEL: one line
        print(f"enclavekit: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if TYPE_CHECKING:
    app: typer.Typer
