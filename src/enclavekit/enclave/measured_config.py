"""What every enclave app's measured configuration shares: the error, the canonical bytes, strict objects, KMS
names, and the launch-settings allow-list.

An app's configuration file is measured with its image (PCR0, see :func:`enclavekit.enclave.runtime.image_files`),
so whatever decides where plaintext may go or whom the enclave trusts lives there. Launch settings (``--set``) are
host-supplied: an app accepts only the few that choose routes for ciphertext, and refuses any other at boot
(:func:`check_launch_settings`) rather than ignoring it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from enclavekit.errors import ConfigurationError

__all__ = [
    "AWS_REGION",
    "KMS_KEY_ID",
    "ForbiddenLaunchSetting",
    "InvalidEnclaveConfig",
    "canonical",
    "check_launch_settings",
    "config_object",
    "operator_keys",
    "parse_json_document",
]

KMS_KEY_ID: Final = re.compile(r"^[A-Za-z0-9:/_\-.]{1,2048}$")
"""A KMS key id, alias or ARN."""
AWS_REGION: Final = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$")
"""An AWS region name."""
MAX_SETTINGS: Final = 32
MAX_OPERATOR_KEYS: Final = 16
_RAW_ED25519_HEX: Final = re.compile(r"[0-9a-f]{64}")


class InvalidEnclaveConfig(ConfigurationError):
    """The measured configuration file is malformed: the enclave refuses to boot rather than guess."""

    code = "invalid_enclave_config"


class ForbiddenLaunchSetting(ConfigurationError):
    """A host launch setting the app does not accept (it would decide trust, or it is unknown): boot is refused."""

    code = "forbidden_launch_setting"


def canonical(document: dict[str, Any]) -> bytes:
    """The canonical bytes of a configuration document (sorted keys, no spaces): what is written and measured."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def parse_json_document(data: bytes, *, what: str, max_bytes: int) -> Any:
    """The JSON value in ``data`` (at most ``max_bytes``); :class:`InvalidEnclaveConfig` for anything else."""
    if not isinstance(data, bytes) or len(data) > max_bytes:
        raise InvalidEnclaveConfig(f"the {what} configuration must be at most {max_bytes} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidEnclaveConfig(f"the {what} configuration is not JSON ({type(exc).__name__})") from exc


def config_object(value: Any, name: str, allowed: set[str] | frozenset[str]) -> dict[str, Any]:
    """``value`` as a JSON object with no field outside ``allowed`` (unknown fields are refused, never ignored)."""
    if not isinstance(value, dict):
        raise InvalidEnclaveConfig(f"{name} must be an object")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InvalidEnclaveConfig(f"{name}: unknown field {unknown[0][:64]!r}")
    return value


def check_launch_settings(settings: Mapping[str, str], allowed: Iterable[str], *, app: str) -> None:
    """Refuse (:class:`ForbiddenLaunchSetting`) any launch setting outside ``allowed``: a host setting the app
    does not take is an attempt to steer it (e.g. an old trust-deciding setting), not something to ignore."""
    permitted = frozenset(allowed)
    if len(settings) > MAX_SETTINGS:
        raise ForbiddenLaunchSetting(f"{app}: more than {MAX_SETTINGS} launch settings")
    refused = sorted(key for key in settings if key not in permitted)
    if refused:
        raise ForbiddenLaunchSetting(
            f"{app}: launch setting {refused[0][:64]!r} is not accepted (trust is decided by the measured "
            f"configuration; allowed: {', '.join(sorted(permitted))})"
        )


def operator_keys(value: Any) -> tuple[bytes, ...]:
    """The ``operator_keys`` field of a configuration: at most ``MAX_OPERATOR_KEYS`` raw Ed25519 public keys, each
    64 lower-case hex digits, none twice (absent = none)."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_OPERATOR_KEYS:
        raise InvalidEnclaveConfig(f"operator_keys must be a list of at most {MAX_OPERATOR_KEYS} keys")
    keys: list[bytes] = []
    for item in value:
        if not isinstance(item, str) or not _RAW_ED25519_HEX.fullmatch(item):
            raise InvalidEnclaveConfig("an operator key is 64 lower-case hex digits (raw Ed25519 public key)")
        keys.append(bytes.fromhex(item))
    if len(set(keys)) != len(keys):
        raise InvalidEnclaveConfig("operator_keys lists a key twice")
    return tuple(keys)
