"""docs/wire-session.md's test vector is what the code produces, byte for byte.

Fixed keys, nonces and randomness (RFC 9180 A.2.1's receiver key and ephemeral seed, RFC 8032's Ed25519 test
keys) go in; every message, secret and record comes out. Regenerate the document's block after a deliberate
format change with ``.venv/bin/python tests/test_channel_vector.py`` (and bump the protocol version).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.channel import Initiator, Responder, SessionKeys
from enclavekit.channel.handshake import binding_user_data
from enclavekit.channel.schedule import hpke_info, initiator_secrets
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.channel.wire import ClientFinish, ServerHello

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-session.md"
H = bytes.fromhex

INPUTS: dict[str, bytes] = {
    "responder_x25519_private": H("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb"),
    "responder_ed25519_seed": H("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"),
    "attester_ed25519_seed": H("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"),
    "measurement": bytes(range(32)),
    "client_nonce": bytes(range(0x40, 0x60)),
    "server_random": bytes(range(0x60, 0x80)),
    "ephemeral_seed": H("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b"),
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _fixed(*chunks: bytes) -> Callable[[int], bytes]:
    queue: Iterator[bytes] = iter(chunks)

    def random(size: int) -> bytes:
        chunk = next(queue)
        assert len(chunk) == size
        return chunk

    return random


def compute() -> dict[str, bytes]:
    """Run the fresh-mode handshake and a few records from :data:`INPUTS`; return every named byte string."""
    attester = UnsafeTestAttester(
        Ed25519PrivateKey.from_private_bytes(INPUTS["attester_ed25519_seed"]),
        measurement=INPUTS["measurement"],
        clock=lambda: NOW,
    )
    keys = SessionKeys.from_private_bytes(INPUTS["responder_x25519_private"], INPUTS["responder_ed25519_seed"])
    responder = Responder(keys, attester, random=_fixed(INPUTS["server_random"]))
    initiator = Initiator(
        UnsafeTestVerifier(attester.root, measurements=(INPUTS["measurement"],)),
        random=_fixed(INPUTS["client_nonce"], INPUTS["ephemeral_seed"]),
        versions=(1,),  # the version 1 vector; version 2 (client identity) has its own, test_channel_identity_vector
    )
    client, client_hello = initiator.start(now=NOW)
    server, server_hello = responder.accept(client_hello, now=NOW)
    client_finish, client_session = client.finish(server_hello, now=NOW)
    server_session = server.finish(client_finish, now=NOW)
    parsed = ServerHello.from_bytes(server_hello)
    info = hpke_info(1, client_hello, server_hello, parsed.document)
    enc, secrets = initiator_secrets(keys.bound.kem_public_key, info, INPUTS["ephemeral_seed"])
    assert enc == ClientFinish.from_bytes(client_finish).enc
    out = {
        "bound_public_key": keys.public_bytes,
        "client_hello": client_hello,
        "binding": parsed.binding.to_bytes(),
        "document_user_data": binding_user_data(parsed.binding),
        "document": parsed.document,
        "server_hello": server_hello,
        "hpke_info": info,
        "enc": enc,
        "c2s_secret": secrets.c2s,
        "s2c_secret": secrets.s2c,
        "finished_key": secrets.finished,
        "session_id": secrets.session_id,
        "client_finish": client_finish,
        "c2s_record_0": client_session.seal(b"ping", now=NOW),
        "s2c_record_0": server_session.seal(b"pong", now=NOW),
        "c2s_record_1_key_update": client_session.update_keys(now=NOW),
        "c2s_record_2": client_session.seal(b"after key update", now=NOW),
        "c2s_record_3_close": client_session.close(),
    }
    for name in ("c2s_record_0", "c2s_record_1_key_update", "c2s_record_2", "c2s_record_3_close"):
        server_session.open(out[name], now=NOW)
    assert client_session.open(out["s2c_record_0"], now=NOW) == b"pong"
    return out


def render(values: dict[str, bytes]) -> str:
    """The vector as the document shows it: ``name`` then the hex, 64 digits per line."""
    lines = []
    for name, value in values.items():
        digits = value.hex()
        chunks = [digits[i : i + 64] for i in range(0, len(digits), 64)] or [""]
        lines.append(f"{name:<26}{chunks[0]}")
        lines.extend(f"{'':<26}{chunk}" for chunk in chunks[1:])
    return "\n".join(lines)


def parse(text: str) -> dict[str, bytes]:
    block = re.search(r"<!-- vector:(\w+):begin -->\s*```text\n(.*?)```", text, re.S)
    assert block is not None
    values: dict[str, str] = {}
    current = ""
    for line in block.group(2).splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            values[current] += line.strip()
        else:
            current, _, digits = line.partition(" ")
            values[current] = digits.strip()
    return {name: bytes.fromhex(digits) for name, digits in values.items()}


def _blocks(text: str) -> dict[str, dict[str, bytes]]:
    found = {}
    for match in re.finditer(r"<!-- vector:(\w+):begin -->\s*```text\n(.*?)```", text, re.S):
        found[match.group(1)] = parse(match.group(0))
    return found


def test_inputs_in_the_document_are_the_tests_inputs() -> None:
    assert _blocks(DOC.read_text())["inputs"] == INPUTS


def test_outputs_in_the_document_are_what_the_code_produces() -> None:
    assert _blocks(DOC.read_text())["outputs"] == compute()


def test_vector_reuses_the_rfc_9180_ephemeral_key() -> None:
    assert compute()["enc"] == H("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a")


if __name__ == "__main__":
    print("<!-- vector:inputs:begin -->\n```text")
    print(render(INPUTS))
    print("```\n<!-- vector:inputs:end -->\n\n<!-- vector:outputs:begin -->\n```text")
    print(render(compute()))
    print("```\n<!-- vector:outputs:end -->")
