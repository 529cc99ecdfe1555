"""``enclavekit up`` runs the trust service as ``trust_web``: the first page a new user opens shows their own
enclaves, verified live (fresh nonce, PCR0 pinned to what the stack reported, the local simulator trusted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.test_trust_helpers import CLI, nitro_sample


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_up_serves_the_trust_center_with_the_stack_enclaves_verified_live(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = subprocess.Popen([*CLI, "up", "--state", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not (state / "stack.json").exists():
            assert up.poll() is None, up.stderr.read() if up.stderr else b""
            assert time.monotonic() < deadline, "stack.json never appeared"
            time.sleep(0.1)
        stack = json.loads((state / "stack.json").read_text())
        web = stack["services"]["trust_web"]
        base = web["url"]
        assert base.startswith("http://127.0.0.1:")
        names = [e["name"] for e in stack["enclaves"]]
        apps: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:  # every enclave, even those started after trust_web, gets verified
            answer = httpx.get(f"{base}/api/apps", timeout=10).json()
            apps = {a["id"]: a for a in answer["apps"]}
            ids = [f"enclave-{name}" for name in names]
            if all(apps.get(i, {}).get("verdict") not in (None, "pending") for i in ids):
                break
            time.sleep(0.2)
        for enclave in stack["enclaves"]:
            app = apps[f"enclave-{enclave['name']}"]
            assert app["verdict"] == "verified", app
            assert app["tee"] == "nitro" and app["source"] == "endpoint"
            options = app["options"]
            assert isinstance(options, dict)
            assert options["nonce"] is True and options["pcrs"] == {"0": enclave["pcr0"]}
        page = httpx.get(base + "/", timeout=10).text
        assert f"enclave {names[0]}" in page and 'data-status="verified"' in page
        # the CLI finds the service through the state folder
        done = subprocess.run(
            [
                *CLI,
                "trust",
                "submit",
                "--state",
                str(state),
                "--at",
                "doc",
                "--wait",
                "--json",
                str(nitro_sample("base_2024-11-30_nondebug.cbor")),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["verdict"] == "verified"
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
    assert up.returncode == 0
    assert not _alive(int(web["pid"]))
    assert not (state / "stack.json").exists()
