"""AWS Signature Version 4 for a request with a body and no query string (what every KMS call is).

Private: :class:`enclavekit.kms.endpoint.KmsEndpoint` is its only user. Checked against AWS's published test
vector (``get-vanilla``) and against botocore's own signer (``tests/test_kms_endpoint.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping

__all__ = ["ALGORITHM", "authorization"]

ALGORITHM = "AWS4-HMAC-SHA256"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def authorization(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    service: str,
    region: str,
    access_key_id: str,
    secret_access_key: str,
) -> str:
    """The ``Authorization`` header for the request; ``headers`` (all signed) must hold ``host`` and
    ``x-amz-date`` (``YYYYMMDDTHHMMSSZ``), and ``x-amz-security-token`` with temporary credentials."""
    canonical = {name.lower(): re.sub(r"\s+", " ", value.strip()) for name, value in headers.items()}
    amz_date = canonical["x-amz-date"]
    signed = ";".join(sorted(canonical))
    canonical_request = "\n".join(
        [
            method,
            path,
            query,
            "".join(f"{name}:{canonical[name]}\n" for name in sorted(canonical)),
            signed,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = _hmac(("AWS4" + secret_access_key).encode(), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
