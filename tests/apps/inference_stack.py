"""The inference part of ``enclavekit up`` (KMS emulator, enclave, relay, gateway) as one supervisor process,
for tests: ``python -m tests.apps.inference_stack STATE``. Prints stack.json's contents when ready; SIGTERM stops
everything."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from enclavekit.services.inference.stack import start_inference
from enclavekit.stack.state import StateDir
from enclavekit.stack.up import Stack, serve


def main() -> None:
    stack = Stack(StateDir(Path(sys.argv[1])))
    stack.state.create()
    status = asyncio.run(serve(stack, start_inference, lambda data: print(json.dumps(data), flush=True)))
    raise SystemExit(status)


if __name__ == "__main__":
    main()
