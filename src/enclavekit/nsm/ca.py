"""The NSM simulator's certificate authority: a local chain shaped exactly like AWS's Nitro chain.

SIMULATOR ONLY. Its keys sit unencrypted in a folder on the host; anything they sign proves nothing about
an enclave. Verifiers trust this root only when told to (``NitroPolicy(roots=(load_root(dir),))``,
``enclavekit verify --trust-sim-root DIR``), never by default.

The chain mirrors the real one, level by level (P-384 keys, ECDSA-SHA384 signatures, the same extensions in
the same order, the same criticality, the same subject attribute order, the same lifetimes):

=========  =============  ==========================  =====================================================
level      lifetime       basicConstraints            keyUsage
=========  =============  ==========================  =====================================================
root       30 years (*)   CA, no pathlen (critical)   digitalSignature, keyCertSign, cRLSign (critical)
regional   20 days 1 h    CA, pathlen 2 (critical)    digitalSignature, keyCertSign, cRLSign (critical)
zonal      5 days 18 h    CA, pathlen 1 (critical)    digitalSignature, keyCertSign, cRLSign (critical)
instance   1 day          CA, pathlen 0 (critical)    keyCertSign (critical)
leaf       3 h (+3 s)     not a CA (critical)         digitalSignature, nonRepudiation (not critical)
=========  =============  ==========================  =====================================================

(*) from :data:`ROOT_NOT_BEFORE` (the AWS root's own start) when made before 2034, so a clock set back still
finds a valid root.

Layout of the state folder (``STATE/nsm/``, mode 0700): ``root.pem`` + ``root.key``, then ``regional``,
``zonal`` and ``instance`` as ``.pem`` + ``.key``; keys are PKCS#8 PEM, mode 0600. The root is made once;
each intermediate is re-issued when it could no longer cover a full lifetime of the certificate below it
(and whenever its issuer changed). Leaves are never stored: each enclave process issues its own.
Processes sharing one state folder coordinate with a lock file (``.lock``) and atomic renames.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclavekit.nsm.errors import SimulatorStateError

__all__ = [
    "INSTANCE_LIFETIME",
    "LEAF_BACKDATE",
    "LEAF_LIFETIME",
    "REGION",
    "REGIONAL_LIFETIME",
    "ROOT_LIFETIME",
    "ROOT_NOT_BEFORE",
    "ZONAL_LIFETIME",
    "IssuingChain",
    "SimulatorCA",
    "issue_leaf",
    "load_root",
    "nsm_state_dir",
]

logger = logging.getLogger(__name__)

ROOT_LIFETIME = timedelta(days=10958, hours=1)
ROOT_NOT_BEFORE = datetime(2019, 10, 28, 13, 28, 5, tzinfo=UTC)
"""When simulated roots start, as AWS's does: a root made today still anchors documents made by a clock set
back (tests inject clocks), while every intermediate is issued at the clock's own time."""
REGIONAL_LIFETIME = timedelta(days=20, hours=1)
ZONAL_LIFETIME = timedelta(days=5, hours=18)
INSTANCE_LIFETIME = timedelta(days=1)
LEAF_LIFETIME = timedelta(hours=3)
LEAF_BACKDATE = timedelta(seconds=3)
"""Real leaves start 3 s before the moment they are issued and end 3 h after it."""
REGION = "local"
"""Stands where AWS names the region (``us-east-1``) in certificate names."""
_DOMAIN = "sim.nitro-enclaves"
_ORGANIZATION = "enclavekit"
_UNIT = "NSM simulator"
_CRL_BASE = "http://crl.nsm-simulator.invalid/crl/"
"""CRL distribution points mirror AWS's shape; ``.invalid`` (RFC 2606) guarantees nobody fetches them."""

_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_INSTANCE_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=True,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_NOTICE = """\
enclavekit NSM simulator: certificate authority state. SIMULATOR ONLY.

These keys are stored unencrypted and sign simulated Nitro attestation documents. A document they sign
proves nothing about hardware. Trust root.pem only for local development and tests
(enclavekit verify --trust-sim-root DIR), never in production.
"""

Random = Callable[[int], bytes]


def nsm_state_dir(state_dir: str | os.PathLike[str]) -> Path:
    """Where the simulator keeps its CA inside the state folder ``state_dir`` (``STATE/nsm``)."""
    return Path(state_dir) / "nsm"


def load_root(state_dir: str | os.PathLike[str]) -> bytes:
    """The DER of the simulator's root certificate kept in ``state_dir`` (the state folder or its ``nsm/``).

    Raises :class:`SimulatorStateError` when there is none.
    """
    base = Path(state_dir)
    for candidate in (nsm_state_dir(base) / "root.pem", base / "root.pem"):
        if candidate.is_file():
            try:
                certificate = x509.load_pem_x509_certificate(candidate.read_bytes())
            except (OSError, ValueError) as exc:
                raise SimulatorStateError(f"{candidate}: not a readable PEM certificate ({exc})") from exc
            return certificate.public_bytes(serialization.Encoding.DER)
    raise SimulatorStateError(
        f"no NSM simulator root in {base} (expected {nsm_state_dir(base) / 'root.pem'}); "
        "run `enclavekit nsm attest --state DIR` or start the simulator once to create it"
    )


@dataclass(frozen=True, slots=True)
class _Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True, slots=True)
class IssuingChain:
    """Root, regional, zonal and instance CA certificates, and the instance CA's key that signs leaves."""

    root: x509.Certificate
    regional: x509.Certificate
    zonal: x509.Certificate
    instance: x509.Certificate
    instance_key: ec.EllipticCurvePrivateKey
    instance_id: str

    @property
    def cabundle(self) -> tuple[bytes, ...]:
        """The DER certificates as attestation documents carry them: root first, instance CA last."""
        return tuple(
            c.public_bytes(serialization.Encoding.DER) for c in (self.root, self.regional, self.zonal, self.instance)
        )

    def covers(self, now: datetime, lifetime: timedelta) -> bool:
        """Whether a certificate issued by the instance CA at ``now`` for ``lifetime`` fits inside the chain."""
        return all(
            c.not_valid_before_utc <= now and now + lifetime <= c.not_valid_after_utc
            for c in (self.root, self.regional, self.zonal, self.instance)
        )


class SimulatorCA:
    """The simulator's CA in ``STATE/nsm``: makes the root once, keeps the intermediates fresh."""

    def __init__(self, state_dir: str | os.PathLike[str], *, random: Random = os.urandom) -> None:
        self.state_dir = Path(state_dir)
        self.path = nsm_state_dir(self.state_dir)
        self._random = random

    # --- state files --------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        notice = self.path / "SIMULATOR-ONLY.txt"
        if not notice.exists():
            self._write(notice, _NOTICE.encode(), 0o644)
        with (self.path / ".lock").open("a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _write(self, path: Path, data: bytes, mode: int) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            temporary.chmod(mode)
            temporary.replace(path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def _store(self, name: str, issued: _Issued) -> None:
        key_pem = issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._write(self.path / f"{name}.key", key_pem, 0o600)
        self._write(self.path / f"{name}.pem", issued.certificate.public_bytes(serialization.Encoding.PEM), 0o644)

    def _load(self, name: str) -> _Issued | None:
        cert_path, key_path = self.path / f"{name}.pem", self.path / f"{name}.key"
        if not cert_path.exists() and not key_path.exists():
            return None
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            if name == "root":
                raise SimulatorStateError(f"{self.path}: the root certificate or key is unreadable ({exc})") from exc
            logger.warning("NSM simulator: %s certificate unreadable, re-issuing it (%s)", name, exc)
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != certificate.public_key():
            if name == "root":
                raise SimulatorStateError(f"{self.path}: root.key does not belong to root.pem")
            return None
        return _Issued(certificate, key)

    # --- issuance -----------------------------------------------------------------------------------------

    def root(self, *, now: datetime) -> x509.Certificate:
        """The root certificate, made (with its key) on first use."""
        with self._locked():
            return self._root(now).certificate

    def _root(self, now: datetime) -> _Issued:
        root = self._load("root")
        if root is None:
            tag = self._random(8).hex()
            root = _issue(
                _root_name(tag),
                issuer=None,
                not_before=min(now, ROOT_NOT_BEFORE) if now < ROOT_NOT_BEFORE + ROOT_LIFETIME / 2 else now,
                lifetime=ROOT_LIFETIME,
                serial=self._serial(16),
                extensions=_root_extensions,
            )
            self._store("root", root)
            logger.info("NSM simulator: created a root CA in %s (simulator only)", self.path)
        return root

    def issuing_chain(self, *, now: datetime, leaf_lifetime: timedelta = LEAF_LIFETIME) -> IssuingChain:
        """A chain valid at ``now`` that can sign a leaf living ``leaf_lifetime``; re-issues what is too old."""
        now = _seconds(now)
        with self._locked():
            root = self._root(now)
            if (
                not root.certificate.not_valid_before_utc
                <= now
                <= root.certificate.not_valid_after_utc - REGIONAL_LIFETIME
            ):
                raise SimulatorStateError(
                    f"{self.path}: the simulator root is not valid from {now.isoformat()} on; "
                    "remove the folder to start a new simulated CA"
                )
            instance_id = instance_id_of(root.der)
            regional = self._fresh(
                "regional",
                root,
                now,
                REGIONAL_LIFETIME,
                ZONAL_LIFETIME,
                lambda: _regional_name(self._random(8).hex()),
                _regional_extensions,
                16,
            )
            zonal = self._fresh(
                "zonal",
                regional,
                now,
                ZONAL_LIFETIME,
                INSTANCE_LIFETIME,
                lambda: _zonal_name(self._random(8).hex()),
                _zonal_extensions,
                16,
            )
            instance = self._fresh(
                "instance",
                zonal,
                now,
                INSTANCE_LIFETIME,
                leaf_lifetime,
                lambda: _instance_name(instance_id),
                _instance_extensions,
                20,
            )
        return IssuingChain(
            root=root.certificate,
            regional=regional.certificate,
            zonal=zonal.certificate,
            instance=instance.certificate,
            instance_key=instance.key,
            instance_id=instance_id,
        )

    def _fresh(
        self,
        name: str,
        issuer: _Issued,
        now: datetime,
        lifetime: timedelta,
        child_lifetime: timedelta,
        subject: Callable[[], x509.Name],
        extensions: _Extensions,
        serial_bytes: int,
    ) -> _Issued:
        current = self._load(name)
        if current is not None and _still_good(current.certificate, issuer.certificate, now, child_lifetime):
            return current
        issued = _issue(
            subject(),
            issuer=issuer,
            not_before=now,
            lifetime=lifetime,
            serial=self._serial(serial_bytes),
            extensions=extensions,
        )
        self._store(name, issued)
        logger.info(
            "NSM simulator: issued a new %s CA certificate, valid to %s", name, issued.certificate.not_valid_after_utc
        )
        return issued

    def _serial(self, size: int) -> int:
        # AWS uses 16-byte serials (20 for instance CAs); RFC 5280 caps serials at 20 octets, hence 159 bits there
        value = int.from_bytes(self._random(size), "big")
        if size >= 20:
            value >>= 1
        return value or 1


def instance_id_of(root_der: bytes) -> str:
    """The simulated parent instance id of a state folder: ``i-0`` and 16 hex digits of its root's SHA-256."""
    return "i-0" + hashlib.sha256(root_der).hexdigest()[:16]


def issue_leaf(
    chain: IssuingChain, *, module_id: str, enclave_id: bytes, now: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A fresh leaf (new P-384 key) for the enclave ``module_id``, issued at ``now`` by the instance CA.

    As on AWS, the serial is the 8-byte enclave id, 4 zero bytes and the issue time in UNIX seconds, and the
    validity runs from 3 s before ``now`` to 3 h after it.
    """
    now = _seconds(now)
    if len(enclave_id) != 8:
        raise ValueError("enclave_id must be 8 bytes")
    serial = int.from_bytes(enclave_id + bytes(4) + int(now.timestamp()).to_bytes(4, "big"), "big")
    issuer = _Issued(chain.instance, chain.instance_key)
    leaf = _issue(
        _leaf_name(module_id),
        issuer=issuer,
        not_before=now - LEAF_BACKDATE,
        lifetime=LEAF_LIFETIME + LEAF_BACKDATE,
        serial=serial,
        extensions=_leaf_extensions,
    )
    return leaf.certificate, leaf.key


# --- certificate shapes ---------------------------------------------------------------------------------------

_Extensions = Callable[[ec.EllipticCurvePublicKey, x509.Certificate | None], list[tuple[x509.ExtensionType, bool]]]
"""(extension, critical) pairs of one level, in the order real AWS certificates of that level list them."""


def _ski(public: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public)  # RFC 5280 method 1 (SHA-1 of the key), as AWS


def _aki(issuer: x509.Certificate | None) -> x509.AuthorityKeyIdentifier:
    assert issuer is not None
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)  # key id only, as AWS


def _crl() -> x509.CRLDistributionPoints:
    uri = x509.UniformResourceIdentifier(f"{_CRL_BASE}{uuid.uuid4()}.crl")
    return x509.CRLDistributionPoints([x509.DistributionPoint([uri], None, None, None)])


def _root_extensions(
    public: ec.EllipticCurvePublicKey, issuer: x509.Certificate | None
) -> list[tuple[x509.ExtensionType, bool]]:
    return [(x509.BasicConstraints(ca=True, path_length=None), True), (_ski(public), False), (_CA_USAGE, True)]


def _regional_extensions(
    public: ec.EllipticCurvePublicKey, issuer: x509.Certificate | None
) -> list[tuple[x509.ExtensionType, bool]]:
    return _zone_extensions(2, public, issuer)


def _zonal_extensions(
    public: ec.EllipticCurvePublicKey, issuer: x509.Certificate | None
) -> list[tuple[x509.ExtensionType, bool]]:
    return _zone_extensions(1, public, issuer)


def _zone_extensions(
    path_length: int, public: ec.EllipticCurvePublicKey, issuer: x509.Certificate | None
) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (_aki(issuer), False),
        (_ski(public), False),
        (_CA_USAGE, True),
        (_crl(), False),
    ]


def _instance_extensions(
    public: ec.EllipticCurvePublicKey, issuer: x509.Certificate | None
) -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (_INSTANCE_USAGE, True),
        (_ski(public), False),
        (_aki(issuer), False),
    ]


def _leaf_extensions(
    public: ec.EllipticCurvePublicKey, issuer: x509.Certificate | None
) -> list[tuple[x509.ExtensionType, bool]]:
    return [(x509.BasicConstraints(ca=False, path_length=None), True), (_LEAF_USAGE, False)]


def _issue(
    subject: x509.Name,
    *,
    issuer: _Issued | None,
    not_before: datetime,
    lifetime: timedelta,
    serial: int,
    extensions: _Extensions,
) -> _Issued:
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
    )
    for extension, critical in extensions(key.public_key(), None if issuer is None else issuer.certificate):
        builder = builder.add_extension(extension, critical=critical)
    signer = key if issuer is None else issuer.key
    return _Issued(builder.sign(signer, hashes.SHA384()), key)


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


def _root_name(tag: str) -> x509.Name:
    # AWS: C=US, O=Amazon, OU=AWS, CN=aws.nitro-enclaves. The tag keeps roots of different folders apart.
    return _name(
        (NameOID.COUNTRY_NAME, "US"),
        (NameOID.ORGANIZATION_NAME, _ORGANIZATION),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, _UNIT),
        (NameOID.COMMON_NAME, f"{tag}.{_DOMAIN}"),
    )


def _regional_name(tag: str) -> x509.Name:
    return _name(
        (NameOID.COUNTRY_NAME, "US"),
        (NameOID.ORGANIZATION_NAME, _ORGANIZATION),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, _UNIT),
        (NameOID.COMMON_NAME, f"{tag}.{REGION}.{_DOMAIN}"),
    )


def _zonal_name(tag: str) -> x509.Name:
    return _name(
        (NameOID.COMMON_NAME, f"{tag}.zonal.{REGION}.{_DOMAIN}"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, _UNIT),
        (NameOID.ORGANIZATION_NAME, _ORGANIZATION),
        (NameOID.COUNTRY_NAME, "US"),
        (NameOID.STATE_OR_PROVINCE_NAME, "WA"),
        (NameOID.LOCALITY_NAME, "Seattle"),
    )


def _instance_name(instance_id: str) -> x509.Name:
    return _located(f"{instance_id}.{REGION}.{_DOMAIN}")


def _leaf_name(module_id: str) -> x509.Name:
    return _located(f"{module_id}.{REGION}.sim")


def _located(common_name: str) -> x509.Name:
    return _name(
        (NameOID.COUNTRY_NAME, "US"),
        (NameOID.STATE_OR_PROVINCE_NAME, "Washington"),
        (NameOID.LOCALITY_NAME, "Seattle"),
        (NameOID.ORGANIZATION_NAME, _ORGANIZATION),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, _UNIT),
        (NameOID.COMMON_NAME, common_name),
    )


def _still_good(certificate: x509.Certificate, issuer: x509.Certificate, now: datetime, child: timedelta) -> bool:
    """Issued by ``issuer`` (still), valid at ``now``, and able to cover a child living ``child`` from ``now``."""
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return certificate.not_valid_before_utc <= now and now + child <= certificate.not_valid_after_utc


def _seconds(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("the simulator's clock must return timezone-aware datetimes")
    return moment.astimezone(UTC).replace(microsecond=0)
