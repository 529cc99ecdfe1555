"""A demo note belongs to the key that wrote it: the host, through its own relay, cannot read it.

Real processes (the demo enclave with the simulated NSM, the host relay capturing what it forwards), the real
verifier and the real ``enclavekit demo`` command, as in ``test_enclave_e2e`` whose fixture this reuses.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from enclavekit.channel import ClientIdentityKey
from enclavekit.client import AttestedClient
from enclavekit.enclave.demo import GET_NOTE, PUT_NOTE, IdentityRequired, Note, NoteKey
from enclavekit.errors import Error
from tests.test_enclave_e2e import CLI, _policy
from tests.test_enclave_e2e import stack as stack  # the fixture: an enclave process behind a relay process

SECRET = "meet at noon SECRET-5b2e"


async def test_host_cannot_read_a_users_note_through_the_relay(stack: dict[str, object]) -> None:
    url, policy = str(stack["url"]), _policy(stack)
    user = ClientIdentityKey.generate()
    async with AttestedClient.nitro(url, policy, identity=user) as client:
        await client.call(PUT_NOTE, Note(key="diary", text=SECRET))

    # The host as an anonymous client of its own relay: refused before any lookup.
    async with AttestedClient.nitro(url, policy) as host:
        with pytest.raises(IdentityRequired) as caught:
            await host.call(GET_NOTE, NoteKey(key="diary"))
        assert caught.value.code == "identity_required"
        with pytest.raises(IdentityRequired):
            await host.call(PUT_NOTE, Note(key="diary", text="overwritten by the host"))

    # The host with a key of its own: the note does not exist for it, and its write lands in its own notebook.
    async with AttestedClient.nitro(url, policy, identity=ClientIdentityKey.generate()) as host:
        with pytest.raises(Error) as missing:
            await host.call(GET_NOTE, NoteKey(key="diary"))
        assert missing.value.code == "note_not_found"
        await host.call(PUT_NOTE, Note(key="diary", text="overwritten by the host"))

    async with AttestedClient.nitro(url, policy, identity=user) as client:
        assert (await client.call(GET_NOTE, NoteKey(key="diary"))).text == SECRET

    capture = stack["capture"]
    assert isinstance(capture, Path)
    relayed = capture.read_bytes()
    assert len(relayed) > 1000, "the capture saw the sessions"
    assert SECRET.encode() not in relayed


def _demo(state: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(config), "HOME": str(config)}
    env.pop("ENCLAVEKIT_IDENTITY", None)
    return subprocess.run(
        [*CLI, "demo", *args, "--state", str(state)], capture_output=True, text=True, timeout=120, env=env
    )


def test_demo_commands_keep_the_readme_tour_and_notes_stay_with_their_writer(
    stack: dict[str, object], tmp_path: Path
) -> None:
    state = stack["state"]
    assert isinstance(state, Path)
    pcr0 = stack["pcr0"]
    assert isinstance(pcr0, bytes)
    # What `enclavekit up` writes, reduced to what `enclavekit demo` reads.
    (state / "stack.json").write_text(
        json.dumps(
            {
                "enclaves": [{"name": "demo", "pcr0": pcr0.hex()}],
                "services": {"relay_demo": {"url": stack["url"]}},
            }
        )
    )
    user, other = tmp_path / "user", tmp_path / "other"

    put = _demo(state, user, "put", "diary", SECRET)
    assert put.returncode == 0, put.stderr
    assert "created your client identity" in put.stderr
    assert stat_mode(user / "enclavekit" / "identity.key") == 0o600
    got = _demo(state, user, "get", "diary")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["result"] == {"key": "diary", "text": SECRET}
    assert "created" not in got.stderr  # the same identity, loaded

    stranger = _demo(state, other, "get", "diary")
    assert stranger.returncode == 1
    assert "note_not_found" in stranger.stderr and SECRET not in stranger.stdout + stranger.stderr


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
