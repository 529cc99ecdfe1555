"""X.509 chains of ECDSA P-384 certificates to a pinned root, as AWS Nitro issues them.

The chain is walked from the pinned root down to the leaf. For each link the issuer must be a CA allowed to
sign certificates (basicConstraints, keyUsage, pathLenConstraint), the names must chain, and the signature
(ECDSA with SHA-384) must verify with the issuer's key. Every certificate must be valid at ``now``.

Signature checks dominate the cost, so a verified link is cached: the key is the digest of the whole path
from the root to that certificate (the same certificate under another issuer is a different entry), and an
entry is dropped once its certificate has expired. Validity at ``now`` is checked on every call, cached or
not, so a cache hit never widens what is accepted.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from enclavekit.attestation.errors import (
    CertificateExpired,
    CertificateNotYetValid,
    ChainUntrusted,
    Malformed,
    UnsupportedAlgorithm,
)

__all__ = ["ChainVerifier", "VerifiedChain", "load_certificate"]

MAX_CHAIN_LENGTH = 8
"""Certificates from root to leaf, inclusive. Nitro chains have five."""


def load_certificate(der: bytes, what: str) -> x509.Certificate:
    """Parse one DER certificate, or raise :class:`Malformed`."""
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise Malformed(f"{what}: not a DER X.509 certificate ({exc})") from exc


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    """A chain whose signatures and path rules held; validity at ``now`` was checked for every member."""

    certificates: tuple[x509.Certificate, ...]  # root first, leaf last
    ders: tuple[bytes, ...]
    leaf_key: ec.EllipticCurvePublicKey
    root_subject: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[-1]


@dataclass(frozen=True, slots=True)
class _Link:
    certificate: x509.Certificate
    key: ec.EllipticCurvePublicKey
    path_digest: bytes
    # may this certificate issue certificates (basicConstraints CA and keyUsage keyCertSign)?
    issues_certificates: bool
    # how many more CA certificates may follow below this one (None: unlimited)
    remaining_path: int | None


def _constraints(cert: x509.Certificate) -> tuple[x509.BasicConstraints | None, x509.KeyUsage | None]:
    """basicConstraints and keyUsage, read in one pass over the extensions."""
    basic: x509.BasicConstraints | None = None
    usage: x509.KeyUsage | None = None
    for extension in cert.extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints):
            basic = value
        elif isinstance(value, x509.KeyUsage):
            usage = value
    return basic, usage


def _p384_key(cert: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise UnsupportedAlgorithm(f"{what}: key is not ECDSA P-384")
    return key


class ChainVerifier:
    """Verifies chains to a fixed set of root certificates, caching verified links.

    Thread-safe. ``roots`` are DER certificates trusted as given (pin them before passing them here).
    """

    def __init__(self, roots: Sequence[bytes], *, cache_size: int = 4096) -> None:
        if not roots:
            raise ValueError("a chain verifier needs at least one trusted root")
        self._roots: dict[bytes, _Link] = {}
        for der in roots:
            cert = load_certificate(der, "trusted root")
            key = _p384_key(cert, "trusted root")
            digest = hashlib.sha256(der).digest()
            bc, ku = _constraints(cert)
            issues = bc is not None and bc.ca and ku is not None and ku.key_cert_sign
            self._roots[der] = _Link(cert, key, digest, issues, None if bc is None else bc.path_length)
        self._root_subjects = {der: link.certificate.subject.rfc4514_string() for der, link in self._roots.items()}
        self._cache: OrderedDict[bytes, _Link] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def verify(
        self, intermediates: Sequence[bytes], leaf: bytes, *, root: bytes | None = None, now: datetime
    ) -> VerifiedChain:
        """Verify ``leaf`` through ``intermediates`` (top-down, the root excluded) to a trusted root.

        ``root`` names which trusted root to start from; by default the first one whose subject issued the
        top intermediate.
        """
        ders = (*intermediates, leaf)
        if len(ders) + 1 > MAX_CHAIN_LENGTH:
            raise Malformed(f"certificate chain of {len(ders) + 1} is longer than {MAX_CHAIN_LENGTH}")
        parent = self._select_root(ders[0], root)
        links = [parent]
        for depth, der in enumerate(ders):
            is_leaf = depth == len(ders) - 1
            what = "leaf certificate" if is_leaf else f"intermediate certificate {depth + 1}"
            parent = self._link(parent, der, is_leaf=is_leaf, what=what)
            links.append(parent)
        for index, link in enumerate(links):
            what = (
                "root certificate"
                if index == 0
                else ("leaf certificate" if index == len(links) - 1 else f"intermediate certificate {index}")
            )
            _check_validity(link.certificate, now, what)
        root_der = next(d for d, link in self._roots.items() if link is links[0])
        return VerifiedChain(
            tuple(link.certificate for link in links), (root_der, *ders), links[-1].key, self._root_subjects[root_der]
        )

    def _select_root(self, top: bytes, wanted: bytes | None) -> _Link:
        if wanted is not None:
            link = self._roots.get(wanted)
            if link is None:
                raise ChainUntrusted("the requested root is not trusted")
            return link
        if len(self._roots) == 1:
            return next(iter(self._roots.values()))
        try:
            issuer = load_certificate(top, "intermediate certificate 1").issuer
        except ValueError as exc:
            raise Malformed(f"intermediate certificate 1: unusable issuer name ({exc})") from exc
        for link in self._roots.values():
            if link.certificate.subject == issuer:
                return link
        raise ChainUntrusted(f"no trusted root named {issuer.rfc4514_string()}")

    def _link(self, parent: _Link, der: bytes, *, is_leaf: bool, what: str) -> _Link:
        # The role is part of the key: a certificate checked as a CA was not checked as a leaf, and vice versa.
        role = b"leaf" if is_leaf else b"ca"
        path_digest = hashlib.sha256(parent.path_digest + hashlib.sha256(der).digest() + role).digest()
        with self._lock:
            cached = self._cache.get(path_digest)
            if cached is not None:
                self._cache.move_to_end(path_digest)
                return cached
        try:
            link = _verify_link(parent, der, path_digest, is_leaf=is_leaf, what=what)
        except ValueError as exc:  # cryptography's lazy parsing: bad key point, bad extension, ...
            raise Malformed(f"{what}: unusable certificate ({exc})") from exc
        except CryptographyUnsupported as exc:  # an algorithm identifier cryptography does not know
            raise UnsupportedAlgorithm(f"{what}: {exc}") from exc
        with self._lock:
            self._cache[path_digest] = link
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return link

    def clear(self) -> None:
        """Forget every verified link (the roots stay)."""
        with self._lock:
            self._cache.clear()

    def evict_expired(self, now: datetime) -> int:
        """Drop cached links whose certificate expired before ``now``; returns how many."""
        with self._lock:
            dead = [k for k, link in self._cache.items() if link.certificate.not_valid_after_utc < now]
            for key in dead:
                del self._cache[key]
        return len(dead)

    @property
    def cached_links(self) -> int:
        return len(self._cache)


def _verify_link(parent: _Link, der: bytes, path_digest: bytes, *, is_leaf: bool, what: str) -> _Link:
    issuer = parent.certificate
    cert = load_certificate(der, what)
    key = _p384_key(cert, what)

    if not parent.issues_certificates:
        raise ChainUntrusted(f"{what} is issued by a certificate that is not a CA allowed to sign certificates")
    if cert.issuer != issuer.subject:
        raise ChainUntrusted(f"{what}: issuer {cert.issuer.rfc4514_string()} is not {issuer.subject.rfc4514_string()}")
    if not isinstance(cert.signature_hash_algorithm, hashes.SHA384):
        raise UnsupportedAlgorithm(f"{what} is not signed with ECDSA-SHA384")
    try:
        parent.key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise ChainUntrusted(f"{what}: signature does not verify with its issuer's key") from exc

    bc, ku = _constraints(cert)
    if is_leaf:
        if bc is not None and bc.ca:
            raise ChainUntrusted("leaf certificate must not be a CA")
        if ku is None or not ku.digital_signature:
            raise ChainUntrusted("leaf certificate is not allowed to make digital signatures")
        return _Link(cert, key, path_digest, False, 0)

    if bc is None or not bc.ca:
        raise ChainUntrusted(f"{what} is not a CA but issues further certificates")
    if parent.remaining_path is not None and parent.remaining_path < 1:
        raise ChainUntrusted(f"{what} exceeds its issuer's path length constraint")
    remaining = None if parent.remaining_path is None else parent.remaining_path - 1
    if bc.path_length is not None:
        remaining = bc.path_length if remaining is None else min(remaining, bc.path_length)
    issues = ku is not None and ku.key_cert_sign
    return _Link(cert, key, path_digest, issues, remaining)


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateNotYetValid(
            f"{what} is valid from {cert.not_valid_before_utc.isoformat()}, after {now.isoformat()}"
        )
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(f"{what} expired at {cert.not_valid_after_utc.isoformat()}")
