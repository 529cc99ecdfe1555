"""A client's long-term identity key in a file: create it once, load it for every session.

The key is an Ed25519 private key in an unencrypted PKCS#8 PEM file that only its owner can read (mode 0600,
in a 0700 folder). Where it lives, first match wins:

1. the ``path`` a caller passes (the CLI's ``--identity``);
2. ``$ENCLAVEKIT_IDENTITY``;
3. ``$XDG_CONFIG_HOME/enclavekit/identity.key``, else ``~/.config/enclavekit/identity.key``.

It is per user, not per stack (not under ``--state``): it is who the user *is* to every enclave, and a
stack's state folder is thrown away more often than a user's identity should be. Loading refuses a file that
others can read or that is not the owner's (``identity_file_insecure``), a file over 4 KiB or not an Ed25519
key (``identity_file_invalid``), and a missing one (``identity_not_found``). Creating never overwrites unless
asked (``identity_exists``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from enclavekit.channel.keys import ClientIdentityKey
from enclavekit.errors import ConfigurationError

__all__ = [
    "ENV_VAR",
    "MAX_IDENTITY_FILE_SIZE",
    "IdentityExists",
    "IdentityFileInsecure",
    "IdentityFileInvalid",
    "IdentityNotFound",
    "create",
    "default_path",
    "load",
    "load_or_create",
]

ENV_VAR: Final = "ENCLAVEKIT_IDENTITY"
MAX_IDENTITY_FILE_SIZE: Final = 4096
"""A PKCS#8 PEM Ed25519 key is 119 bytes; anything much larger is not one."""


class IdentityNotFound(ConfigurationError):
    """No identity key file at the path (create one with ``enclavekit identity new``)."""

    code = "identity_not_found"


class IdentityExists(ConfigurationError):
    """An identity key file already exists where a new one was to be created (it is never overwritten silently)."""

    code = "identity_exists"


class IdentityFileInsecure(ConfigurationError):
    """The identity key file can be read by others, or is not owned by this user, or is not a regular file."""

    code = "identity_file_insecure"


class IdentityFileInvalid(ConfigurationError):
    """The identity key file is not an unencrypted PKCS#8 PEM Ed25519 private key of a sane size."""

    code = "identity_file_invalid"


def default_path() -> Path:
    """Where the identity lives when no path is given: ``$ENCLAVEKIT_IDENTITY`` or the user's config folder."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "enclavekit" / "identity.key"


def _pem(key: ClientIdentityKey) -> bytes:
    return key.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def create(path: Path | None = None, *, overwrite: bool = False) -> ClientIdentityKey:
    """Generate a new identity and write it to ``path`` (mode 0600; its folder 0700 when created here).

    Raises :class:`IdentityExists` when the file exists and ``overwrite`` is false.
    """
    path = default_path() if path is None else path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ClientIdentityKey.generate()
    data = _pem(key)
    if not overwrite:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise IdentityExists(f"an identity already exists at {path}") from None
        _write_all(fd, data, path)
        return key
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    _write_all(fd, data, temporary)
    temporary.replace(path)
    return key


def _write_all(fd: int, data: bytes, path: Path) -> None:
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def load(path: Path | None = None) -> ClientIdentityKey:
    """Read the identity at ``path`` (default :func:`default_path`), refusing a file others could read."""
    path = default_path() if path is None else path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise IdentityNotFound(f"no identity at {path} (create one with `enclavekit identity new`)") from None
    except OSError as exc:  # ELOOP: a symbolic link, which O_NOFOLLOW refuses
        raise IdentityFileInsecure(f"cannot open {path} safely: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise IdentityFileInsecure(f"{path} is not a regular file")
        if info.st_uid != os.getuid():
            raise IdentityFileInsecure(f"{path} belongs to another user")
        if info.st_mode & 0o077:
            raise IdentityFileInsecure(
                f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; others must not read it (chmod 600)"
            )
        data = file.read(MAX_IDENTITY_FILE_SIZE + 1)
    if len(data) > MAX_IDENTITY_FILE_SIZE:
        raise IdentityFileInvalid(f"{path} is over {MAX_IDENTITY_FILE_SIZE} bytes: not an identity key")
    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityFileInvalid(f"{path} is not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise IdentityFileInvalid(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
    return ClientIdentityKey(private)


def load_or_create(path: Path | None = None) -> tuple[ClientIdentityKey, bool]:
    """The identity at ``path``, created first if there is none. Returns ``(key, created)``."""
    try:
        return load(path), False
    except IdentityNotFound:
        pass
    try:
        return create(path), True
    except IdentityExists:  # created by another process in between
        return load(path), False
