"""The identity key store: a file only its owner can read, garbage refused by name, never overwritten by accident.

Real files and the real ``enclavekit identity`` command in a subprocess; HOME and XDG_CONFIG_HOME point into the
test's temporary folder so no test touches the user's real identity.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from enclavekit.client import identity as store

CLI = [sys.executable, "-m", "enclavekit.cli"]


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(store.ENV_VAR, raising=False)


def test_new_identity_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    key = store.create()
    path = tmp_path / "config" / "enclavekit" / "identity.key"
    assert store.default_path() == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert store.load().public_key == key.public_key


def test_existing_identity_is_never_overwritten_silently(tmp_path: Path) -> None:
    first = store.create()
    with pytest.raises(store.IdentityExists):
        store.create()
    assert store.load().public_key == first.public_key
    replaced = store.create(overwrite=True)
    assert store.load().public_key == replaced.public_key != first.public_key
    assert stat.S_IMODE(store.default_path().stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_identity_readable_by_others_is_refused(mode: int) -> None:
    store.create()
    store.default_path().chmod(mode)
    with pytest.raises(store.IdentityFileInsecure) as caught:
        store.load()
    assert caught.value.code == "identity_file_insecure"


def test_identity_behind_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.key"
    store.create(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(store.IdentityFileInsecure):
        store.load(link)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"A" * (store.MAX_IDENTITY_FILE_SIZE + 1),
        generate_private_key(SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
    ],
    ids=["empty", "text", "bad-pem", "oversized", "p256-key"],
)
def test_garbage_identity_file_is_refused_by_name(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(store.IdentityFileInvalid) as caught:
        store.load(path)
    assert caught.value.code == "identity_file_invalid"


def test_missing_identity_is_not_found_and_load_or_create_makes_one(tmp_path: Path) -> None:
    with pytest.raises(store.IdentityNotFound):
        store.load()
    key, created = store.load_or_create()
    assert created
    again, created_again = store.load_or_create()
    assert not created_again and again.public_key == key.public_key


def test_environment_variable_names_the_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store.ENV_VAR, str(tmp_path / "elsewhere" / "me.key"))
    key = store.create()
    assert (tmp_path / "elsewhere" / "me.key").exists()
    assert store.load(tmp_path / "elsewhere" / "me.key").public_key == key.public_key


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ))


def test_cli_new_then_show_prints_the_same_public_key(tmp_path: Path) -> None:
    made = _cli("identity", "new")
    assert made.returncode == 0, made.stderr
    shown = _cli("identity", "show")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["public_key"] == json.loads(made.stdout)["public_key"]
    assert len(bytes.fromhex(json.loads(shown.stdout)["public_key"])) == 32
    again = _cli("identity", "new")
    assert again.returncode == 1 and "identity_exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_cli_show_without_an_identity_says_how_to_make_one(tmp_path: Path) -> None:
    shown = _cli("identity", "show", "--identity", str(tmp_path / "none.key"))
    assert shown.returncode == 1
    assert "identity_not_found" in shown.stderr and "enclavekit identity new" in shown.stderr
