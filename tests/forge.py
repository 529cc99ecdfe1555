"""An attacker's toolkit: certificate chains and COSE documents made with keys the attacker owns.

Used to prove the verifier refuses what a capable forger could produce (same names as AWS, valid signatures
under the wrong root, re-signed tampered payloads).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from enclavekit.attestation.cose import ES384_PROTECTED, sig_structure, sign_es384


@dataclass
class Chain:
    keys: list[ec.EllipticCurvePrivateKey]
    certs: list[x509.Certificate]  # root first, leaf last

    @property
    def ders(self) -> list[bytes]:
        return [c.public_bytes(Encoding.DER) for c in self.certs]

    @property
    def root_der(self) -> bytes:
        return self.ders[0]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])


def make_chain(
    now: datetime,
    *,
    names: list[x509.Name] | None = None,
    depth: int = 5,
    leaf_is_ca: bool = False,
    pathlens: list[int | None] | None = None,
    lifetime: timedelta = timedelta(hours=3),
) -> Chain:
    """A root..leaf chain of P-384 certificates shaped like AWS's, all valid around ``now``."""
    names = names or [_name(f"forged-{i}") for i in range(depth)]
    pathlens = pathlens or [None, 2, 1, 0][: depth - 1] + [None] * max(0, depth - 5)
    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in names]
    certs: list[x509.Certificate] = []
    for i, name in enumerate(names):
        is_leaf = i == len(names) - 1
        issuer_name = names[i - 1] if i else name
        issuer_key = keys[i - 1] if i else keys[i]
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer_name)
            .public_key(keys[i].public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - lifetime / 2)
            .not_valid_after(now + lifetime / 2)
        )
        if is_leaf and not leaf_is_ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            usage = {"digital_signature": True, "key_cert_sign": False, "crl_sign": False}
        else:
            builder = builder.add_extension(
                x509.BasicConstraints(ca=True, path_length=pathlens[i] if i < len(pathlens) else None), critical=True
            )
            usage = {"digital_signature": True, "key_cert_sign": True, "crl_sign": True}
        builder = builder.add_extension(
            x509.KeyUsage(
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
        certs.append(builder.sign(issuer_key, hashes.SHA384()))
    return Chain(keys, certs)


def sign_document(
    payload: dict[str, Any], key: ec.EllipticCurvePrivateKey, *, protected: bytes = ES384_PROTECTED
) -> bytes:
    """A COSE_Sign1 document over ``payload`` signed with ``key``."""
    encoded = cbor2.dumps(payload)
    signature = sign_es384(key, sig_structure(protected, encoded))
    return cbor2.dumps([protected, {}, encoded, signature])


def payload_for(chain: Chain, timestamp: datetime, **fields: Any) -> dict[str, Any]:
    pcrs = {i: bytes(48) for i in range(16)}
    pcrs[0] = b"\x11" * 48
    pcrs[1] = b"\x22" * 48
    pcrs[2] = b"\x33" * 48
    payload: dict[str, Any] = {
        "module_id": "i-0123456789abcdef0-enc0123456789abcdef",
        "digest": "SHA384",
        "timestamp": int(timestamp.timestamp() * 1000),
        "pcrs": pcrs,
        "certificate": chain.ders[-1],
        "cabundle": chain.ders[:-1],
        "public_key": None,
        "user_data": None,
        "nonce": None,
    }
    payload.update(fields)
    return payload
