"""Key policies: AWS JSON policy documents, parsed once and evaluated like KMS evaluates them.

A key policy is what decides whether a request may use a key. This module reads the AWS policy language (the
subset that matters for attested key release) and evaluates it on a :class:`RequestContext` built from the
request and, when the request carries a ``Recipient``, from its *verified* attestation document:

* ``kms:RecipientAttestation:ImageSha384`` — PCR0 of the document, lower-case hex;
* ``kms:RecipientAttestation:PCR<N>`` — PCR *N* (0..31), lower-case hex;
* ``kms:EncryptionContext:<key>`` — the value of that encryption-context pair.

Evaluation follows AWS: an explicit ``Deny`` wins, else some ``Allow`` must match, else the request is denied;
the operators of a ``Condition`` block, the keys under an operator, must all hold; the values of one key are
alternatives; a key absent from the request fails the positive operators and satisfies the negated ones
(``...IfExists`` is satisfied by absence). One rule is stricter than AWS, to fail closed: an ``Allow`` whose
conditions name an attestation key never grants a request that has no verified attestation document, whatever
the operator.

Documents are checked when parsed and refused (:class:`MalformedPolicyDocument`) when they use what this module
cannot evaluate faithfully (``NotAction``, ``NotPrincipal``, ``ForAnyValue:``, unknown condition keys,
operators other than the String ones and ``Null``): a policy that means something else here than on AWS is worse
than a clear error. ``Principal`` and ``Resource`` are required and checked for shape but not evaluated: the
emulator does not authenticate callers, and a key policy only ever governs its own key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from enclavekit.kms.errors import AccessDenied, MalformedPolicyDocument

__all__ = [
    "ATTESTATION_PREFIX",
    "MAX_POLICY_SIZE",
    "Condition",
    "Decision",
    "KeyPolicy",
    "RequestContext",
    "Statement",
]

MAX_POLICY_SIZE: Final = 32 * 1024
"""AWS's limit on a key policy (characters)."""
MAX_STATEMENTS: Final = 100
ATTESTATION_PREFIX: Final = "kms:recipientattestation:"
CONTEXT_PREFIX: Final = "kms:encryptioncontext:"
_IMAGE_SHA384: Final = ATTESTATION_PREFIX + "imagesha384"
_PCR_KEY: Final = re.compile(r"^kms:recipientattestation:pcr(0|[1-9][0-9]?)$")
_HEX384: Final = re.compile(r"^[0-9a-fA-F]{96}$")
_VERSIONS: Final = frozenset({"2012-10-17", "2008-10-17"})
_STRING_OPERATORS: Final = frozenset(
    {
        "StringEquals",
        "StringNotEquals",
        "StringEqualsIgnoreCase",
        "StringNotEqualsIgnoreCase",
        "StringLike",
        "StringNotLike",
    }
)
_EQUALITY: Final = frozenset({"StringEquals", "StringEqualsIgnoreCase"})
_STATEMENT_FIELDS: Final = frozenset({"Sid", "Effect", "Principal", "Action", "Resource", "Condition"})
_UNSUPPORTED_FIELDS: Final = frozenset({"NotAction", "NotPrincipal", "NotResource"})


def _normalize_key(key: str) -> str:
    """Condition key names are case-insensitive; the encryption-context key after the prefix is not."""
    lowered = key.lower()
    if lowered.startswith(CONTEXT_PREFIX):
        return CONTEXT_PREFIX + key[len(CONTEXT_PREFIX) :]
    return lowered


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The condition keys of one request. ``attested`` is true only with a *verified* attestation document."""

    values: Mapping[str, str]
    attested: bool = False

    @classmethod
    def build(
        cls,
        *,
        pcrs: Mapping[int, bytes] | None = None,
        encryption_context: Mapping[str, str] | None = None,
    ) -> RequestContext:
        """The context of a request: ``pcrs`` from its verified attestation document (None: no Recipient)."""
        values: dict[str, str] = {}
        for key, value in (encryption_context or {}).items():
            values[CONTEXT_PREFIX + key] = value
        if pcrs is not None:
            for index, digest in pcrs.items():
                values[f"{ATTESTATION_PREFIX}pcr{index}"] = digest.hex()
            if 0 in pcrs:
                values[_IMAGE_SHA384] = pcrs[0].hex()
        return cls(MappingProxyType(values), attested=pcrs is not None)


@dataclass(frozen=True, slots=True)
class Condition:
    """One test: ``operator`` applied to condition key ``key`` (normalized) against ``values`` (any may match)."""

    operator: str
    key: str
    values: tuple[str, ...]
    if_exists: bool = False

    @property
    def names_attestation(self) -> bool:
        return self.key.startswith(ATTESTATION_PREFIX)

    def holds(self, context: RequestContext) -> bool:
        actual = context.values.get(self.key)
        if self.operator == "Null":
            return (actual is None) == (self.values[0] == "true")
        negated = "Not" in self.operator
        if actual is None:
            return self.if_exists or negated
        matched = any(self._match(expected, actual) for expected in self.values)
        return not matched if negated else matched

    def _match(self, expected: str, actual: str) -> bool:
        if self.operator in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
            return expected.casefold() == actual.casefold()
        if self.operator in ("StringLike", "StringNotLike"):
            return _wildcard_match(expected, actual)
        return expected == actual

    def describe(self) -> str:
        suffix = "IfExists" if self.if_exists else ""
        return f"{self.operator}{suffix} {self.key}"


def _wildcard_match(pattern: str, text: str) -> bool:
    """``*`` (any run) and ``?`` (any one character) matching, in O(len(pattern) * len(text)) at worst."""
    p = t = 0
    star = -1
    resume = 0
    while t < len(text):
        if p < len(pattern) and pattern[p] in ("?", text[t]) and pattern[p] != "*":
            p += 1
            t += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, t
            p += 1
        elif star >= 0:
            p = star + 1
            resume += 1
            t = resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement: ``effect`` for the ``actions`` (lower-case patterns) when every condition holds."""

    effect: Literal["Allow", "Deny"]
    actions: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()
    sid: str | None = None
    number: int = 0

    def applies_to(self, action: str) -> bool:
        wanted = action.lower()
        return any(_wildcard_match(pattern, wanted) for pattern in self.actions)

    @property
    def names_attestation(self) -> bool:
        return any(condition.names_attestation for condition in self.conditions)

    def first_failed(self, context: RequestContext) -> Condition | None:
        """The first condition that does not hold (None: all hold)."""
        for condition in self.conditions:
            if not condition.holds(context):
                return condition
        return None

    @property
    def label(self) -> str:
        return f"statement {self.sid!r}" if self.sid else f"statement {self.number}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of evaluating a policy: ``allowed``, and why (no secrets: keys, operators, statement ids)."""

    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """A parsed key policy. ``text`` is the document as given (returned by GetKeyPolicy)."""

    statements: tuple[Statement, ...]
    text: str = field(compare=False)

    @classmethod
    def from_json(cls, text: str) -> KeyPolicy:
        """Parse a policy document; raise :class:`MalformedPolicyDocument` for anything it cannot evaluate."""
        if not isinstance(text, str):
            raise MalformedPolicyDocument("the policy must be a JSON string")
        if not 0 < len(text) <= MAX_POLICY_SIZE:
            raise MalformedPolicyDocument(f"the policy is {len(text)} characters; allowed 1..{MAX_POLICY_SIZE}")
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise MalformedPolicyDocument("the policy is not valid JSON") from exc
        if not isinstance(document, dict):
            raise MalformedPolicyDocument("the policy must be a JSON object")
        unknown = set(document) - {"Version", "Id", "Statement"}
        if unknown:
            raise MalformedPolicyDocument(f"unknown top-level field(s) {sorted(unknown)}")
        version = document.get("Version")
        if version is not None and version not in _VERSIONS:
            raise MalformedPolicyDocument(f"policy Version {version!r} is not 2012-10-17")
        raw = document.get("Statement")
        raw_statements = [raw] if isinstance(raw, dict) else raw
        if not isinstance(raw_statements, list) or not raw_statements:
            raise MalformedPolicyDocument("the policy has no Statement: an empty policy would deny everything")
        if len(raw_statements) > MAX_STATEMENTS:
            raise MalformedPolicyDocument(f"more than {MAX_STATEMENTS} statements")
        statements = tuple(_statement(s, number) for number, s in enumerate(raw_statements, 1))
        return cls(statements, text)

    @classmethod
    def default(cls, account: str) -> KeyPolicy:
        """AWS's default key policy: the owning account may do anything (the emulator has no IAM behind it)."""
        document = {
            "Version": "2012-10-17",
            "Id": "key-default-1",
            "Statement": [
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            ],
        }
        return cls.from_json(json.dumps(document, indent=2))

    @property
    def names_attestation(self) -> bool:
        return any(statement.names_attestation for statement in self.statements)

    def evaluate(self, action: str, context: RequestContext) -> Decision:
        """Decide ``action`` (``kms:Decrypt``...) for ``context``; never raises."""
        allowed_by: Statement | None = None
        refusals: list[str] = []
        for statement in self.statements:
            if not statement.applies_to(action):
                continue
            failed = statement.first_failed(context)
            if statement.effect == "Deny":
                if failed is None:
                    return Decision(False, f"{action} is explicitly denied by {statement.label} of the key policy")
                continue
            if statement.names_attestation and not context.attested:
                refusals.append(f"{statement.label} requires a verified attestation document (Recipient)")
            elif failed is not None:
                refusals.append(f"{statement.label}: condition {failed.describe()} is not satisfied")
            elif allowed_by is None:
                allowed_by = statement
        if allowed_by is not None:
            return Decision(True, f"allowed by {allowed_by.label}")
        detail = "; ".join(refusals) if refusals else f"no statement allows {action}"
        return Decision(False, f"the key policy does not allow {action}: {detail}")

    def authorize(self, action: str, context: RequestContext, *, resource: str) -> None:
        """Raise :class:`AccessDenied` unless the policy allows ``action`` for ``context``."""
        decision = self.evaluate(action, context)
        if not decision.allowed:
            raise AccessDenied(f"not authorized to perform {action} on resource {resource}: {decision.reason}")


# --- parsing -------------------------------------------------------------------------------------------------------


def _statement(raw: Any, number: int) -> Statement:
    where = f"statement {number}"
    if not isinstance(raw, dict):
        raise MalformedPolicyDocument(f"{where} is not a JSON object")
    unsupported = _UNSUPPORTED_FIELDS & set(raw)
    if unsupported:
        raise MalformedPolicyDocument(f"{where}: {sorted(unsupported)} not supported by the emulator")
    unknown = set(raw) - _STATEMENT_FIELDS
    if unknown:
        raise MalformedPolicyDocument(f"{where}: unknown field(s) {sorted(unknown)}")
    sid = raw.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise MalformedPolicyDocument(f"{where}: Sid must be a string")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise MalformedPolicyDocument(f"{where}: Effect must be Allow or Deny")
    _principal(raw.get("Principal"), where)
    actions = _strings(raw.get("Action"), f"{where}: Action")
    resources = _strings(raw.get("Resource"), f"{where}: Resource")
    del resources  # a key policy governs its own key: Resource is checked for shape only
    conditions = _conditions(raw.get("Condition", {}), where)
    return Statement(
        effect="Allow" if effect == "Allow" else "Deny",
        actions=tuple(a.lower() for a in actions),
        conditions=conditions,
        sid=sid,
        number=number,
    )


def _principal(value: Any, where: str) -> None:
    if value == "*":
        return
    if isinstance(value, dict) and value and set(value) <= {"AWS", "Service", "Federated"}:
        for entry in value.values():
            _strings(entry, f"{where}: Principal")
        return
    raise MalformedPolicyDocument(f'{where}: Principal must be "*" or {{"AWS": ...}}')


def _strings(value: Any, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise MalformedPolicyDocument(f"{what} must be a non-empty string or list of strings")
    return tuple(items)


def _conditions(raw: Any, where: str) -> tuple[Condition, ...]:
    if not isinstance(raw, dict):
        raise MalformedPolicyDocument(f"{where}: Condition must be a JSON object")
    conditions: list[Condition] = []
    for operator_name, tests in raw.items():
        operator, if_exists = _operator(operator_name, where)
        if not isinstance(tests, dict) or not tests:
            raise MalformedPolicyDocument(f"{where}: {operator_name} must map condition keys to values")
        for key_name, raw_values in tests.items():
            key = _condition_key(key_name, where)
            values = _condition_values(raw_values, f"{where}: {operator_name} {key_name}")
            if operator == "Null" and (len(values) != 1 or values[0] not in ("true", "false")):
                raise MalformedPolicyDocument(f"{where}: Null takes true or false")
            if key.startswith(ATTESTATION_PREFIX) and operator in _EQUALITY:
                bad = [v for v in values if not _HEX384.match(v)]
                if bad:
                    raise MalformedPolicyDocument(
                        f"{where}: {key_name} values must be SHA-384 digests (96 hex digits); got {bad[0][:100]!r}"
                    )
            conditions.append(Condition(operator, key, values, if_exists))
    return tuple(conditions)


def _operator(name: Any, where: str) -> tuple[str, bool]:
    if not isinstance(name, str):
        raise MalformedPolicyDocument(f"{where}: condition operator must be a string")
    if ":" in name:
        raise MalformedPolicyDocument(f"{where}: set operators ({name}) are not supported by the emulator")
    base, if_exists = (name[: -len("IfExists")], True) if name.endswith("IfExists") else (name, False)
    if base in _STRING_OPERATORS or (base == "Null" and not if_exists):
        return base, if_exists
    raise MalformedPolicyDocument(f"{where}: condition operator {name!r} is not supported by the emulator")


def _condition_key(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise MalformedPolicyDocument(f"{where}: condition keys are non-empty strings")
    key = _normalize_key(name)
    if key == _IMAGE_SHA384:
        return key
    match = _PCR_KEY.match(key)
    if match is not None and int(match.group(1)) < 32:
        return key
    if key.startswith(CONTEXT_PREFIX) and len(key) > len(CONTEXT_PREFIX):
        return key
    raise MalformedPolicyDocument(
        f"{where}: condition key {name!r} is not evaluated by the emulator (supported: "
        "kms:RecipientAttestation:ImageSha384, kms:RecipientAttestation:PCR0..PCR31, kms:EncryptionContext:<key>)"
    )


def _condition_values(raw: Any, what: str) -> tuple[str, ...]:
    items: Iterable[Any] = raw if isinstance(raw, list) else [raw]
    values: list[str] = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, str):
            values.append(item)
        elif isinstance(item, int):
            values.append(str(item))
        else:
            raise MalformedPolicyDocument(f"{what}: values must be strings")
    if not values:
        raise MalformedPolicyDocument(f"{what}: no values")
    return tuple(values)
