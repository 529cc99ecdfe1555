"""The baseline of ``benchmarks/cli_startup.py``: verify one Nitro document with cryptography + cbor2 only.

    python benchmarks/baselines/nitro_verify_plain.py DOC ROOT_DER

COSE_Sign1 (ES384) over the payload, the certificate chain from the pinned root to the leaf at the
document's own timestamp, nothing else (no policy, no report). Exit 0 when valid, 1 when not.
"""

import itertools
import sys
from datetime import UTC, datetime
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def verify(document: bytes, root_der: bytes) -> dict[str, object]:
    item = cbor2.loads(document)
    if isinstance(item, cbor2.CBORTag):
        item = item.value
    protected, _unprotected, payload, signature = item
    if cbor2.loads(protected) != {1: -35}:
        raise ValueError("not ES384")
    doc = cbor2.loads(payload)
    leaf = x509.load_der_x509_certificate(doc["certificate"])
    intermediates = [x509.load_der_x509_certificate(c) for c in doc["cabundle"][1:]]
    root = x509.load_der_x509_certificate(root_der)
    at = datetime.fromtimestamp(doc["timestamp"] / 1000, UTC)
    chain = [root, *intermediates, leaf]  # cabundle[0] is the root: pinned, so compared by its bytes
    if doc["cabundle"][0] != root_der:
        raise ValueError("chain does not start at the pinned root")
    for issuer, subject in itertools.pairwise(chain):
        subject.verify_directly_issued_by(issuer)
    for cert in chain:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise ValueError(f"certificate {cert.subject.rfc4514_string()} not valid at {at}")
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    public_key = leaf.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("leaf key is not EC")
    public_key.verify(encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA384()))
    return {"module_id": doc["module_id"], "pcr0": doc["pcrs"][0].hex(), "timestamp": at.isoformat()}


def main() -> int:
    document, root_der = Path(sys.argv[1]).read_bytes(), Path(sys.argv[2]).read_bytes()
    try:
        facts = verify(document, root_der)
    except Exception as exc:
        print(f"INVALID: {exc}")
        return 1
    print(f"VALID {facts['module_id']} PCR0 {facts['pcr0']} at {facts['timestamp']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
