"""The state folder of a local stack (default ``.enclavekit/``): layout, the single-instance lock, stack.json."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from enclavekit.errors import ConfigurationError

__all__ = ["DEFAULT_STATE_DIR", "StackAlreadyRunning", "StateDir"]

DEFAULT_STATE_DIR = Path(".enclavekit")


class StackAlreadyRunning(ConfigurationError):
    """Another ``enclavekit up`` holds this state folder."""

    code = "stack_already_running"


@dataclass(frozen=True, slots=True)
class StateDir:
    """Paths inside one state folder. Everything the embedded stack keeps lives below ``root``."""

    root: Path

    @property
    def stack_file(self) -> Path:
        return self.root / "stack.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "up.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def nats(self) -> Path:
        return self.root / "nats"

    @property
    def run(self) -> Path:
        """Sockets and other files that only make sense while the stack runs."""
        return self.root / "run"

    def create(self) -> None:
        for path in (self.root, self.logs, self.nats, self.run):
            path.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)

    def lock(self) -> IO[str]:
        """Take the folder's exclusive lock for this process's lifetime, or raise :class:`StackAlreadyRunning`."""
        self.create()
        handle = self.lock_file.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StackAlreadyRunning(
                    f"{self.root} is in use by a running `enclavekit up` (pid {holder}); "
                    f"stop it first, or use another --state folder"
                ) from exc
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def write_stack(self, data: dict[str, Any]) -> None:
        temporary = self.stack_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=2) + "\n")
        temporary.replace(self.stack_file)

    def read_stack(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.stack_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove_stack(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.stack_file.unlink()
