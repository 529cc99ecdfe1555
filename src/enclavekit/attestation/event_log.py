"""The TDX event log as dstack publishes it (JSON), and its replay into RTMR0..3.

Each event names the register it extended (``imr`` 0..3), its type, its digest and its payload. Replay starts
every RTMR at 48 zero bytes and extends it as ``rtmr = SHA-384(rtmr || digest)``; the result must equal the
quote's registers. What replay trusts:

* dstack runtime events (type ``0x08000001``, RTMR3) — the digest is **recomputed** from name and payload and
  the logged one is never used (a log that lied about it would otherwise "replay" while its payloads say
  anything): v1 ``SHA-384(le32(type) || ":" || name || ":" || payload)``; v2 ``SHA-384(JCS({"name", "payload":
  hex, "type"}))``, with dstack's self-describing form ``JCS({"event", "event_type", "payload", "version": 2})``
  also recognised when the logged digest names it.
* Boot events whose TCG digest is the hash of the logged data (EV_SEPARATOR, EV_EFI_ACTION,
  EV_EFI_VARIABLE_DRIVER_CONFIG, and EV_EFI_VARIABLE_BOOT over its variable data) — checked against the payload.
* Other boot events (firmware blobs, ACPI tables, the kernel image and command line) — the digest is of data
  the log does not carry, so their payload is informational only: it is reported as *unbound* and nothing in
  enclavekit reads it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from enclavekit.attestation.errors import Malformed

__all__ = [
    "MAX_EVENTS",
    "MAX_EVENT_LOG_SIZE",
    "RUNTIME_EVENT_TYPE",
    "Event",
    "EventLog",
    "Replay",
    "ReplayedEvent",
    "event_type_name",
    "replay",
    "runtime_digest_v1",
    "runtime_digest_v2",
]

RUNTIME_EVENT_TYPE = 0x08000001
"""dstack's runtime event type (not a TCG type), extended into RTMR3."""
MAX_EVENT_LOG_SIZE = 2 * 1024 * 1024
"""Largest event log text accepted (real dstack logs are 4-8 KiB)."""
MAX_EVENTS = 4096
MAX_NAME = 1024
MAX_PAYLOAD = 256 * 1024
DIGEST_SIZE = 48
_ZERO = bytes(DIGEST_SIZE)
_KEYS = frozenset({"imr", "event_type", "digest", "event", "event_payload"})
_OPTIONAL_KEYS = frozenset({"version", "hash_input"})

EV_SEPARATOR = 0x4
EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
EV_EFI_VARIABLE_BOOT = 0x80000002
EV_EFI_ACTION = 0x80000007
_PAYLOAD_HASHED = frozenset({EV_SEPARATOR, EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_ACTION})
_TCG_NAMES = {
    0x1: "EV_POST_CODE",
    0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR",
    0x5: "EV_ACTION",
    0x6: "EV_EVENT_TAG",
    0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION",
    0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xD: "EV_IPL",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    RUNTIME_EVENT_TYPE: "DSTACK_RUNTIME_EVENT",
}


def event_type_name(event_type: int) -> str:
    """The TCG (or dstack) name of an event type, ``0x...`` when unknown."""
    return _TCG_NAMES.get(event_type, f"{event_type:#x}")


def runtime_digest_v1(name: str, payload: bytes) -> bytes:
    """dstack runtime event digest, v1: ``SHA-384(le32(0x08000001) || ":" || name || ":" || payload)``."""
    return hashlib.sha384(struct.pack("<I", RUNTIME_EVENT_TYPE) + b":" + name.encode("utf-8") + b":" + payload).digest()


def _jcs(members: Mapping[str, str | int]) -> bytes:
    """RFC 8785 canonical JSON for a flat object of ASCII keys, strings and small integers."""
    return json.dumps(dict(sorted(members.items())), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def runtime_digest_v2(name: str, payload: bytes) -> bytes:
    """dstack runtime event digest, v2: ``SHA-384(JCS({"name": name, "payload": hex, "type": 0x08000001}))``."""
    return hashlib.sha384(_jcs({"name": name, "payload": payload.hex(), "type": RUNTIME_EVENT_TYPE})).digest()


def _runtime_digest_v2_self_describing(name: str, payload: bytes) -> bytes:
    members: dict[str, str | int] = {
        "event": name,
        "event_type": RUNTIME_EVENT_TYPE,
        "payload": payload.hex(),
        "version": 2,
    }
    return hashlib.sha384(_jcs(members)).digest()


@dataclass(frozen=True, slots=True)
class Event:
    """One logged event, as parsed (nothing in it is trusted before :func:`replay` and the quote agree)."""

    imr: int
    event_type: int
    digest: bytes
    name: str
    payload: bytes
    version: int = 1

    @property
    def is_runtime(self) -> bool:
        return self.event_type == RUNTIME_EVENT_TYPE

    @property
    def label(self) -> str:
        """The event's name, or its type's name for nameless (boot) events."""
        return self.name or event_type_name(self.event_type)

    @classmethod
    def from_json(cls, entry: Any, index: int) -> Event:
        what = f"event {index}"
        if not isinstance(entry, dict):
            raise Malformed(f"{what} is not a JSON object")
        missing = sorted(_KEYS - set(entry))
        if missing:
            raise Malformed(f"{what} lacks {', '.join(missing)}")
        unknown = sorted(set(entry) - _KEYS - _OPTIONAL_KEYS)
        if unknown:
            raise Malformed(f"{what} has unknown field(s) {unknown}")
        imr = entry["imr"]
        if type(imr) is not int or not 0 <= imr <= 3:
            raise Malformed(f"{what}: imr must be an integer 0..3")
        event_type = entry["event_type"]
        if type(event_type) is not int or not 0 <= event_type <= 0xFFFFFFFF:
            raise Malformed(f"{what}: event_type must be a 32-bit unsigned integer")
        name = entry["event"]
        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise Malformed(f"{what}: event must be a string of at most {MAX_NAME} characters")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Malformed(f"{what}: event name is not valid Unicode") from exc
        digest = _hex(entry["digest"], f"{what}: digest", MAX_NAME)
        if digest and len(digest) != DIGEST_SIZE:
            raise Malformed(f"{what}: digest must be {DIGEST_SIZE} bytes (SHA-384) or empty")
        payload = _hex(entry["event_payload"], f"{what}: event_payload", MAX_PAYLOAD)
        version = _version(entry.get("version", 1), what)
        if not digest and not event_type == RUNTIME_EVENT_TYPE:
            raise Malformed(f"{what}: a boot event must carry its digest")
        return cls(imr, event_type, digest, name, payload, version)


def _hex(value: Any, what: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise Malformed(f"{what} must be a hex string")
    if len(value) > 2 * limit:
        raise Malformed(f"{what} is over {limit} bytes")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise Malformed(f"{what} is not valid hex") from exc


def _version(value: Any, what: str) -> int:
    if type(value) is int and value in (1, 2):
        return value
    if isinstance(value, str) and value.lower().removeprefix("v") in ("1", "2"):
        return int(value.lower().removeprefix("v"))
    raise Malformed(f"{what}: version must be 1 or 2")


def _reject_duplicates(items: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in items:
        if key in out:
            raise Malformed(f"event log repeats the key {key!r} in one object")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise Malformed(f"event log contains the non-JSON constant {name}")


@dataclass(frozen=True, slots=True)
class EventLog:
    """A dstack event log: every event in order."""

    events: tuple[Event, ...]

    @classmethod
    def from_json(cls, data: str | bytes) -> EventLog:
        """Parse the JSON text of a log (an array of events). Raise :class:`Malformed` on any deviation."""
        if len(data) > MAX_EVENT_LOG_SIZE:
            raise Malformed(f"event log of {len(data)} bytes is over the limit of {MAX_EVENT_LOG_SIZE}")
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Malformed("event log is not UTF-8") from exc
        try:
            value = json.loads(data, object_pairs_hook=_reject_duplicates, parse_constant=_no_constants)
        except (ValueError, RecursionError) as exc:
            raise Malformed("event log is not valid JSON") from exc
        return cls.from_list(value)

    @classmethod
    def from_list(cls, value: Any) -> EventLog:
        """Build a log from already-decoded JSON (a list of event objects)."""
        if not isinstance(value, list):
            raise Malformed("event log must be a JSON array of events")
        if len(value) > MAX_EVENTS:
            raise Malformed(f"event log has {len(value)} events; at most {MAX_EVENTS} are accepted")
        return cls(tuple(Event.from_json(entry, index) for index, entry in enumerate(value)))

    def runtime_events(self) -> tuple[Event, ...]:
        """dstack runtime events in RTMR3, in order (the only place app identity may come from)."""
        return tuple(e for e in self.events if e.is_runtime and e.imr == 3)


DigestStatus = Literal["recomputed", "checked", "unbound", "mismatch"]


@dataclass(frozen=True, slots=True)
class ReplayedEvent:
    """An event with the digest replay extended and how far that digest binds the event's content.

    ``status``: ``recomputed`` (runtime event: digest computed from name and payload), ``checked`` (boot event
    whose logged digest is the hash of its payload), ``unbound`` (the payload is not what was measured: only
    the digest counts), ``mismatch`` (the logged digest is not the digest of the logged content).
    """

    event: Event
    digest: bytes
    status: DigestStatus

    @property
    def digest_ok(self) -> bool | None:
        """True when the content is bound to the digest, False on a mismatch, None when it cannot be bound."""
        if self.status == "mismatch":
            return False
        return None if self.status == "unbound" else True


@dataclass(frozen=True, slots=True)
class Replay:
    """The four RTMRs the log reproduces, and each event's digest status."""

    rtmrs: tuple[bytes, bytes, bytes, bytes]
    events: tuple[ReplayedEvent, ...]

    @property
    def mismatches(self) -> tuple[ReplayedEvent, ...]:
        return tuple(e for e in self.events if e.status == "mismatch")

    def differing_rtmrs(self, quoted: Sequence[bytes]) -> tuple[int, ...]:
        """Indices of the RTMRs where replay and ``quoted`` disagree."""
        return tuple(i for i in range(4) if self.rtmrs[i] != quoted[i])


def _runtime_digest(event: Event) -> tuple[bytes, DigestStatus]:
    if event.version == 1:
        digest = runtime_digest_v1(event.name, event.payload)
    else:
        digest = runtime_digest_v2(event.name, event.payload)
        if event.digest and event.digest != digest:
            alternative = _runtime_digest_v2_self_describing(event.name, event.payload)
            if event.digest == alternative:
                digest = alternative
    if event.digest and event.digest != digest:
        return digest, "mismatch"
    return digest, "recomputed"


def _boot_digest_status(event: Event) -> DigestStatus:
    if not event.payload:
        return "unbound"  # stripped payload (dstack's "lite" logs): only the digest is left
    if event.event_type in _PAYLOAD_HASHED:
        expected = hashlib.sha384(event.payload).digest()
    elif event.event_type == EV_EFI_VARIABLE_BOOT:
        data = _efi_variable_data(event.payload)
        if data is None:
            return "mismatch"
        expected = hashlib.sha384(data).digest()
    else:
        return "unbound"
    return "checked" if expected == event.digest else "mismatch"


def _efi_variable_data(payload: bytes) -> bytes | None:
    """VariableData of a UEFI_VARIABLE_DATA (GUID, name length, data length, UTF-16 name, data)."""
    if len(payload) < 32:
        return None
    name_length, data_length = struct.unpack_from("<QQ", payload, 16)
    start = 32 + 2 * name_length
    if start + data_length != len(payload):
        return None
    return payload[start:]


def replay(log: EventLog) -> Replay:
    """Replay ``log`` into RTMR0..3, recomputing every runtime event's digest (pure; never raises)."""
    registers = [_ZERO, _ZERO, _ZERO, _ZERO]
    replayed: list[ReplayedEvent] = []
    for event in log.events:
        if event.is_runtime:
            digest, status = _runtime_digest(event)
        else:
            digest, status = event.digest, _boot_digest_status(event)
        registers[event.imr] = hashlib.sha384(registers[event.imr] + digest).digest()
        replayed.append(ReplayedEvent(event, digest, status))
    return Replay((registers[0], registers[1], registers[2], registers[3]), tuple(replayed))
