"""The numpy MiniLM engine against sentence-transformers' own output, and the strict safetensors parser.

The reference vectors (tests/data/inference/minilm_reference.json) were made by sentence-transformers 6.0.1
(transformers' BertModel, torch 2.11, fp32, CPU) from the same model files; make_reference.py beside them
regenerates them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from enclavekit.services.inference.engine import (
    DIMENSIONS,
    MAX_TOKENS,
    BertConfig,
    Embedder,
    NumpyEngine,
    Tokenizer,
)
from enclavekit.services.inference.errors import TensorFileInvalid
from enclavekit.services.inference.model_files import ModelFiles, bundled_model_dir
from enclavekit.services.inference.tensors import load_tensors

REFERENCE = Path(__file__).parent / "data" / "inference" / "minilm_reference.json"


@pytest.fixture(scope="module")
def model() -> ModelFiles:
    return ModelFiles.in_folder(bundled_model_dir())


@pytest.fixture(scope="module")
def embedder(model: ModelFiles) -> Embedder:
    tensors = load_tensors(bytearray(model.weights.read_bytes()))
    engine = NumpyEngine(tensors, BertConfig.from_json(model.config.read_bytes()))
    return Embedder(Tokenizer(model.tokenizer.read_bytes()), engine)


def test_embeddings_match_sentence_transformers_fp32(embedder: Embedder, model: ModelFiles) -> None:
    import hashlib

    reference = json.loads(REFERENCE.read_text())
    assert (
        reference["produced_by"]["model_safetensors_sha256"] == hashlib.sha256(model.weights.read_bytes()).hexdigest()
    )
    cases = reference["cases"]
    result = embedder.embed([case["text"] for case in cases])
    assert result.vectors.shape == (len(cases), DIMENSIONS)
    assert result.vectors.dtype == np.float32
    for case, vector, truncated in zip(cases, result.vectors, result.truncated, strict=True):
        expected = np.asarray(case["embedding"], dtype=np.float64)
        cosine = float(vector @ expected / np.linalg.norm(expected))
        assert cosine >= 0.999, (case["text"][:40], cosine)
        assert truncated == case["truncated"]
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_long_text_is_truncated_to_256_tokens_and_reported(embedder: Embedder) -> None:
    batch = embedder.tokenizer.encode(["word " * 1000, "short"])
    assert batch.ids.shape[1] == MAX_TOKENS
    assert batch.truncated == (True, False)
    assert batch.ids[0, -1] == embedder.tokenizer.encode(["x"]).ids[0, -1]  # ends with [SEP]


def test_padding_does_not_change_an_embedding(embedder: Embedder) -> None:
    alone = embedder.embed(["A short one."]).vectors[0]
    padded = embedder.embed(["A short one.", "a much longer sentence " * 20]).vectors[0]
    assert float(alone @ padded) > 0.99999


_TWICE = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'


def _safetensors(header: dict[str, Any], data: bytes) -> bytearray:
    text = json.dumps(header).encode()
    return bytearray(struct.pack("<Q", len(text)) + text + data)


def test_tensors_are_views_of_the_buffer_not_copies() -> None:
    buffer = _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8)
    tensors = load_tensors(buffer)
    assert np.shares_memory(tensors["a"], np.frombuffer(buffer, dtype=np.uint8))
    assert not tensors["a"].flags.writeable


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"", "shorter"),
        (struct.pack("<Q", 1 << 40), "out of bounds"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
        (
            bytes(_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 4)),
            "do not hold",
        ),
        (bytes(_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 8)), "follow"),
        (bytes(_safetensors({"a": {"dtype": "O", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4)), "dtype"),
        (bytes(_safetensors({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\x00" * 4)), "shape"),
        (
            bytes(
                _safetensors(
                    {
                        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                        "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    },
                    b"\x00" * 4,
                )
            ),
            "gap or overlap",
        ),
        (struct.pack("<Q", len(_TWICE)) + _TWICE + b"\x00" * 4, "twice"),
        (bytes(_safetensors({}, b"")), "holds 0 tensors"),
    ],
)
def test_malformed_weights_are_refused_not_loaded(blob: bytes, why: str) -> None:
    with pytest.raises(TensorFileInvalid, match=why):
        load_tensors(blob)


def test_pickle_file_is_refused_as_weights() -> None:
    import pickle

    with pytest.raises(TensorFileInvalid):
        load_tensors(pickle.dumps({"weights": [1.0, 2.0]}))


def test_config_of_another_architecture_is_refused() -> None:
    with pytest.raises(TensorFileInvalid, match="BERT"):
        BertConfig.from_json(b'{"model_type": "gpt2", "hidden_act": "gelu"}')


def test_gpu_engine_path_is_importable_without_torch() -> None:
    """CI has no torch: the torch engine's module must import, and only building one may need torch."""
    import importlib.util

    module = importlib.import_module("enclavekit.services.inference.torch_engine")
    assert hasattr(module, "TorchEngine")
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ModuleNotFoundError):
            module.TorchEngine({}, BertConfig(384, 6, 12, 1536, 512, 1e-12), device="cpu")


def test_unknown_engine_in_the_configuration_is_refused() -> None:
    from enclavekit.errors import ConfigurationError
    from enclavekit.services.inference.config import InferenceConfig

    with pytest.raises(ConfigurationError, match="engine"):
        InferenceConfig(model_id="m", version="1", publisher_key=bytes(32), kms_key_id="k", engine="pickle")
