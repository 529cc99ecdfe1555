"""The trust graph of one verification: components, their measurements, and which proves which.

Shaped like the reference's DataObjects: each object has an ``id``, a ``name``, a ``kind`` (``app``, ``kms``,
``gateway``, ``enclave`` for the thing verified; ``code``, ``os``, ``hardware`` for what it runs on), ``fields``
(the measurements and facts shown), ``measured_by`` (which object's which field proves this one's) and
``calculations`` (how a value was derived); ``relationships`` link objects (``runs``, ``runs on``, ``gets keys
from``). Each object also carries the status of the phase that checks it, so the drawing can colour it: a phase
whose values were not pinned (``not_checked``) is grey, never "verified".

:func:`render_svg` draws it as inline SVG (no script, escaped text) for the web app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any

__all__ = ["Calculation", "DataObject", "MeasuredBy", "Relationship", "TrustGraph", "build_graph", "render_svg"]


@dataclass(frozen=True, slots=True)
class MeasuredBy:
    """``field`` of this object is proven by ``by_field`` of ``object``."""

    object: str
    field: str
    by_field: str

    def to_json(self) -> dict[str, str]:
        return {"object": self.object, "field": self.field, "by_field": self.by_field}


@dataclass(frozen=True, slots=True)
class Calculation:
    inputs: tuple[str, ...]
    function: str
    outputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "function": self.function, "outputs": list(self.outputs)}


@dataclass(frozen=True, slots=True)
class DataObject:
    id: str
    name: str
    kind: str
    status: str
    description: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    measured_by: tuple[MeasuredBy, ...] = ()
    calculations: tuple[Calculation, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "description": self.description,
            "fields": dict(self.fields),
            "measuredBy": [m.to_json() for m in self.measured_by],
            "calculations": [c.to_json() for c in self.calculations],
        }


@dataclass(frozen=True, slots=True)
class Relationship:
    source: str
    target: str
    label: str
    fields: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "label": self.label, "fields": dict(self.fields)}


@dataclass(frozen=True, slots=True)
class TrustGraph:
    objects: tuple[DataObject, ...]
    relationships: tuple[Relationship, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": [o.to_json() for o in self.objects],
            "relationships": [r.to_json() for r in self.relationships],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrustGraph:
        objects = tuple(
            DataObject(
                id=str(o["id"]),
                name=str(o["name"]),
                kind=str(o["kind"]),
                status=str(o.get("status", "skipped")),
                description=str(o.get("description", "")),
                fields={str(k): str(v) for k, v in (o.get("fields") or {}).items()},
                measured_by=tuple(
                    MeasuredBy(str(m["object"]), str(m["field"]), str(m["by_field"])) for m in o.get("measuredBy", [])
                ),
                calculations=tuple(
                    Calculation(tuple(c["inputs"]), str(c["function"]), tuple(c["outputs"]))
                    for c in o.get("calculations", [])
                ),
            )
            for o in data.get("objects", [])
        )
        relationships = tuple(
            Relationship(str(r["source"]), str(r["target"]), str(r["label"]), dict(r.get("fields") or {}))
            for r in data.get("relationships", [])
        )
        return cls(objects, relationships)


def _short(value: Any, size: int = 16) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= size else text[:size] + "…"


def _phase(report: Mapping[str, Any], ident: str) -> str:
    for phase in report.get("phases", []):
        if phase["id"] == ident:
            return str(phase["status"])
    return "skipped"


def build_graph(report: Mapping[str, Any], *, kind: str) -> TrustGraph:
    """The graph of one report (the JSON of :class:`~enclavekit.services.trust.verification.TrustReport`)."""
    evidence = report.get("evidence_kind")
    core: Mapping[str, Any] = report.get("core") or {}
    measurements: Mapping[str, Any] = report.get("measurements") or {}
    if evidence == "nitro" and measurements:
        return _nitro_graph(report, core, measurements, kind)
    if evidence in ("quote", "dstack") and measurements:
        return _tdx_graph(report, core, measurements, kind)
    error = report.get("error") or {}
    return TrustGraph(
        (
            DataObject(
                "evidence",
                "Evidence",
                "evidence",
                "failed",
                "Not readable as attestation evidence",
                {"problem": _short(error.get("message"), 60)},
            ),
        ),
        (),
    )


def _nitro_graph(report: Mapping[str, Any], core: Mapping[str, Any], m: Mapping[str, Any], kind: str) -> TrustGraph:
    simulated = bool(report.get("simulated"))
    nsm = DataObject(
        "nitro-nsm",
        "Simulated NSM (local CA)" if simulated else "AWS Nitro hypervisor (NSM)",
        "hardware",
        _phase(report, "hardware"),
        "Signs the attestation document; its certificate chains to the "
        + ("simulator's root" if simulated else "AWS Nitro Enclaves root"),
        {"module": _short(core.get("module_id"), 16), "made": _short(core.get("timestamp"), 19)},
    )
    image = DataObject(
        "nitro-image",
        "Enclave image",
        "os",
        _phase(report, "os"),
        "Kernel and boot ramdisk (PCR1) inside the image (PCR0)",
        {"PCR0": _short(m.get("pcr0")), "PCR1": _short(m.get("pcr1")), "debug": "yes" if core.get("debug") else "no"},
        (MeasuredBy("nitro-nsm", "PCR0", "pcrs[0]"), MeasuredBy("nitro-nsm", "PCR1", "pcrs[1]")),
    )
    code = DataObject(
        "nitro-app",
        "Application",
        "code",
        _phase(report, "source"),
        "The enclave application (PCR2)",
        {"PCR2": _short(m.get("pcr2"))},
        (MeasuredBy("nitro-nsm", "PCR2", "pcrs[2]"),),
        (Calculation(("enclave image file",), "nitro-cli describe-eif", ("PCR0", "PCR1", "PCR2")),),
    )
    main = DataObject(
        "nitro-enclave",
        _short(report.get("subject") or "Enclave", 24),
        kind,
        _overall(report),
        "The enclave as a whole: its IAM role (PCR3), parent instance (PCR4) and signer (PCR8)",
        {"PCR3": _short(m.get("pcr3")), "PCR4": _short(m.get("pcr4")), "PCR8": _short(m.get("pcr8"))},
        (MeasuredBy("nitro-nsm", "PCR3", "pcrs[3]"), MeasuredBy("nitro-nsm", "PCR4", "pcrs[4]")),
    )
    return TrustGraph(
        (main, code, image, nsm),
        (
            Relationship("nitro-enclave", "nitro-app", "runs"),
            Relationship("nitro-app", "nitro-image", "runs on"),
            Relationship("nitro-image", "nitro-nsm", "runs on"),
        ),
    )


def _overall(report: Mapping[str, Any]) -> str:
    return {"verified": "passed", "failed": "failed", "incomplete": "error"}.get(str(report.get("verdict")), "skipped")


def _tdx_graph(report: Mapping[str, Any], core: Mapping[str, Any], m: Mapping[str, Any], kind: str) -> TrustGraph:
    registry = next((p.get("registry") for p in report.get("phases", []) if p["id"] == "os"), None) or {}
    matched = registry.get("matched") or {}
    hardware = DataObject(
        "tdx-platform",
        "Intel TDX platform",
        "hardware",
        _phase(report, "hardware"),
        "CPU and TDX module; Intel's collateral says whether its TCB is up to date",
        {
            "FMSPC": str(core.get("fmspc") or "unknown"),
            "TCB": str(core.get("tcb_status") or "not checked"),
            "advisories": str(len(core.get("advisory_ids") or [])),
        },
    )
    os_fields = {"MRTD": _short(m.get("mrtd")), "RTMR0": _short(m.get("rtmr0")), "RTMR1": _short(m.get("rtmr1"))}
    os_fields["registry"] = _short(matched.get("id") or "no match", 24)
    os_object = DataObject(
        "tdx-os",
        _short(matched.get("name") or "OS image", 26),
        "os",
        _phase(report, "os"),
        "Firmware, kernel and initrd, compared with the registry of known OS images",
        os_fields,
        tuple(
            MeasuredBy("tdx-platform", name.upper(), f"quote.{name}") for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2")
        ),
        (Calculation(("os_image_hash", "vm shape"), "OS registry lookup", ("MRTD", "RTMR0", "RTMR1", "RTMR2")),),
    )
    objects = [hardware, os_object]
    relationships = [Relationship("tdx-os", "tdx-platform", "runs on")]
    app = core.get("app") if isinstance(core.get("app"), Mapping) else None
    main_fields = {"report_data": _short(m.get("report_data"))}
    if app is not None:
        code = DataObject(
            "tdx-code",
            "Application code",
            "code",
            _phase(report, "source"),
            "docker compose file, measured into RTMR3 through the event log",
            {
                "compose": _short(app.get("compose_hash")),
                "file": "verified" if app.get("compose_verified") else "not given",
                "RTMR3": _short(m.get("rtmr3")),
            },
            (MeasuredBy("tdx-platform", "RTMR3", "quote.rtmr3"),),
            (
                Calculation(("app-compose.json",), "SHA-256", ("compose_hash",)),
                Calculation(("event log",), "replay (SHA-384 extend)", ("RTMR3",)),
            ),
        )
        objects.append(code)
        relationships.append(Relationship("tdx-code", "tdx-os", "runs on"))
        main_fields = {
            "app id": _short(app.get("app_id")),
            "instance": _short(app.get("instance_id")),
            **main_fields,
        }
    main = DataObject(
        "tdx-main",
        _short(report.get("subject") or "Trust domain", 24),
        kind,
        _overall(report),
        "The confidential VM as a whole, and what it commits to in REPORTDATA",
        main_fields,
        (MeasuredBy("tdx-platform", "report_data", "quote.report_data"),),
    )
    objects.insert(0, main)
    relationships.insert(0, Relationship("tdx-main", "tdx-code" if app is not None else "tdx-os", "runs"))
    provider = app.get("key_provider") if app is not None else None
    if isinstance(provider, Mapping) and provider.get("name"):
        objects.append(
            DataObject(
                "tdx-key-provider",
                f"Key provider: {provider['name']}",
                "kms",
                "skipped",
                "Where the app's disk and app keys come from (verified on its own page, if registered)",
                {"id": _short(provider.get("id"))},
                (MeasuredBy("tdx-platform", "key-provider", "event log (RTMR3)"),),
            )
        )
        relationships.append(Relationship("tdx-main", "tdx-key-provider", "gets keys from"))
    return TrustGraph(tuple(objects), tuple(relationships))


# --- drawing --------------------------------------------------------------------------------------------------

_COLOURS = {
    "passed": ("#15803d", "#f0fdf4"),
    "failed": ("#b91c1c", "#fef2f2"),
    "error": ("#b45309", "#fffbeb"),
    "not_checked": ("#6b7280", "#f3f4f6"),
    "skipped": ("#4b5563", "#f9fafb"),
}
_LABELS = {
    "passed": "verified",
    "failed": "failed",
    "error": "could not check",
    "not_checked": "not pinned",
    "skipped": "not checked here",
}
_WIDTH, _GAP_X, _LINE, _PAD = 214, 58, 17, 12


def _height(obj: DataObject) -> int:
    return 58 + _LINE * min(len(obj.fields), 4)


def render_svg(graph: TrustGraph) -> str:
    """The graph as one ``<svg>`` element: objects left to right along ``runs``/``runs on``, others below."""
    if not graph.objects:
        return ""
    order = _chain(graph)
    below = [o for o in graph.objects if o.id not in {c.id for c in order}]
    positions: dict[str, tuple[int, int, int]] = {}
    x = 10
    top = 30
    for obj in order:
        positions[obj.id] = (x, top, _height(obj))
        x += _WIDTH + _GAP_X
    row_height = max((_height(o) for o in order), default=100)
    for index, obj in enumerate(below):
        positions[obj.id] = (10 + index * (_WIDTH + _GAP_X), top + row_height + 70, _height(obj))
    width = max(p[0] for p in positions.values()) + _WIDTH + 10
    height = max(p[1] + p[2] for p in positions.values()) + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="trust-graph" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="Trust graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#6b7280"/></marker></defs>',
    ]
    for rel in graph.relationships:
        if rel.source not in positions or rel.target not in positions:
            continue
        parts.append(_edge(positions[rel.source], positions[rel.target], rel.label))
    for obj in graph.objects:
        parts.append(_node(obj, *positions[obj.id]))
    parts.append("</svg>")
    return "".join(parts)


def _chain(graph: TrustGraph) -> list[DataObject]:
    by_id = {o.id: o for o in graph.objects}
    follows = {r.source: r.target for r in graph.relationships if r.label in ("runs", "runs on")}
    targets = set(follows.values())
    start = next((o for o in graph.objects if o.id in follows and o.id not in targets), graph.objects[0])
    chain = [start]
    while chain[-1].id in follows and follows[chain[-1].id] in by_id and len(chain) < len(by_id):
        chain.append(by_id[follows[chain[-1].id]])
    return chain


def _edge(source: tuple[int, int, int], target: tuple[int, int, int], label: str) -> str:
    sx, sy, sh = source
    tx, ty, _ = target
    if ty == sy:  # same row: left to right
        x1, y1, x2, y2 = sx + _WIDTH, sy + 40, tx, ty + 40
    else:  # below
        x1, y1, x2, y2 = sx + _WIDTH // 2, sy + sh, tx + _WIDTH // 2, ty
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    return (
        f'<g class="edge"><line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#9ca3af" stroke-width="1.5" '
        f'marker-end="url(#arrow)"/><text x="{mx:.0f}" y="{my - 6:.0f}" text-anchor="middle" font-size="11" '
        f'fill="#4b5563">{escape(label)}</text></g>'
    )


def _node(obj: DataObject, x: int, y: int, height: int) -> str:
    stroke, fill = _COLOURS.get(obj.status, _COLOURS["skipped"])
    lines = [
        f'<g class="node node-{escape(obj.status)}" data-id="{escape(obj.id)}" data-kind="{escape(obj.kind)}">',
        f"<title>{escape(obj.description)}</title>",
        f'<rect x="{x}" y="{y}" width="{_WIDTH}" height="{height}" rx="8" fill="{fill}" stroke="{stroke}" '
        'stroke-width="1.5"/>',
        f'<rect x="{x}" y="{y}" width="6" height="{height}" rx="3" fill="{stroke}"/>',
        f'<text x="{x + _PAD + 4}" y="{y + 20}" font-size="13" font-weight="600" fill="#111827">'
        f"{escape(obj.name)}</text>",
        f'<text x="{x + _PAD + 4}" y="{y + 37}" font-size="11" fill="{stroke}">{escape(obj.kind.upper())} · '
        f"{escape(_LABELS.get(obj.status, obj.status))}</text>",
    ]
    for index, (name, value) in enumerate(list(obj.fields.items())[:4]):
        ty = y + 56 + index * _LINE
        lines.append(
            f'<text x="{x + _PAD + 4}" y="{ty}" font-size="11" fill="#374151"><tspan font-weight="600">'
            f'{escape(name)}</tspan> <tspan font-family="ui-monospace, monospace">{escape(value)}</tspan></text>'
        )
    lines.append("</g>")
    return "".join(lines)
