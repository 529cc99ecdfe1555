"""dstack evidence: a TDX quote with its event log (and the app-compose file when published).

On top of the quote checks of :mod:`enclavekit.attestation.tdx`, a dstack bundle is verified in its *source*
phase: the event log replays to the quote's RTMR0..3 with every runtime digest recomputed; the app identity —
``app-id``, ``compose-hash``, ``instance-id``, ``os-image-hash``, ``key-provider`` — is read from RTMR3 runtime
events before ``system-ready`` only (anything later is app-defined and could impersonate them); the
app-compose file hashes (SHA-256 of its bytes) to the measured ``compose-hash``; MRCONFIGID, when set, agrees
(v1: ``0x01 || compose_hash``; v2: ``0x02 || keccak256(compose_hash || app_id || kind || key_provider_id)``).

Bundles are JSON objects as dstack's guest agent and Phala's trust-center publish them: ``quote`` (hex),
``event_log`` (JSON text, or the array itself), and optionally ``app_compose`` (the raw file text),
``vm_config``, ``report_data``. Other members are ignored, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from enclavekit.attestation import tdx
from enclavekit.attestation.collateral import Collateral
from enclavekit.attestation.errors import (
    AttestationError,
    ComposeHashMismatch,
    EventDigestMismatch,
    Malformed,
    ReportDataMismatch,
    RtmrMismatch,
)
from enclavekit.attestation.event_log import EventLog, Replay, ReplayedEvent, replay
from enclavekit.attestation.quote import Quote
from enclavekit.attestation.report import CheckList, Report

__all__ = [
    "MAX_BUNDLE_SIZE",
    "AppInfo",
    "DstackAttestation",
    "DstackBundle",
    "KeyProvider",
    "MrConfigId",
    "app_info",
    "compose_hash",
    "is_bundle",
    "keccak256",
    "mr_config_id_v1",
    "mr_config_id_v2",
    "report",
    "verify",
]

MAX_BUNDLE_SIZE = 4 * 1024 * 1024
"""Largest bundle accepted (trust-center bundles with an NVIDIA GPU report reach 135 KiB)."""
MAX_COMPOSE_SIZE = 1024 * 1024
_SYSTEM_READY = "system-ready"
_IDENTITY_EVENTS = frozenset(
    {"app-id", "compose-hash", "instance-id", "os-image-hash", "key-provider", "mr-kms", "storage-fs", "boot-mr-done"}
)
_KEY_PROVIDER_KINDS = {"none": 0, "local": 1, "local-sgx": 1, "kms": 2, "tpm": 3}


# --- Keccak-256 (MRCONFIGID v2 uses Ethereum's Keccak, not SHA3-256; hashlib has only the latter) ---------------

_ROUND_CONSTANTS = (
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
)  # fmt: skip
_ROTATIONS = (  # [x][y]
    (0, 36, 3, 41, 18),
    (1, 44, 10, 45, 2),
    (62, 6, 43, 15, 61),
    (28, 55, 25, 21, 56),
    (27, 20, 39, 8, 14),
)
_MASK = (1 << 64) - 1


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (64 - shift))) & _MASK if shift else value


def _keccak_f(lanes: list[int]) -> None:
    """Keccak-f[1600] in place; ``lanes[x + 5 * y]``."""
    for constant in _ROUND_CONSTANTS:
        c = [lanes[x] ^ lanes[x + 5] ^ lanes[x + 10] ^ lanes[x + 15] ^ lanes[x + 20] for x in range(5)]
        d = [c[(x - 1) % 5] ^ _rotl(c[(x + 1) % 5], 1) for x in range(5)]
        for i in range(25):
            lanes[i] ^= d[i % 5]
        b = [0] * 25
        for x in range(5):
            for y in range(5):
                b[y + 5 * ((2 * x + 3 * y) % 5)] = _rotl(lanes[x + 5 * y], _ROTATIONS[x][y])
        for x in range(5):
            for y in range(5):
                lanes[x + 5 * y] = b[x + 5 * y] ^ (~b[(x + 1) % 5 + 5 * y] & b[(x + 2) % 5 + 5 * y])
        lanes[0] ^= constant


def _keccak(data: bytes, *, rate: int = 136, padding: int = 0x01, size: int = 32) -> bytes:
    padded = bytearray(data)
    padded.append(padding)
    padded.extend(b"\x00" * (-len(padded) % rate))
    padded[-1] |= 0x80
    lanes = [0] * 25
    for block in range(0, len(padded), rate):
        for i in range(rate // 8):
            lanes[i] ^= int.from_bytes(padded[block + 8 * i : block + 8 * i + 8], "little")
        _keccak_f(lanes)
    return b"".join(lane.to_bytes(8, "little") for lane in lanes)[:size]


def keccak256(data: bytes) -> bytes:
    """Keccak-256 (the pre-standard padding Ethereum uses; SHA3-256 differs only in the padding byte)."""
    return _keccak(data)


# --- app identity --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyProvider:
    """Where the app's disk and app keys come from: ``kms`` (id: the KMS CA key), ``local-sgx``, ``none``..."""

    name: str
    id: bytes

    @property
    def kind(self) -> int | None:
        """The MRCONFIGID v2 encoding of ``name`` (None if unknown)."""
        return _KEY_PROVIDER_KINDS.get(self.name)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "id": self.id.hex()}

    @classmethod
    def from_payload(cls, payload: bytes) -> KeyProvider:
        try:
            value = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise Malformed("key-provider event payload is not JSON") from exc
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            raise Malformed("key-provider event payload must be a JSON object with a name")
        ident = value.get("id", "")
        if not isinstance(ident, str):
            raise Malformed("key-provider id must be a hex string")
        try:
            raw = bytes.fromhex(ident)
        except ValueError as exc:
            raise Malformed("key-provider id must be a hex string") from exc
        return cls(value["name"], raw)

    def allowed_by(self, patterns: frozenset[str]) -> bool:
        """``patterns`` entries are ``name`` (any id) or ``name:idhex``."""
        for pattern in patterns:
            name, colon, ident = pattern.partition(":")
            if name == self.name and (not colon or bytes.fromhex(ident) == self.id):
                return True
        return False


@dataclass(frozen=True, slots=True)
class AppInfo:
    """The app identity dstack measured into RTMR3 before ``system-ready`` (trusted only after replay)."""

    app_id: bytes
    compose_hash: bytes
    instance_id: bytes
    os_image_hash: bytes | None
    key_provider: KeyProvider | None
    mr_kms: bytes | None
    system_ready: bool
    boot_events: tuple[str, ...]
    app_events: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id.hex(),
            "compose_hash": self.compose_hash.hex(),
            "instance_id": self.instance_id.hex(),
            "os_image_hash": None if self.os_image_hash is None else self.os_image_hash.hex(),
            "key_provider": None if self.key_provider is None else self.key_provider.to_json(),
            "events_after_system_ready": list(self.app_events),
        }


def app_info(log: EventLog) -> AppInfo:
    """Read the app identity from ``log``'s RTMR3 runtime events; raise :class:`Malformed` if absent or ambiguous."""
    values: dict[str, bytes] = {}
    boot: list[str] = []
    app: list[str] = []
    ready = False
    for event in log.runtime_events():
        if ready:
            app.append(event.name)
            continue
        if event.name == _SYSTEM_READY:
            ready = True
            continue
        if event.name in _IDENTITY_EVENTS:
            if event.name in values:
                raise Malformed(f"RTMR3 has two {event.name!r} events before system-ready")
            values[event.name] = event.payload
        boot.append(event.name)
    for required in ("app-id", "compose-hash", "instance-id"):
        if required not in values:
            raise Malformed(f"no {required!r} event in RTMR3 before system-ready")
    if len(values["compose-hash"]) != 32:
        raise Malformed(f"compose-hash event carries {len(values['compose-hash'])} bytes, not a SHA-256")
    os_image = values.get("os-image-hash")
    if os_image is not None and len(os_image) != 32:
        raise Malformed("os-image-hash event does not carry a SHA-256")
    provider = values.get("key-provider")
    return AppInfo(
        app_id=values["app-id"],
        compose_hash=values["compose-hash"],
        instance_id=values["instance-id"],
        os_image_hash=os_image,
        key_provider=None if provider is None else KeyProvider.from_payload(provider),
        mr_kms=values.get("mr-kms"),
        system_ready=ready,
        boot_events=tuple(boot),
        app_events=tuple(app),
    )


def compose_hash(app_compose: bytes) -> bytes:
    """dstack's compose hash: SHA-256 of the app-compose file's exact bytes."""
    return hashlib.sha256(app_compose).digest()


def mr_config_id_v1(compose: bytes) -> bytes:
    return b"\x01" + compose + bytes(15)


def mr_config_id_v2(compose: bytes, app_id: bytes, kind: int, key_provider_id: bytes) -> bytes:
    return b"\x02" + keccak256(compose + app_id + bytes([kind]) + key_provider_id) + bytes(15)


@dataclass(frozen=True, slots=True)
class MrConfigId:
    """MRCONFIGID as dstack sets it: version 0 (unused, all zero), 1, 2, or 3 (needs a document)."""

    version: int
    raw: bytes

    @classmethod
    def decode(cls, raw: bytes) -> MrConfigId:
        if len(raw) != 48:
            raise Malformed("MRCONFIGID must be 48 bytes")
        return cls(0 if not any(raw) else raw[0], raw)

    def describe(self) -> str:
        if self.version == 0:
            return "not set"
        if self.version == 1:
            return f"v1, compose hash {self.raw[1:33].hex()}"
        if self.version == 2:
            return f"v2, keccak256 commitment {self.raw[1:33].hex()}"
        return f"version {self.version}"

    def check(self, app: AppInfo) -> str | None:
        """None if consistent with ``app``; otherwise why not."""
        if self.version == 0:
            return None
        if self.version == 1:
            expected = mr_config_id_v1(app.compose_hash)
        elif self.version == 2:
            provider = app.key_provider
            if provider is None or provider.kind is None:
                return "MRCONFIGID v2 needs a known key provider in the event log"
            if len(app.app_id) != 20:
                return "MRCONFIGID v2 needs a 20-byte app id"
            expected = mr_config_id_v2(app.compose_hash, app.app_id, provider.kind, provider.id)
        else:
            return f"MRCONFIGID version {self.version} cannot be checked (its mr_config document is not supported)"
        if expected != self.raw:
            return f"MRCONFIGID ({self.describe()}) does not commit to the measured compose hash and key provider"
        return None


# --- bundles -------------------------------------------------------------------------------------------------


def _hex_field(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise Malformed(f"bundle: {what} must be a hex string")
    try:
        return bytes.fromhex(value.strip().removeprefix("0x"))
    except ValueError as exc:
        raise Malformed(f"bundle: {what} is not valid hex") from exc


@dataclass(frozen=True, slots=True)
class DstackBundle:
    """A dstack attestation bundle, parsed (quote and event log structurally checked, nothing trusted)."""

    quote: Quote
    event_log: EventLog
    app_compose: bytes | None = None
    vm_config: Mapping[str, Any] | None = None
    report_data: bytes | None = None

    @classmethod
    def from_json(cls, data: bytes | str) -> DstackBundle:
        if len(data) > MAX_BUNDLE_SIZE:
            raise Malformed(f"bundle of {len(data)} bytes is over the limit of {MAX_BUNDLE_SIZE}")
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise Malformed("bundle is not valid JSON") from exc
        return cls.from_mapping(document)

    @classmethod
    def from_mapping(cls, document: Any) -> DstackBundle:
        if not isinstance(document, dict):
            raise Malformed("bundle must be a JSON object")
        for key in ("quote", "event_log"):
            if key not in document:
                raise Malformed(f"bundle lacks {key!r}")
        quote = Quote.from_bytes(_hex_field(document["quote"], "quote"))
        log_value = document["event_log"]
        log = EventLog.from_json(log_value) if isinstance(log_value, str) else EventLog.from_list(log_value)
        compose = document.get("app_compose")
        if compose is not None and not isinstance(compose, str):
            raise Malformed("bundle: app_compose must be the file's text")
        compose_bytes = None if compose is None else compose.encode("utf-8")
        if compose_bytes is not None and len(compose_bytes) > MAX_COMPOSE_SIZE:
            raise Malformed(f"bundle: app_compose is over {MAX_COMPOSE_SIZE} bytes")
        vm_config = document.get("vm_config")
        if isinstance(vm_config, str):
            try:
                vm_config = json.loads(vm_config) if vm_config.strip() else None
            except (ValueError, RecursionError) as exc:
                raise Malformed("bundle: vm_config is not JSON") from exc
        if vm_config is not None and not isinstance(vm_config, dict):
            raise Malformed("bundle: vm_config must be a JSON object")
        report_data = document.get("report_data")
        claimed = None if report_data in (None, "") else _hex_field(report_data, "report_data")
        return cls(
            quote=quote,
            event_log=log,
            app_compose=compose_bytes,
            vm_config=None if vm_config is None else MappingProxyType(vm_config),
            report_data=claimed,
        )


def is_bundle(data: bytes) -> bool:
    """Whether ``data`` looks like a dstack bundle (a JSON object naming a quote and an event log)."""
    head = data.lstrip()[:1]
    return head == b"{" and b'"quote"' in data and b'"event_log"' in data


# --- verification --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DstackAttestation(tdx.TdxAttestation):
    """A dstack TD that passed a policy: the quote facts, the replayed event log and the app identity.

    ``compose_verified`` says whether the app-compose file itself was checked against ``app.compose_hash``.
    """

    app: AppInfo
    events: tuple[ReplayedEvent, ...]
    compose_verified: bool
    mr_config_id: MrConfigId


def _events_json(replayed: Replay) -> list[dict[str, Any]]:
    return [{"name": e.event.label, "imr": e.event.imr, "digest_ok": e.digest_ok} for e in replayed.events]


def _describe(events: tuple[ReplayedEvent, ...], limit: int = 5) -> str:
    labels = [f"{e.event.label} (RTMR{e.event.imr})" for e in events[:limit]]
    more = f" and {len(events) - limit} more" if len(events) > limit else ""
    return ", ".join(labels) + more


def _check_replay(checks: CheckList, replayed: Replay, quote: Quote) -> None:
    assert quote.td is not None
    mismatches = replayed.mismatches
    counts = {status: sum(1 for e in replayed.events if e.status == status) for status in ("recomputed", "checked")}
    unbound = sum(1 for e in replayed.events if e.status == "unbound")
    if mismatches:
        checks.failed(
            "event_log.digests",
            EventDigestMismatch(
                f"{len(mismatches)} logged digest(s) are not the digest of the event's content: {_describe(mismatches)}"
            ),
            phase="source",
        )
    else:
        checks.passed(
            "event_log.digests",
            f"{len(replayed.events)} events: {counts['recomputed']} runtime digests recomputed, "
            f"{counts['checked']} boot digests match their payloads, {unbound} boot payloads not bound (not used)",
            phase="source",
        )
    differing = replayed.differing_rtmrs(quote.td.rtmrs)
    if differing:
        first = differing[0]
        checks.failed(
            "event_log.replay",
            RtmrMismatch(
                "replaying the event log does not reproduce "
                + ", ".join(f"RTMR{i}" for i in differing)
                + " of the quote"
            ),
            phase="source",
            expected=f"rtmr{first}={quote.td.rtmrs[first].hex()}",
            actual=f"rtmr{first}={replayed.rtmrs[first].hex()}",
        )
    else:
        checks.passed("event_log.replay", "replay reproduces RTMR0..3 of the quote", phase="source")


def _check_app(
    checks: CheckList, app: AppInfo, quote: Quote, policy: tdx.TdxPolicy, compose: bytes | None
) -> tuple[bool, MrConfigId]:
    assert quote.td is not None
    compose_verified = False
    if compose is not None:
        actual = compose_hash(compose)
        if actual == app.compose_hash:
            compose_verified = True
            checks.passed(
                "dstack.compose_file", "SHA-256 of the app-compose file is the measured compose-hash", phase="source"
            )
        else:
            checks.failed(
                "dstack.compose_file",
                ComposeHashMismatch("the app-compose file is not the one measured (its SHA-256 differs)"),
                phase="source",
                expected=app.compose_hash.hex(),
                actual=actual.hex(),
            )
    mr_config = MrConfigId.decode(quote.td.mr_config_id)
    problem = mr_config.check(app)
    if problem is None:
        detail = "not set" if mr_config.version == 0 else f"{mr_config.describe()}: agrees with the event log"
        checks.passed("dstack.mr_config_id", detail, phase="source")
    else:
        checks.failed(
            "dstack.mr_config_id", ComposeHashMismatch(problem), phase="source", actual=quote.td.mr_config_id.hex()
        )
    if policy.compose_hashes:
        if app.compose_hash in policy.compose_hashes:
            checks.passed("policy.compose_hash", "compose hash is allowed by the policy", phase="source")
        else:
            checks.failed(
                "policy.compose_hash",
                ComposeHashMismatch(f"compose hash is none of the {len(policy.compose_hashes)} allowed"),
                phase="source",
                expected=", ".join(sorted(h.hex() for h in policy.compose_hashes)),
                actual=app.compose_hash.hex(),
            )
    if policy.app_ids:
        if app.app_id in policy.app_ids:
            checks.passed("policy.app_id", "app id is allowed by the policy", phase="source")
        else:
            checks.failed(
                "policy.app_id",
                ComposeHashMismatch("app id is not allowed by the policy"),
                phase="source",
                expected=", ".join(sorted(a.hex() for a in policy.app_ids)),
                actual=app.app_id.hex(),
            )
    if policy.key_providers:
        provider = app.key_provider
        if provider is not None and provider.allowed_by(policy.key_providers):
            checks.passed("policy.key_provider", f"key provider {provider.name} is allowed", phase="source")
        else:
            checks.failed(
                "policy.key_provider",
                ComposeHashMismatch(
                    "no key-provider event" if provider is None else f"key provider {provider.name} is not allowed"
                ),
                phase="source",
                expected=", ".join(sorted(policy.key_providers)),
                actual=None if provider is None else f"{provider.name}:{provider.id.hex()}",
            )
    return compose_verified, mr_config


def report(
    bundle: DstackBundle | bytes,
    policy: tdx.TdxPolicy,
    *,
    now: datetime,
    collateral: Collateral | None = None,
    unsafe_no_collateral: bool = False,
    app_compose: bytes | None = None,
) -> Report[DstackAttestation]:
    """Check a dstack bundle against ``policy`` at ``now``; never raises for bad evidence.

    ``app_compose`` (the file's bytes) overrides the bundle's own ``app_compose``. Hardware checks are those of
    :func:`enclavekit.attestation.tdx.report`, including ``unsafe_no_collateral``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    checks = CheckList()
    if not isinstance(bundle, DstackBundle):
        try:
            bundle = DstackBundle.from_json(bundle)
        except AttestationError as exc:
            checks.failed("bundle.parse", exc, phase="hardware")
            return _result("tdx", checks, None, {})
    quote = tdx.parse_quote(checks, bundle.quote)
    assert quote is not None
    hardware = tdx.check_hardware(
        checks, quote, policy, now=now, collateral=collateral, unsafe_no_collateral=unsafe_no_collateral
    )
    facts = tdx.quote_facts(quote, hardware)
    if hardware is None or not tdx.check_tee(checks, quote):
        return _result(quote.tee, checks, None, facts)
    td = quote.td
    assert td is not None
    tdx.check_td(checks, td, policy)

    replayed = replay(bundle.event_log)
    facts["events"] = _events_json(replayed)
    _check_replay(checks, replayed, quote)
    app: AppInfo | None = None
    try:
        app = app_info(bundle.event_log)
    except Malformed as exc:
        checks.failed("dstack.app", exc, phase="source")
    compose_verified = False
    mr_config = MrConfigId.decode(td.mr_config_id)
    if app is not None:
        checks.passed(
            "dstack.app",
            f"app {app.app_id.hex()}, compose hash {app.compose_hash.hex()} (RTMR3, before system-ready)",
            phase="source",
        )
        compose_verified, mr_config = _check_app(
            checks, app, quote, policy, app_compose if app_compose is not None else bundle.app_compose
        )
        facts["app"] = {**app.to_json(), "compose_verified": compose_verified}
    facts["mr_config_id"] = mr_config.describe()

    tdx.check_report_data(checks, td.report_data, policy)
    if bundle.report_data is not None:
        if bundle.report_data.ljust(64, b"\x00") == td.report_data:
            checks.passed("bundle.report_data", "the bundle's report_data is the quote's", phase="binding")
        else:
            checks.failed(
                "bundle.report_data",
                ReportDataMismatch("the bundle's report_data is not the quote's REPORTDATA"),
                phase="binding",
                expected=td.report_data.hex(),
                actual=bundle.report_data.hex(),
            )
    attestation = None
    if not checks.failures() and app is not None:
        attestation = DstackAttestation(
            **tdx.attestation_from(
                quote,
                td,
                hardware,
                app=app,
                events=replayed.events,
                compose_verified=compose_verified,
                mr_config_id=mr_config,
            )
        )
    return _result("tdx", checks, attestation, facts)


def _result(
    tee: str, checks: CheckList, attestation: DstackAttestation | None, facts: Mapping[str, Any]
) -> Report[DstackAttestation]:
    return Report(
        tee,
        checks.freeze(),
        None if checks.failures() else attestation,
        checks.first_error,
        MappingProxyType(dict(facts)),
    )


def verify(
    bundle: DstackBundle | bytes,
    policy: tdx.TdxPolicy,
    *,
    now: datetime,
    collateral: Collateral | None = None,
    unsafe_no_collateral: bool = False,
    app_compose: bytes | None = None,
) -> DstackAttestation:
    """Verify a dstack bundle against ``policy`` at ``now``; raise the first failure's error."""
    return report(
        bundle,
        policy,
        now=now,
        collateral=collateral,
        unsafe_no_collateral=unsafe_no_collateral,
        app_compose=app_compose,
    ).verified()
