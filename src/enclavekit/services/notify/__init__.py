"""notify: confidential push notifications (the World Chat backend and the Nitro notification prototype).

A chat app seals its push ID to the attested enclave's X25519 key; the host parts store, queue and batch only
sealed boxes; the enclave opens them at the last moment and calls the push provider over TLS that ends inside
it. See ``docs/notify.md``.

The three parts, as in every service: :mod:`~enclavekit.services.notify.enclave_app` (the only code that sees
plaintext), the host side — :mod:`~enclavekit.services.notify.api` (HTTP), :mod:`~enclavekit.services.notify.store`
(SQL), :mod:`~enclavekit.services.notify.ingest` and :mod:`~enclavekit.services.notify.dispatcher` (workers) —
and :mod:`~enclavekit.services.notify.client` for chat apps. Nothing is imported here, so the enclave loads only
what it uses.
"""

__all__: list[str] = []
