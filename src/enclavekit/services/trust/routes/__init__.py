"""The trust web app's routes, one router per audience: :mod:`.pages` (people: server-rendered HTML, the badge,
the widget) and :mod:`.json_api` (programs). :func:`enclavekit.services.trust.api.create_app` puts them together;
what they share (the service, the queue, templates, metrics) comes from :mod:`._context` as a dependency."""

__all__: list[str] = []
