"""The trust service's host side in one object: accept evidence and endpoints, hand out results.

:class:`TrustService` is what the HTTP API, the workers and the CLI share. Accepting an upload is checked
before anything is stored (size, kind, structure, options), then the blobs go to object storage and the target
and its first task to the database in one transaction; if that transaction fails, blobs written for it are
removed again, so nothing is stored half.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from enclavekit.attestation.collateral import MAX_COLLATERAL_SIZE, Collateral
from enclavekit.attestation.dstack import MAX_COMPOSE_SIZE, app_info
from enclavekit.attestation.errors import AttestationError, Malformed
from enclavekit.attestation.evidence import MAX_EVIDENCE_SIZE, Evidence, EvidenceKind
from enclavekit.errors import ConfigurationError
from enclavekit.services.trust.errors import EndpointUnsupported, NotFound, UploadInvalid, UploadTooLarge
from enclavekit.services.trust.model import AppRecord, Kind, Source, TargetOptions, TaskRecord
from enclavekit.services.trust.objects import ObjectStore, open_object_store
from enclavekit.services.trust.registry import OsRegistry, load_registry
from enclavekit.services.trust.settings import TrustSettings
from enclavekit.services.trust.signing import EarSigner
from enclavekit.services.trust.store import NewApp, TrustStore

__all__ = ["Accepted", "TrustService", "describe_evidence"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A target accepted for verification, and its open task."""

    app: AppRecord
    task: TaskRecord
    created: bool

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task.id, "app_id": self.app.id, "status": str(self.task.status)}


@dataclass(frozen=True, slots=True)
class EvidenceFacts:
    """What an upload looks like before verification (for naming and grouping only, never trusted)."""

    kind: EvidenceKind
    tee: str
    subject: str
    name: str


def describe_evidence(evidence: Evidence) -> EvidenceFacts:
    """What parsed ``evidence`` shows of itself; raise why not (:class:`Malformed`, ...) if it did not parse."""
    evidence.require()
    kind = evidence.kind
    document, quote, bundle = evidence.document, evidence.quote, evidence.bundle
    if document is not None:
        return EvidenceFacts(kind, "nitro", document.module_id, f"Nitro enclave {document.module_id}")
    if bundle is not None:
        try:
            subject = app_info(bundle.event_log).app_id.hex()
        except AttestationError:
            subject = f"mrtd {bundle.quote.td.mr_td.hex()[:16]}" if bundle.quote.td is not None else "dstack"
        return EvidenceFacts(kind, bundle.quote.tee, subject, f"dstack app {subject[:16]}")
    if quote is not None:
        tee = quote.tee
        if quote.td is not None:
            subject = f"mrtd {quote.td.mr_td.hex()[:16]}"
        else:
            assert quote.sgx is not None
            subject = f"mrenclave {quote.sgx.mr_enclave.hex()[:16]}"
        return EvidenceFacts(kind, tee, subject, f"{tee.upper()} quote {subject}")
    raise Malformed(f"no facts for evidence of kind {kind}")  # unreachable: require() refused it


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TrustService:
    """Settings, database, object store, OS registry and EAR key of one trust service instance."""

    def __init__(
        self,
        settings: TrustSettings,
        *,
        store: TrustStore | None = None,
        objects: ObjectStore | None = None,
        registry: OsRegistry | None = None,
        signer: EarSigner | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or TrustStore.open(settings.effective_database_url)
        self.objects = objects or open_object_store(
            settings.effective_objects_url, s3_endpoint_url=settings.s3_endpoint_url
        )
        self.registry = registry or load_registry(settings.registry_path, sha256=settings.registry_sha256)
        self.signer = signer or EarSigner.load_or_create(settings.signing_key_path)
        self.simulator_roots = self._simulator_roots(settings.simulator_roots)
        self.local_tcb: dict[str, dict[str, Any]] = {}
        """The TCB inventory (``enclavekit enclave tcb --json``) of each local stack enclave, by app id."""

    @staticmethod
    def _simulator_roots(state_dirs: Iterable[Path]) -> tuple[bytes, ...]:
        dirs = tuple(state_dirs)
        if not dirs:
            return ()
        from enclavekit.nsm.simulator import load_root

        return tuple(load_root(directory) for directory in dirs)

    def close(self) -> None:
        self.store.close()

    # --- accepting work -----------------------------------------------------------------------------------

    def submit(
        self,
        evidence: bytes,
        *,
        collateral: bytes | None = None,
        compose: bytes | None = None,
        name: str | None = None,
        kind: Kind | None = None,
        options: TargetOptions | None = None,
        now: datetime | None = None,
    ) -> Accepted:
        """Accept uploaded evidence (verified from these bytes now and on every re-check)."""
        options = options or TargetOptions()
        self._check_sizes(evidence, collateral, compose)
        facts = describe_evidence(Evidence.from_bytes(evidence))  # the one parse of this upload: refuse or name it
        if collateral is not None:
            if facts.kind is EvidenceKind.NITRO:
                raise UploadInvalid("collateral is for TDX/SGX quotes; this is a Nitro document")
            try:
                Collateral.from_json(collateral)
            except AttestationError as exc:
                raise Malformed(f"collateral: {exc.message}") from exc
        if compose is not None and facts.kind is not EvidenceKind.DSTACK:
            raise UploadInvalid("an app-compose file goes with a dstack bundle (quote + event log)")
        if facts.kind is not EvidenceKind.NITRO and options.at.evidence_time:
            raise UploadInvalid("at=doc: a DCAP quote carries no timestamp of its own; give a time (or now)")
        if options.trust_simulator and not self.simulator_roots:
            raise UploadInvalid("this service trusts no simulator root (its simulator_roots setting is empty)")
        target_kind = kind or (Kind.ENCLAVE if facts.kind is EvidenceKind.NITRO else Kind.APP)
        identity = hashlib.sha256()
        for piece in (
            evidence,
            collateral or b"",
            compose or b"",
            json.dumps(options.to_json(), sort_keys=True).encode(),
        ):
            identity.update(_sha256(piece).encode())
        identity.update(str(target_kind).encode())
        app_id = "u-" + identity.hexdigest()[:20]

        written: list[str] = []
        keys: dict[str, str | None] = {"evidence": None, "collateral": None, "compose": None}
        try:
            for part, blob, content_type in (
                ("evidence", evidence, "application/octet-stream"),
                ("collateral", collateral, "application/json"),
                ("compose", compose, "application/json"),
            ):
                if blob is None:
                    continue
                key = f"{part}/{_sha256(blob)}"
                if not self.objects.exists(key):
                    self.objects.put(key, blob, content_type=content_type)
                    written.append(key)
                keys[part] = key
            metadata = {"evidence_kind": str(facts.kind), "evidence_sha256": _sha256(evidence)}
            app = NewApp(
                id=app_id,
                name=(name or facts.name).strip()[:200] or facts.name,
                kind=target_kind,
                source=Source.UPLOAD,
                tee=facts.tee,
                subject=facts.subject[:200],
                options=options,
                evidence_key=keys["evidence"],
                collateral_key=keys["collateral"],
                compose_key=keys["compose"],
                metadata=metadata,
            )
            existed = self._exists(app_id)
            record, task = self.store.add_target(app, job_name="upload", now=now)
        except BaseException:
            for key in written:
                try:
                    self.objects.delete(key)
                except Exception:  # the original error matters more
                    logger.exception("could not remove %s after a failed upload", key)
            raise
        return Accepted(record, task, not existed)

    def _exists(self, app_id: str) -> bool:
        try:
            self.store.get_app(app_id)
        except NotFound:
            return False
        return True

    def _check_sizes(self, evidence: bytes, collateral: bytes | None, compose: bytes | None) -> None:
        limit = min(self.settings.max_upload, MAX_EVIDENCE_SIZE)
        if not evidence:
            raise UploadInvalid("the evidence file is empty")
        if len(evidence) > limit:
            raise UploadTooLarge(f"evidence of {len(evidence)} bytes is over the limit of {limit}")
        if collateral is not None and len(collateral) > MAX_COLLATERAL_SIZE:
            raise UploadTooLarge(f"collateral of {len(collateral)} bytes is over the limit of {MAX_COLLATERAL_SIZE}")
        if compose is not None and len(compose) > MAX_COMPOSE_SIZE:
            raise UploadTooLarge(f"app-compose file of {len(compose)} bytes is over the limit of {MAX_COMPOSE_SIZE}")

    def register_endpoint(
        self,
        url: str,
        *,
        name: str | None = None,
        kind: Kind = Kind.APP,
        options: TargetOptions | None = None,
        app_id: str | None = None,
        supported_schemes: Iterable[str] = ("http", "https"),
        now: datetime | None = None,
    ) -> Accepted:
        """Register an endpoint to poll (re-verified on schedule) and queue its first verification."""
        options = options or TargetOptions()
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in set(supported_schemes):
            raise EndpointUnsupported(f"cannot poll {url!r}: only {', '.join(sorted(supported_schemes))} URLs")
        if options.at.evidence_time:
            raise UploadInvalid("an endpoint gives fresh evidence: verify it at now, not at=doc")
        if options.trust_simulator and not self.simulator_roots:
            raise UploadInvalid("this service trusts no simulator root (its simulator_roots setting is empty)")
        ident = app_id or "e-" + _sha256(url.encode())[:20]
        existed = self._exists(ident)
        app = NewApp(
            id=ident,
            name=(name or url)[:200],
            kind=kind,
            source=Source.ENDPOINT,
            tee="unknown",
            subject=url[:200],
            options=options,
            endpoint_url=url,
            metadata={"endpoint": url},
        )
        record, task = self.store.add_target(app, job_name="registered", now=now)
        return Accepted(record, task, not existed)

    def register_stack_enclaves(self, enclaves: Iterable[Mapping[str, Any]]) -> list[str]:
        """Register (or update) the enclaves ``stack.json`` lists: each one's attestation URL (``attestation_url``,
        the host's HTTP endpoint, polled with a fresh nonce; else its ``address``), pinned to the PCR0 the stack
        reported, trusting the local simulator. Returns the ids of targets created or changed."""
        touched = []
        for enclave in enclaves:
            name = str(enclave.get("name") or "enclave")
            url = str(enclave.get("attestation_url") or enclave.get("address") or "")
            pcr0 = enclave.get("pcr0")
            pcrs = {0: str(pcr0).lower()} if isinstance(pcr0, str) and len(pcr0) == 96 else {}
            options = TargetOptions(
                pcrs=pcrs,
                trust_simulator=bool(self.simulator_roots),
                nonce=bool(enclave.get("attestation_url")),  # the host's endpoint puts our nonce in the document
            )
            ident = "enclave-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name.lower())[:50]
            self._record_tcb(ident, enclave.get("app"))
            try:
                if self._exists(ident):
                    if self.store.update_endpoint(ident, endpoint_url=url, options=options):
                        touched.append(ident)
                    continue
                accepted = self.register_endpoint(
                    url,
                    name=f"enclave {name}",
                    kind=Kind.ENCLAVE,
                    options=options,
                    app_id=ident,
                    supported_schemes=("http", "https", "unix", "tcp", "vsock"),
                )
                touched.append(accepted.app.id)
            except (EndpointUnsupported, UploadInvalid) as exc:
                logger.warning("not registering enclave %s: %s", name, exc.message)
        return touched

    def _record_tcb(self, ident: str, spec: object) -> None:
        """Inventory the enclave app ``spec`` (``module:attribute`` from ``stack.json``) once, for its page."""
        if not isinstance(spec, str) or self.local_tcb.get(ident, {}).get("app") == spec:
            return
        from enclavekit.enclave.tcb import inventory  # a host-side helper, loaded only for local stacks

        try:
            self.local_tcb[ident] = inventory(spec).to_json()
        except ConfigurationError as exc:
            logger.warning("no TCB inventory for %s: %s", ident, exc.message)

    def register_stack_file(self, path: Path) -> list[str]:
        """:meth:`register_stack_enclaves` for the enclaves of a ``stack.json`` (with each relay's
        ``attestation_url``); [] if the file is absent or unreadable."""
        try:
            stack = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(stack, dict):
            return []
        services = stack.get("services") if isinstance(stack.get("services"), dict) else {}
        enclaves = []
        for enclave in stack.get("enclaves") or []:
            if not isinstance(enclave, dict):
                continue
            relay = services.get(f"relay_{enclave.get('name')}") if isinstance(services, dict) else None
            url = relay.get("attestation_url") if isinstance(relay, dict) else None
            enclaves.append({**enclave, "attestation_url": enclave.get("attestation_url") or url})
        return self.register_stack_enclaves(enclaves)

    def reverify(self, app_id: str) -> TaskRecord:
        """Queue a verification of ``app_id`` now (or return the one already open)."""
        return self.store.request_verification(app_id, job_name="manual")

    # --- results ------------------------------------------------------------------------------------------

    def report(self, task: TaskRecord) -> dict[str, Any] | None:
        """The stored report of a completed task (None if it has none)."""
        if task.result_key is None:
            return None
        loaded: dict[str, Any] = json.loads(self.objects.get(task.result_key))
        return loaded
