"""The embedding engine: all-MiniLM-L6-v2 (a 6-layer BERT) as a numpy forward pass over safetensors weights.

Guarantees the sentence-transformers recipe: WordPiece tokens (the model's own ``tokenizer.json``, run by
``tokenizers``) truncated to :data:`MAX_TOKENS` with the truncation reported, BERT encoder in fp32, mean pooling
over the attention mask, L2 normalisation, :data:`DIMENSIONS` dimensions. ``docs/adr/0009-inference-engine.md``
says why numpy and not torch or onnxruntime, and what it costs.

Threads: numpy's BLAS reads ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` once, when numpy is first imported; this
module sets them to ``ENCLAVEKIT_ENGINE_THREADS`` (default 1) unless the environment already has them, so each
request worker is one thread. Import it before anything else imports numpy.

:class:`Engine` is the seam for other engines (a torch engine on a GPU, see
:mod:`~enclavekit.services.inference.torch_engine`): ``embed(batch) -> ndarray``.
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_variable, os.environ.get("ENCLAVEKIT_ENGINE_THREADS", "1"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402 - after the thread settings, which numpy reads at import
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any, Final, Protocol  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from enclavekit.services.inference.errors import TensorFileInvalid  # noqa: E402

__all__ = [
    "DIMENSIONS",
    "MAX_TOKENS",
    "BertConfig",
    "Embedder",
    "Embeddings",
    "Engine",
    "NumpyEngine",
    "TokenBatch",
    "Tokenizer",
]

DIMENSIONS: Final = 384
MAX_TOKENS: Final = 256
"""sentence-transformers' ``max_seq_length`` for all-MiniLM-L6-v2, special tokens included."""

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class BertConfig:
    """The parts of a BERT ``config.json`` the forward pass needs, checked to be the supported architecture."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float

    @classmethod
    def from_json(cls, text: bytes | str) -> BertConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TensorFileInvalid(f"config.json is not JSON: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("model_type") != "bert" or raw.get("hidden_act") != "gelu":
            raise TensorFileInvalid("config.json does not describe a BERT model with exact GELU")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise TensorFileInvalid("only absolute position embeddings are supported")
        try:
            config = cls(
                hidden_size=int(raw["hidden_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                max_position_embeddings=int(raw["max_position_embeddings"]),
                layer_norm_eps=float(raw["layer_norm_eps"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TensorFileInvalid(f"config.json lacks a usable field: {exc}") from exc
        if config.hidden_size % config.num_attention_heads or not 0 < config.num_hidden_layers <= 48:
            raise TensorFileInvalid("config.json: inconsistent sizes")
        return config


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """Token ids and attention mask of a batch, padded to its longest text (``int64``, shape ``(n, length)``)."""

    ids: npt.NDArray[np.int64]
    mask: npt.NDArray[np.int64]
    truncated: tuple[bool, ...]
    """Per text: whether tokens past :data:`MAX_TOKENS` were dropped."""

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True, slots=True)
class Embeddings:
    """One embedding per text (``float32``, shape ``(n, 384)``, unit length) and what was truncated."""

    vectors: Floats
    truncated: tuple[bool, ...]
    tokens: int


class Engine(Protocol):
    """Turns a token batch into unit-length sentence embeddings (``(n, dimensions)`` float32 on the host)."""

    dimensions: int

    def embed(self, batch: TokenBatch) -> Floats: ...


class Tokenizer:
    """The model's WordPiece tokenizer (``tokenizer.json``), truncating to ``max_tokens`` as BERT does."""

    def __init__(self, tokenizer_json: bytes | str, *, max_tokens: int = MAX_TOKENS) -> None:
        from tokenizers import Tokenizer as _Tokenizer  # the Rust tokenizer: only the enclave needs it

        text = tokenizer_json.decode() if isinstance(tokenizer_json, bytes) else tokenizer_json
        try:
            self._tokenizer = _Tokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a plain Exception for a bad file
            raise TensorFileInvalid(f"tokenizer.json does not load: {exc}") from exc
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        sep = self._tokenizer.token_to_id("[SEP]")
        if sep is None or max_tokens < 2:
            raise TensorFileInvalid("tokenizer.json has no [SEP] token")
        self._sep = sep
        self.max_tokens = max_tokens

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        rows: list[list[int]] = []
        truncated: list[bool] = []
        for encoding in encodings:
            ids = list(encoding.ids)
            cut = len(ids) > self.max_tokens
            if cut:  # [CLS] + the first max_tokens-2 word pieces + [SEP], as BERT's truncation gives
                ids = [*ids[: self.max_tokens - 1], self._sep]
            rows.append(ids)
            truncated.append(cut)
        length = max((len(r) for r in rows), default=0)
        ids_array = np.zeros((len(rows), length), dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        for index, row in enumerate(rows):
            ids_array[index, : len(row)] = row
            mask[index, : len(row)] = 1
        return TokenBatch(ids_array, mask, tuple(truncated))


def _erf(x: Floats) -> Floats:
    """erf to ~1.2e-7 (Numerical Recipes' erfc Chebyshev fit), enough for fp32 GELU; numpy has no erf."""
    z = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (
        -z * z
        - 1.26551223
        + t
        * (
            1.00002368
            + t
            * (
                0.37409196
                + t
                * (
                    0.09678418
                    + t
                    * (
                        -0.18628806
                        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))
                    )
                )
            )
        )
    )
    erfc = t * np.exp(poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0).astype(np.float32)


def _gelu(x: Floats) -> Floats:
    return (0.5 * x * (1.0 + _erf(x * np.float32(0.7071067811865476)))).astype(np.float32)


def _layer_norm(x: Floats, weight: Floats, bias: Floats, eps: float) -> Floats:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    out: Floats = centred / np.sqrt(variance + np.float32(eps)) * weight + bias
    return out


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_weight: Floats  # (hidden, 3*hidden), ready for x @ w
    qkv_bias: Floats
    out_weight: Floats
    out_bias: Floats
    ln1_weight: Floats
    ln1_bias: Floats
    up_weight: Floats
    up_bias: Floats
    down_weight: Floats
    down_bias: Floats
    ln2_weight: Floats
    ln2_bias: Floats


class NumpyEngine:
    """all-MiniLM-L6-v2's encoder in numpy, fp32, over weights that stay where the caller's buffer holds them.

    Only the fused query/key/value matrices (1.7 MiB a layer) are new arrays; every other weight is a view.
    """

    def __init__(self, tensors: Mapping[str, npt.NDArray[Any]], config: BertConfig) -> None:
        self.config = config
        self.dimensions = config.hidden_size

        def get(name: str, shape: tuple[int, ...]) -> Floats:
            array = tensors.get(name, tensors.get(f"bert.{name}"))
            if array is None:
                raise TensorFileInvalid(f"the weights lack {name}")
            if array.dtype != np.float32 or tuple(array.shape) != shape:
                raise TensorFileInvalid(f"{name}: expected float32 {shape}, found {array.dtype} {array.shape}")
            return array

        h, i = config.hidden_size, config.intermediate_size
        self.word = get("embeddings.word_embeddings.weight", (tensors_rows(tensors), h))
        self.position = get("embeddings.position_embeddings.weight", (config.max_position_embeddings, h))
        self.token_type = get("embeddings.token_type_embeddings.weight", (tensors_rows(tensors, "token_type"), h))
        self.ln_weight = get("embeddings.LayerNorm.weight", (h,))
        self.ln_bias = get("embeddings.LayerNorm.bias", (h,))
        self.layers: list[_Layer] = []
        for n in range(config.num_hidden_layers):
            p = f"encoder.layer.{n}."
            q, k, v = (get(f"{p}attention.self.{w}.weight", (h, h)) for w in ("query", "key", "value"))
            qb, kb, vb = (get(f"{p}attention.self.{w}.bias", (h,)) for w in ("query", "key", "value"))
            self.layers.append(
                _Layer(
                    qkv_weight=np.ascontiguousarray(np.concatenate([q, k, v], axis=0).T),
                    qkv_bias=np.concatenate([qb, kb, vb]),
                    out_weight=get(f"{p}attention.output.dense.weight", (h, h)).T,
                    out_bias=get(f"{p}attention.output.dense.bias", (h,)),
                    ln1_weight=get(f"{p}attention.output.LayerNorm.weight", (h,)),
                    ln1_bias=get(f"{p}attention.output.LayerNorm.bias", (h,)),
                    up_weight=get(f"{p}intermediate.dense.weight", (i, h)).T,
                    up_bias=get(f"{p}intermediate.dense.bias", (i,)),
                    down_weight=get(f"{p}output.dense.weight", (h, i)).T,
                    down_bias=get(f"{p}output.dense.bias", (h,)),
                    ln2_weight=get(f"{p}output.LayerNorm.weight", (h,)),
                    ln2_bias=get(f"{p}output.LayerNorm.bias", (h,)),
                )
            )

    def embed(self, batch: TokenBatch) -> Floats:
        config = self.config
        n, length = batch.ids.shape
        if n == 0:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        if length > config.max_position_embeddings:
            raise TensorFileInvalid(f"{length} tokens exceed the model's {config.max_position_embeddings} positions")
        heads = config.num_attention_heads
        size = config.hidden_size // heads
        x = self.word[batch.ids] + self.position[:length] + self.token_type[0]
        x = _layer_norm(x, self.ln_weight, self.ln_bias, config.layer_norm_eps)
        mask = batch.mask.astype(np.float32)
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(size))
        for layer in self.layers:
            qkv = x @ layer.qkv_weight + layer.qkv_bias  # (n, length, 3h)
            qkv = qkv.reshape(n, length, 3, heads, size).transpose(2, 0, 3, 1, 4)  # (3, n, heads, length, size)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, config.hidden_size)
            x = _layer_norm(
                context @ layer.out_weight + layer.out_bias + x, layer.ln1_weight, layer.ln1_bias, config.layer_norm_eps
            )
            up = _gelu(x @ layer.up_weight + layer.up_bias)
            x = _layer_norm(
                up @ layer.down_weight + layer.down_bias + x, layer.ln2_weight, layer.ln2_bias, config.layer_norm_eps
            )
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        out: Floats = (pooled / norms).astype(np.float32, copy=False)
        return out


def tensors_rows(tensors: Mapping[str, npt.NDArray[Any]], which: str = "word") -> int:
    """How many rows an embedding table has (the vocabulary, or the token types)."""
    name = f"embeddings.{which}_embeddings.weight"
    array = tensors.get(name, tensors.get(f"bert.{name}"))
    if array is None or array.ndim != 2:
        raise TensorFileInvalid(f"the weights lack {name}")
    return int(array.shape[0])


class Embedder:
    """Tokenizer + engine: texts in, :class:`Embeddings` out."""

    def __init__(self, tokenizer: Tokenizer, engine: Engine) -> None:
        self.tokenizer = tokenizer
        self.engine = engine

    def embed(self, texts: Sequence[str]) -> Embeddings:
        batch = self.tokenizer.encode(texts)
        return Embeddings(self.engine.embed(batch), batch.truncated, batch.tokens)
