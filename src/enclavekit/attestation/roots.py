"""Pinned trust anchors shipped with enclavekit."""

from __future__ import annotations

import base64
import functools
import hashlib
from pathlib import Path

__all__ = ["AWS_NITRO_ROOT_G1_SHA256", "aws_nitro_root"]

AWS_NITRO_ROOT_G1_SHA256 = bytes.fromhex("641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B")
"""SHA-256 of the DER of the AWS Nitro Enclaves Root-G1 certificate, as AWS publishes it."""


@functools.cache
def aws_nitro_root() -> bytes:
    """The DER of the AWS Nitro Enclaves root certificate, checked against its published fingerprint."""
    # The PEM's base64 body is the DER; the pinned fingerprint below is what makes it the right certificate.
    # Read beside this module, not through importlib.resources or a certificate parser: `enclavekit verify DOC`
    # pays for every import, and those two cost more than the whole check (issue #12).
    pem = (Path(__file__).parent / "data" / "aws_nitro_enclaves_root_g1.pem").read_text("ascii")
    body = pem.split("-----BEGIN CERTIFICATE-----", 1)[-1].split("-----END CERTIFICATE-----", 1)[0]
    der = base64.b64decode("".join(body.split()), validate=True)
    if hashlib.sha256(der).digest() != AWS_NITRO_ROOT_G1_SHA256:
        raise RuntimeError("the shipped AWS Nitro root certificate does not match its pinned fingerprint")
    return der
