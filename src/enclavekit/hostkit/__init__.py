"""The host kit: what every enclavekit HTTP service shares, so that each one listens, limits, fails and is
configured the same way (see ``docs/services.md`` and ADR 0019). One module per concept:

* :mod:`.server` — the runner: :func:`~.server.running` (an ``async with``), :class:`~.server.ServerThread`,
  :func:`~.server.serve_forever` (a process's main loop); uvicorn without its signal capture;
* :mod:`.process` — :func:`~.process.announce` (the ready line ``enclavekit up`` waits for),
  :func:`~.process.stop_on_signals`, for every host process, HTTP or not;
* :mod:`.sockets` — :func:`~.sockets.listen` (``IPPROTO_TCP``, closed if it cannot bind), :func:`~.sockets.free_port`;
* :mod:`.body_limit` — :class:`~.body_limit.BodyLimit`, the streaming request-body limit (ASGI middleware);
* :mod:`.errors` — the envelope ``{"allowRetry", "error": {"code", "message"}}`` and the status an error maps to
  (pure: no web framework);
* :mod:`.handlers` — :func:`~.handlers.install_error_handlers` for a FastAPI app;
* :mod:`.settings` — :func:`~.settings.load_settings`: defaults < ``ENCLAVEKIT_<SERVICE>_<KEY>`` < ``--set`` <
  options.

Backoff is :func:`enclavekit.backoff.exponential_backoff`; migrations are :mod:`enclavekit.database`. Nothing is
imported here: :mod:`.process`, :mod:`.sockets`, :mod:`.errors` and :mod:`.settings` load no web framework.
"""

__all__: list[str] = []
