"""Pinned trust anchors shipped with enclavekit."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["AWS_NITRO_ROOT_G1_SHA256", "aws_nitro_root"]

AWS_NITRO_ROOT_G1_SHA256 = bytes.fromhex("641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B")
"""SHA-256 of the DER of the AWS Nitro Enclaves Root-G1 certificate, as AWS publishes it."""


@functools.cache
def aws_nitro_root() -> bytes:
    """The DER of the AWS Nitro Enclaves root certificate, checked against its published fingerprint."""
    data = resources.files("enclavekit.attestation").joinpath("data/aws_nitro_enclaves_root_g1.pem")
    pem = data.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    if hashlib.sha256(der).digest() != AWS_NITRO_ROOT_G1_SHA256:
        raise RuntimeError("the shipped AWS Nitro root certificate does not match its pinned fingerprint")
    return der
