"""Per-user NATS credentials, enforced by the nats-server itself (accounts, users, subject permissions).

A user may publish only to ``OwnerSpace.{user}.forVault.>`` and subscribe only to ``OwnerSpace.{user}.forApp.>``;
the vault's host bridge may subscribe to every ``forVault`` and publish to every ``forApp``, and nothing else.
Requests to *another* user's vault (connections, data contracts) go on ``MessageSpace.{target}.forVault.{sender}.>``,
which only ``sender`` may publish to (so the bridge and the target vault learn an authenticated sender), and the
answers on ``MessageSpace.{sender}.forApp.{target}.>``, which only ``sender`` may subscribe to.
They all live in the ``VAULT`` account, apart from the stack's other services (account ``SERVICES``, with
JetStream, which clients that present no credentials land in: ``no_auth_user``), so vault traffic and service
traffic never mix. The server reads the file :func:`render` writes (``STATE/vault/nats-auth.conf``, mode 0600,
included by the stack's NATS configuration) and re-reads it on SIGHUP when a user is added
(:func:`add_user`). The passwords live only in that file and in each user's credentials file
(``STATE/vault/users/{user}.json``): the operator issues them; they separate users from each other, not from
the operator — the envelope does that.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from enclavekit.services.vault.objects import InvalidUser, check_user
from enclavekit.stack.files import write_private

__all__ = [
    "BRIDGE_USER",
    "RECOVERY_NOTICE",
    "SERVICES_USER",
    "Credentials",
    "add_user",
    "auth_file",
    "credentials",
    "for_app",
    "for_vault",
    "peer_for_app",
    "peer_for_vault",
    "render",
]

BRIDGE_USER: Final = "vault-bridge"
SERVICES_USER: Final = "services"


def for_vault(user: str, op: str) -> str:
    return f"OwnerSpace.{check_user(user)}.forVault.{op}"


RECOVERY_NOTICE: Final = "recovery"
"""``OwnerSpace.{user}.forApp.recovery``: where the bridge tells the user's devices that a recovery operation
was relayed (a hint without secrets; each device then asks the vault for the status)."""


def for_app(user: str, op: str) -> str:
    return f"OwnerSpace.{check_user(user)}.forApp.{op}"


def peer_for_vault(target: str, sender: str, op: str) -> str:
    """Where ``sender``'s app asks ``target``'s vault (only ``sender`` may publish here)."""
    return f"MessageSpace.{check_user(target)}.forVault.{check_user(sender)}.{op}"


def peer_for_app(sender: str, target: str, op: str) -> str:
    """Where ``target``'s vault answers ``sender``'s app (only ``sender`` may subscribe here)."""
    return f"MessageSpace.{check_user(sender)}.forApp.{check_user(target)}.{op}"


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str

    def url(self, nats_url: str) -> str:
        scheme, _, rest = nats_url.partition("://")
        return f"{scheme}://{self.user}:{self.password}@{rest}"


def auth_file(state: Path) -> Path:
    return state / "vault" / "nats-auth.conf"


def _users_dir(state: Path) -> Path:
    return state / "vault" / "users"


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid NATS config string


def credentials(state: Path, user: str) -> Credentials:
    """The credentials of ``user`` (``vault-bridge`` and ``services`` included), issued on first use."""
    if user not in (BRIDGE_USER, SERVICES_USER):
        check_user(user)
    path = _users_dir(state) / f"{user}.json"
    try:
        raw = json.loads(path.read_text())
        return Credentials(str(raw["user"]), str(raw["password"]))
    except FileNotFoundError:
        pass
    issued = Credentials(user, secrets.token_urlsafe(24))
    write_private(path, json.dumps({"user": issued.user, "password": issued.password}).encode())
    return issued


def _user_entry(who: Credentials, publish: list[str], subscribe: list[str]) -> str:
    def subjects(names: list[str]) -> str:
        return ", ".join(_quote(name) for name in names)

    permissions = f"{{publish: [{subjects(publish)}], subscribe: [{subjects(subscribe)}]}}"
    return f"{{user: {_quote(who.user)}, password: {_quote(who.password)}, permissions: {permissions}}}"


def is_user(name: str) -> bool:
    try:
        check_user(name)
    except InvalidUser:
        return False
    return True


def render(state: Path) -> Path:
    """Write the authorization file for every issued credential; returns its path."""
    bridge = credentials(state, BRIDGE_USER)
    services = credentials(state, SERVICES_USER)
    users = [
        _user_entry(
            bridge,
            ["OwnerSpace.*.forApp.>", "MessageSpace.*.forApp.>"],
            ["OwnerSpace.*.forVault.>", "MessageSpace.*.forVault.>"],
        )
    ]
    for path in sorted(_users_dir(state).glob("*.json")):
        if path.stem not in (BRIDGE_USER, SERVICES_USER) and is_user(path.stem):  # another file there is no user
            person = credentials(state, path.stem)
            publish = [for_vault(person.user, ">"), f"MessageSpace.*.forVault.{person.user}.>"]
            subscribe = [for_app(person.user, ">"), f"MessageSpace.{person.user}.forApp.>"]
            users.append(_user_entry(person, publish, subscribe))
    service_user = f"{{user: {_quote(services.user)}, password: {_quote(services.password)}}}"
    text = (
        "# written by enclavekit (services/vault/nats_auth.py); re-read on SIGHUP\n"
        "accounts {\n"
        f"  SERVICES: {{ jetstream: enabled, users: [{service_user}] }}\n"
        "  VAULT: { users: [\n    " + ",\n    ".join(users) + "\n  ] }\n"
        "}\n"
        f"no_auth_user: {_quote(services.user)}\n"
    )
    path = auth_file(state)
    write_private(path, text.encode())
    return path


def add_user(state: Path, user: str, *, server_pid: int | None = None) -> Credentials:
    """Issue ``user``'s credentials, rewrite the file and (given the server's pid) make it reload."""
    issued = credentials(state, user)
    render(state)
    if server_pid is not None:
        os.kill(server_pid, signal.SIGHUP)
    return issued
