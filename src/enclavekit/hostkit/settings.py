"""One way every service's CLI is configured: defaults < ``ENCLAVEKIT_<SERVICE>_<KEY>`` < ``--set KEY=VALUE`` <
the command's own options, typed and checked by the service's settings class (a pydantic model or a dataclass)."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from enclavekit.errors import ConfigurationError

__all__ = ["load_settings", "parse_sets", "setting_names"]

T = TypeVar("T")


def _fields(model: type[Any]) -> dict[str, Any]:
    """``{field name: annotation}`` of a pydantic model or a dataclass."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {name: field.annotation for name, field in model.model_fields.items()}
    if dataclasses.is_dataclass(model):
        hints = typing.get_type_hints(model)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(model) if f.init}
    raise TypeError(f"{model!r} is neither a pydantic model nor a dataclass")


def setting_names(model: type[Any]) -> list[str]:
    """The keys ``--set`` takes for ``model``."""
    return list(_fields(model))


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (tuple, list, frozenset, set):
        return True
    return any(_is_sequence(arg) for arg in typing.get_args(annotation) if arg is not type(None))


def _coerce(annotation: Any, raw: str) -> Any:
    """A string from the environment or ``--set`` as pydantic should see it: lists comma-separated, durations in
    seconds; everything else is left to the model's own validation."""
    if _is_sequence(annotation):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    if annotation is timedelta or timedelta in typing.get_args(annotation):
        try:
            return timedelta(seconds=float(raw))
        except ValueError:
            return raw
    return raw


def parse_sets(model: type[Any], sets: Iterable[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` as a dict; a key that is not a field of ``model`` is a :class:`ConfigurationError`."""
    fields = _fields(model)
    values: dict[str, str] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ConfigurationError(f"--set {item!r}: not KEY=VALUE of a setting (keys: {', '.join(sorted(fields))})")
        values[key] = value
    return values


def load_settings(
    model: type[T],
    *,
    service: str,
    sets: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> T:
    """The settings of ``service``: ``model``'s defaults, then ``ENCLAVEKIT_<SERVICE>_<KEY>`` variables, then
    ``sets`` (``KEY=VALUE``), then ``overrides`` (typed values from the command's own options; None means "not
    given"). Raises :class:`ConfigurationError` naming the setting that is wrong."""
    fields = _fields(model)
    env = os.environ if environ is None else environ
    prefix = f"ENCLAVEKIT_{service.upper()}_"
    values: dict[str, Any] = {}
    for name, annotation in fields.items():
        raw = env.get(prefix + name.upper())
        if raw is not None:
            values[name] = _coerce(annotation, raw)
    for name, raw in parse_sets(model, sets).items():
        values[name] = _coerce(fields[name], raw)
    values.update({name: value for name, value in overrides.items() if value is not None})
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigurationError(f"unknown {service} setting(s): {', '.join(unknown)}")
    try:
        return TypeAdapter(model).validate_python(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigurationError(f"invalid {service} settings: {problems}") from exc
