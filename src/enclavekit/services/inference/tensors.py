"""The safetensors format, parsed strictly into numpy views over one buffer (no pickle, no copies).

A safetensors file is ``u64 LE header length ‖ JSON header ‖ data``; the header maps each tensor name to its
``dtype``, ``shape`` and ``data_offsets`` (relative to the data). :func:`load_tensors` checks every field, that
the tensors tile the data exactly (no gap, no overlap, nothing after), and returns read-only arrays that view
the caller's buffer: the model is held once, in that buffer.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from enclavekit.services.inference.errors import TensorFileInvalid

__all__ = ["MAX_HEADER_SIZE", "load_tensors"]

MAX_HEADER_SIZE: Final = 1 << 20
"""The largest JSON header accepted (MiniLM's is ~10 KiB)."""
_DTYPES: Final[Mapping[str, npt.DTypeLike]] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8")}
_MAX_TENSORS: Final = 4096


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise TensorFileInvalid(f"the header names {key!r} twice")
        out[key] = value
    return out


def load_tensors(buffer: bytes | bytearray | memoryview) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of a safetensors file, as read-only numpy arrays viewing ``buffer``.

    Raises :class:`TensorFileInvalid` for anything but a well-formed file of F32, F16 or I64 tensors.
    """
    view = memoryview(buffer).cast("B")
    if len(view) < 8:
        raise TensorFileInvalid("shorter than the 8-byte header length")
    (header_size,) = struct.unpack_from("<Q", view, 0)
    if header_size < 2 or header_size > MAX_HEADER_SIZE or 8 + header_size > len(view):
        raise TensorFileInvalid(f"header length {header_size} is out of bounds")
    try:
        header = json.loads(bytes(view[8 : 8 + header_size]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TensorFileInvalid(f"the header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise TensorFileInvalid("the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise TensorFileInvalid("__metadata__ must map names to strings")
    if not header or len(header) > _MAX_TENSORS:
        raise TensorFileInvalid(f"the file holds {len(header)} tensors")
    data = view[8 + header_size :]
    spans: list[tuple[int, int, str]] = []
    tensors: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise TensorFileInvalid(f"tensor {name!r}: expected exactly dtype, shape and data_offsets")
        dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise TensorFileInvalid(f"tensor {name!r}: dtype {info['dtype']!r} is not accepted (F32, F16, I64)")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_size(d) for d in shape):
            raise TensorFileInvalid(f"tensor {name!r}: bad shape {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_size(o) for o in offsets):
            raise TensorFileInvalid(f"tensor {name!r}: bad data_offsets {offsets!r}")
        begin, end = offsets
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if end < begin or end - begin != size or end > len(data):
            raise TensorFileInvalid(f"tensor {name!r}: data_offsets {offsets} do not hold shape {shape}")
        spans.append((begin, end, name))
        array = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        array.flags.writeable = False
        tensors[name] = array
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise TensorFileInvalid(f"tensor {name!r} starts at {begin}, not {position}: gap or overlap")
        position = end
    if position != len(data):
        raise TensorFileInvalid(f"{len(data) - position} bytes follow the last tensor")
    return tensors


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << 40)
