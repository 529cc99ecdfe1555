"""Ingest's filter rules (the reference's), on a real database; the dispatcher's batch bookkeeping."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclavekit.services.notify.dispatcher import split_batches
from enclavekit.services.notify.ingest import ChatMessage, Ingestor, message_id, sender_hmac
from enclavekit.services.notify.metrics import Metrics
from enclavekit.services.notify.settings import NotifySettings
from enclavekit.services.notify.store import NotifyStore, open_store
from enclavekit.services.notify.wire import Notification, Recipient

GROUP = "/xmtp/mls/1/g-abcdef"
WELCOME = "/xmtp/mls/1/w-abcdef"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[NotifyStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    yield opened
    opened.engine.dispose()


def _ingestor(store: NotifyStore, page_size: int = 500) -> Ingestor:
    js: Any = None  # build() never publishes
    return Ingestor(NotifySettings(), store, js, Metrics(), page_size=page_size)


def _message(topic: str, data: bytes, sender: str = "", **kwargs: Any) -> ChatMessage:
    return ChatMessage(topic=topic, data_b64=base64.b64encode(data).decode(), sender_hmac=sender, **kwargs)


def test_only_group_and_welcome_topics_are_notified(store: NotifyStore) -> None:
    ingestor = _ingestor(store)
    for topic in ("/xmtp/mls/1/x-abc", "/xmtp/mls/2/g-abc", "/other", "g-abc"):
        assert ingestor.build(_message(topic, b"m"), now=time.time()) == ("filtered_topic", None)


def test_group_messages_that_should_not_push_are_skipped_but_welcomes_are_not(store: NotifyStore) -> None:
    store.subscribe([(WELCOME, os.urandom(42).hex(), int(time.time()) + 3600)], "aa" * 60)
    ingestor = _ingestor(store)
    assert ingestor.build(_message(GROUP, b"m", should_push=False), now=time.time())[0] == "should_not_push"
    decision, notification = ingestor.build(_message(WELCOME, b"m", should_push=False), now=time.time())
    assert decision == "queued" and notification is not None and notification.message_kind == "v3-welcome"


def test_the_sender_is_recognised_by_hmac_and_push_ids_are_deduplicated(store: NotifyStore) -> None:
    now = int(time.time())
    sender_key, other_key, same_device_key = (os.urandom(42).hex() for _ in range(3))
    store.subscribe([(GROUP, sender_key, now + 3600)], "aa" * 60)
    store.subscribe([(GROUP, other_key, now + 3600), (GROUP, same_device_key, now + 3600)], "bb" * 60)
    store.unsubscribe(GROUP, same_device_key, "cc" * 60, now=now)
    data = os.urandom(50)
    decision, notification = _ingestor(store).build(
        _message(GROUP, data, sender_hmac(sender_key, data)), now=time.time()
    )
    assert decision == "queued" and notification is not None
    assert [r.encrypted_push_id for r in notification.recipients] == ["bb" * 60]
    assert notification.recipients[0].deletion_requests == ("cc" * 60,)  # tombstones travel with the recipient
    # A wrong sender HMAC excludes nobody.
    _, everyone = _ingestor(store).build(_message(GROUP, data, "00" * 32), now=time.time())
    assert everyone is not None and len(everyone.recipients) == 2


def test_subscriptions_are_read_page_by_page(store: NotifyStore) -> None:
    now = int(time.time())
    for i in range(37):
        store.subscribe([(GROUP, os.urandom(42).hex(), now + 3600)], f"{i:02x}" * 60)
    _, notification = _ingestor(store, page_size=5).build(_message(GROUP, b"m"), now=now)
    assert notification is not None and len(notification.recipients) == 37


def test_no_subscribers_means_nothing_is_queued(store: NotifyStore) -> None:
    assert _ingestor(store).build(_message(GROUP, b"m"), now=time.time()) == ("no_recipients", None)


def test_the_idempotency_id_is_stable_and_given_ids_win() -> None:
    assert message_id(_message(GROUP, b"m")) == message_id(_message(GROUP, b"m")) != message_id(_message(GROUP, b"n"))
    assert message_id(_message(GROUP, b"m", id="xmtp-7")) == "xmtp-7"


def test_a_retry_keeps_each_batch_together() -> None:
    recipients = tuple(Recipient(encrypted_push_id=f"{i:02x}" * 60) for i in range(7))
    first = Notification(id="m", topic=GROUP, encrypted_message_base64="", recipients=recipients, created_at=0)
    assert [len(b) for b in split_batches(first, 3)] == [3, 3, 1]
    retry = first.model_copy(update={"recipients": recipients[:5], "batches": (2, 3)})
    assert [len(b) for b in split_batches(retry, 50)] == [2, 3]
