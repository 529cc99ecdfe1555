"""docs/wire-session.md's version 2 (client identity) test vector is what the code produces, byte for byte.

The inputs are version 1's (``tests/test_channel_vector.py``) plus the client's identity seed, RFC 8032 §7.1
test 3. Regenerate the document's block after a deliberate format change with
``.venv/bin/python tests/test_channel_identity_vector.py`` (and bump the protocol version).
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclavekit.channel import ClientIdentityKey, Initiator, Responder, SessionKeys
from enclavekit.channel.handshake import identity_proof_message, open_identity, transcript_hash
from enclavekit.channel.keys import verify_identity_proof
from enclavekit.channel.schedule import confirmation, hpke_info, initiator_secrets, sha256
from enclavekit.channel.testing import UnsafeTestAttester, UnsafeTestVerifier
from enclavekit.channel.wire import ClientFinish, ServerHello, identity_key_field
from tests.test_channel_vector import INPUTS as V1_INPUTS
from tests.test_channel_vector import NOW, _fixed, render

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-session.md"
H = bytes.fromhex

INPUTS: dict[str, bytes] = {
    **V1_INPUTS,
    "client_identity_seed": H("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7"),
}


def compute() -> dict[str, bytes]:
    """Run a version 2 fresh-mode handshake with a client identity, and one record each way."""
    attester = UnsafeTestAttester(
        Ed25519PrivateKey.from_private_bytes(INPUTS["attester_ed25519_seed"]),
        measurement=INPUTS["measurement"],
        clock=lambda: NOW,
    )
    keys = SessionKeys.from_private_bytes(INPUTS["responder_x25519_private"], INPUTS["responder_ed25519_seed"])
    identity = ClientIdentityKey.from_private_bytes(INPUTS["client_identity_seed"])
    responder = Responder(keys, attester, random=_fixed(INPUTS["server_random"]))
    initiator = Initiator(
        UnsafeTestVerifier(attester.root, measurements=(INPUTS["measurement"],)),
        random=_fixed(INPUTS["client_nonce"], INPUTS["ephemeral_seed"]),
        identity=identity,
    )
    client, client_hello = initiator.start(now=NOW)
    server, server_hello = responder.accept(client_hello, now=NOW)
    client_finish, client_session = client.finish(server_hello, now=NOW)
    server_session = server.finish(client_finish, now=NOW)
    assert server_session.client_key == identity.public_key

    document = ServerHello.from_bytes(server_hello).document
    info = hpke_info(2, client_hello, server_hello, document)
    enc, secrets = initiator_secrets(keys.bound.kem_public_key, info, INPUTS["ephemeral_seed"])
    transcript = transcript_hash(2, client_hello, server_hello, enc, identity.public_key)
    finish = ClientFinish.from_bytes(client_finish)
    assert finish.enc == enc and finish.confirm == confirmation(secrets.finished, transcript)
    aad = sha256(client_hello + server_hello + enc)
    opened = open_identity(secrets.identity, aad, finish.sealed_identity)
    assert opened.public_key == identity.public_key
    assert verify_identity_proof(identity.public_key, opened.proof, identity_proof_message(transcript))
    out = {
        "client_identity_public": identity.public_key,
        "client_hello": client_hello,
        "server_hello": server_hello,
        "hpke_info": info,
        "enc": enc,
        "c2s_secret": secrets.c2s,
        "s2c_secret": secrets.s2c,
        "finished_key": secrets.finished,
        "session_id": secrets.session_id,
        "identity_key": secrets.identity,
        "identity_key_field": identity_key_field(identity.public_key),
        "transcript_hash": transcript,
        "identity_proof": opened.proof,
        "identity_aad": aad,
        "sealed_identity": finish.sealed_identity,
        "client_finish": client_finish,
        "c2s_record_0": client_session.seal(b"ping", now=NOW),
        "s2c_record_0": server_session.seal(b"pong", now=NOW),
    }
    assert server_session.open(out["c2s_record_0"], now=NOW) == b"ping"
    assert client_session.open(out["s2c_record_0"], now=NOW) == b"pong"
    return out


def _blocks(text: str) -> dict[str, dict[str, bytes]]:
    found: dict[str, dict[str, bytes]] = {}
    for match in re.finditer(r"<!-- vector-v2:(\w+):begin -->\s*```text\n(.*?)```", text, re.S):
        values: dict[str, str] = {}
        current = ""
        for line in match.group(2).splitlines():
            if not line.strip():
                continue
            if line[0].isspace():
                values[current] += line.strip()
            else:
                current, _, digits = line.partition(" ")
                values[current] = digits.strip()
        found[match.group(1)] = {name: bytes.fromhex(digits) for name, digits in values.items()}
    return found


def test_identity_vector_inputs_in_the_document_are_the_tests_inputs() -> None:
    assert _blocks(DOC.read_text())["inputs"] == INPUTS


def test_identity_vector_outputs_in_the_document_are_what_the_code_produces() -> None:
    assert _blocks(DOC.read_text())["outputs"] == compute()


def test_identity_vector_public_key_is_rfc_8032_test_3() -> None:
    assert compute()["client_identity_public"] == H("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025")


if __name__ == "__main__":
    print("<!-- vector-v2:inputs:begin -->\n```text")
    print(render(INPUTS))
    print("```\n<!-- vector-v2:inputs:end -->\n\n<!-- vector-v2:outputs:begin -->\n```text")
    print(render(compute()))
    print("```\n<!-- vector-v2:outputs:end -->")
