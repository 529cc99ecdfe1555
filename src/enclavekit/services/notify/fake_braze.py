"""A fake Braze for tests and the local stack: checks ``POST /messages/send`` as Braze documents it.

It answers like Braze (``201 {"dispatch_id", "message": "success"}``; ``400``/``401`` with ``{"message"}``;
``429`` with ``Retry-After``), honours ``Idempotency-Key`` (a repeated key gets the first answer and is not
delivered again), and records every accepted delivery. Tests use it in-process (:class:`FakeBraze` with
:class:`enclavekit.hostkit.server.ServerThread`) to inject 429/500 answers or to hold a request
while they kill the enclave; ``enclavekit notify capture-server`` runs it as the local stack's capture
provider, appending each delivery to a JSON-lines file that ``enclavekit notify captured`` prints.

What is checked (Braze REST API, "Send messages immediately via API only"): a Bearer API key; a JSON body
whose top-level keys are Braze's; at most 50 ``external_user_ids`` and 50 ``user_aliases`` (each exactly
``alias_name`` and ``alias_label``, non-empty strings); a target unless ``broadcast`` is true (and no target
with it); ``messages`` an object of known message types; ``apple_push`` with an ``alert`` (string or object)
unless ``content-available``; ``android_push`` with a string ``alert``; ``extra`` objects of string values.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["Delivery", "FakeBraze", "validate_send"]

MAX_BODY = 1024 * 1024
_TOP_LEVEL = frozenset(
    {
        "broadcast",
        "external_user_ids",
        "user_aliases",
        "segment_id",
        "audience",
        "campaign_id",
        "send_id",
        "override_frequency_capping",
        "recipient_subscription_state",
        "messages",
    }
)
_MESSAGE_TYPES = frozenset(
    {"apple_push", "android_push", "kindle_push", "web_push", "email", "sms", "webhook", "content_card"}
)


def _extra(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return f"{where}.extra must be an object of string values"
    return None


def validate_send(body: Any) -> str | None:
    """None if ``body`` is a valid ``/messages/send`` request, else Braze's kind of error message."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object"
    unknown = set(body) - _TOP_LEVEL
    if unknown:
        return f"Unknown parameter(s): {', '.join(sorted(unknown))}"
    users = body.get("external_user_ids", [])
    aliases = body.get("user_aliases", [])
    if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
        return "external_user_ids must be an array of strings"
    if not isinstance(aliases, list):
        return "user_aliases must be an array"
    if len(users) > 50 or len(aliases) > 50:
        return "You can only specify up to 50 external_user_ids and 50 user_aliases per request"
    for alias in aliases:
        if not isinstance(alias, dict) or set(alias) != {"alias_name", "alias_label"}:
            return "Each user alias must have exactly alias_name and alias_label"
        if not all(isinstance(alias[k], str) and alias[k] for k in ("alias_name", "alias_label")):
            return "alias_name and alias_label must be non-empty strings"
    broadcast = body.get("broadcast", False)
    if not isinstance(broadcast, bool):
        return "broadcast must be a boolean"
    targeted = bool(users or aliases or body.get("segment_id") or body.get("audience"))
    if broadcast and (users or aliases):
        return "broadcast cannot be true when recipients are specified"
    if not broadcast and not targeted:
        return "Please specify recipients (external_user_ids, user_aliases, segment_id or audience) or broadcast"
    messages = body.get("messages")
    if not isinstance(messages, dict) or not messages:
        return "messages must be a non-empty object"
    if set(messages) - _MESSAGE_TYPES:
        return f"Unknown message type(s): {', '.join(sorted(set(messages) - _MESSAGE_TYPES))}"
    apple = messages.get("apple_push")
    if apple is not None:
        if not isinstance(apple, dict):
            return "apple_push must be an object"
        alert = apple.get("alert")
        if alert is None and apple.get("content-available") is not True:
            return "apple_push requires an alert unless content-available is true"
        if alert is not None and not isinstance(alert, str | dict):
            return "apple_push.alert must be a string or an object"
        if error := _extra(apple.get("extra"), "apple_push"):
            return error
    android = messages.get("android_push")
    if android is not None:
        if not isinstance(android, dict) or not isinstance(android.get("alert"), str):
            return "android_push requires a string alert"
        if "title" in android and not isinstance(android["title"], str):
            return "android_push.title must be a string"
        if error := _extra(android.get("extra"), "android_push"):
            return error
    return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One accepted ``/messages/send``: who (aliases), what (the messages), under which idempotency key."""

    idempotency_key: str | None
    aliases: tuple[str, ...]
    messages: dict[str, Any]

    @property
    def extra(self) -> dict[str, str]:
        push = self.messages.get("apple_push") or self.messages.get("android_push") or {}
        return dict(push.get("extra") or {})

    def captured(self) -> dict[str, Any]:
        """The ``enclavekit notify captured`` record: ``{message_id, topic, push_ids, payload}``."""
        extra = self.extra
        return {
            "message_id": extra.get("messageId"),
            "topic": extra.get("topic"),
            "push_ids": list(self.aliases),
            "payload": extra,
        }


@dataclass
class FakeBraze:
    """The fake's state and its ASGI app (``.app``). Thread-safe reads of ``deliveries``."""

    api_key: str
    record: Path | None = None
    keep_deliveries: bool = True
    deliveries: list[Delivery] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    requests: int = 0
    replays: int = 0
    recipients: int = 0
    first_seen: dict[str, float] = field(default_factory=dict)
    """When the first delivery of each ``messageId`` arrived (``time.time()``), for latency measurements."""
    arrived: threading.Event = field(default_factory=threading.Event)
    _answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    _failures: deque[int] = field(default_factory=deque)
    _hold: int = 0
    _release: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (429, 500, ...) before accepting again."""
        with self._lock:
            self._failures.extend(statuses)

    def hold_next(self, count: int = 1) -> None:
        """Accept (and record) the next ``count`` requests but do not answer them until :meth:`release`."""
        with self._lock:
            self._hold += count
            self._release.clear()
            self.arrived.clear()

    def release(self) -> None:
        self._release.set()

    def delivered_pairs(self) -> list[tuple[str | None, str]]:
        """Every (messageId, alias) delivered, with repeats: a repeat is a duplicate delivery."""
        with self._lock:
            return [(d.extra.get("messageId"), alias) for d in self.deliveries for alias in d.aliases]

    def _error(self, status: int, message: str) -> JSONResponse:
        self.rejected.append(message)
        return JSONResponse({"message": message}, status_code=status)

    async def send(self, request: Request) -> JSONResponse:
        self.requests += 1
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Invalid API key")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return self._error(400, "Content-Type must be application/json")
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            headers = {"Retry-After": "0"} if failure == 429 else {}
            return JSONResponse({"message": f"injected {failure}"}, status_code=failure, headers=headers)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return self._error(413, "Request body too large")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._error(400, "Invalid JSON")
        if error := validate_send(body):
            return self._error(400, error)
        key = request.headers.get("idempotency-key")
        with self._lock:
            if key is not None and key in self._answers:
                self.replays += 1
                status, answer = self._answers[key]
                return JSONResponse(answer, status_code=status)
            answer = {"dispatch_id": uuid.uuid4().hex, "message": "success"}
            if key is not None:
                self._answers[key] = (201, answer)
            delivery = Delivery(key, tuple(a["alias_name"] for a in body.get("user_aliases", [])), body["messages"])
            if self.keep_deliveries:
                self.deliveries.append(delivery)
            self.recipients += len(delivery.aliases)
            self.first_seen.setdefault(str(delivery.extra.get("messageId")), time.time())
            hold = self._hold > 0
            if hold:
                self._hold -= 1
        if self.record is not None:
            with self.record.open("a") as sink:
                sink.write(json.dumps(delivery.captured()) + "\n")
        if hold:
            self.arrived.set()
            await asyncio.to_thread(self._release.wait, 60)
        return JSONResponse(answer, status_code=201)

    async def list_deliveries(self, request: Request) -> JSONResponse:
        with self._lock:
            return JSONResponse([d.captured() for d in self.deliveries])

    async def stats(self, request: Request) -> JSONResponse:
        with self._lock:
            return JSONResponse(
                {
                    "requests": self.requests,
                    "recipients": self.recipients,
                    "replays": self.replays,
                    "rejected": len(self.rejected),
                    "first_seen": self.first_seen if request.query_params.get("arrivals") else {},
                }
            )

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/messages/send", self.send, methods=["POST"]),
                Route("/_fake/deliveries", self.list_deliveries, methods=["GET"]),
                Route("/_fake/stats", self.stats, methods=["GET"]),
            ]
        )
