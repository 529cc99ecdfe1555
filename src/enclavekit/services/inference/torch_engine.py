"""all-MiniLM-L6-v2 on torch (a GPU, or the CPU), behind the same :class:`~enclavekit.services.inference.engine.Engine`
protocol. torch is imported only when this engine is built: nothing else needs it, and CI never has it.

The forward pass is the numpy engine's, op for op: embeddings, 6 post-LayerNorm encoder layers with exact GELU,
attention through ``scaled_dot_product_attention`` with the padding mask, mean pooling over the attention mask,
L2 normalisation. ``dtype`` ``float16`` runs the encoder in half precision (pooling and normalisation in fp32);
``float32`` disables TF32 so results match fp32 references.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from enclavekit.services.inference.engine import BertConfig, TokenBatch
from enclavekit.services.inference.errors import TensorFileInvalid

__all__ = ["TorchEngine"]


class TorchEngine:
    """The MiniLM encoder as torch tensors on ``device`` (``cuda``, ``cuda:1``, ``cpu``)."""

    def __init__(
        self,
        tensors: Mapping[str, npt.NDArray[Any]],
        config: BertConfig,
        *,
        device: str = "cuda",
        dtype: str = "float32",
    ) -> None:
        import torch

        if dtype not in ("float32", "float16", "bfloat16"):
            raise TensorFileInvalid(f"unsupported dtype {dtype}")
        self._torch = torch
        if dtype == "float32":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)
        self.config = config
        self.dimensions = config.hidden_size

        def get(name: str) -> Any:
            array = tensors.get(name, tensors.get(f"bert.{name}"))
            if array is None:
                raise TensorFileInvalid(f"the weights lack {name}")
            return torch.tensor(np.asarray(array, dtype=np.float32), device=self.device, dtype=self.dtype)

        self.word = get("embeddings.word_embeddings.weight")
        self.position = get("embeddings.position_embeddings.weight")
        self.token_type = get("embeddings.token_type_embeddings.weight")
        self.ln = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self.layers = []
        for n in range(config.num_hidden_layers):
            p = f"encoder.layer.{n}."
            qkv_w = torch.cat([get(f"{p}attention.self.{w}.weight") for w in ("query", "key", "value")])
            qkv_b = torch.cat([get(f"{p}attention.self.{w}.bias") for w in ("query", "key", "value")])
            self.layers.append(
                (
                    qkv_w,
                    qkv_b,
                    get(f"{p}attention.output.dense.weight"),
                    get(f"{p}attention.output.dense.bias"),
                    get(f"{p}attention.output.LayerNorm.weight"),
                    get(f"{p}attention.output.LayerNorm.bias"),
                    get(f"{p}intermediate.dense.weight"),
                    get(f"{p}intermediate.dense.bias"),
                    get(f"{p}output.dense.weight"),
                    get(f"{p}output.dense.bias"),
                    get(f"{p}output.LayerNorm.weight"),
                    get(f"{p}output.LayerNorm.bias"),
                )
            )

    def embed(self, batch: TokenBatch) -> npt.NDArray[np.float32]:
        torch = self._torch
        functional = torch.nn.functional
        config = self.config
        n, length = batch.ids.shape
        if n == 0:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        heads, hidden = config.num_attention_heads, config.hidden_size
        size = hidden // heads
        eps = config.layer_norm_eps
        with torch.inference_mode():
            ids = torch.from_numpy(batch.ids).to(self.device, non_blocking=True)
            mask = torch.from_numpy(batch.mask).to(self.device, non_blocking=True)
            x = self.word[ids] + self.position[:length] + self.token_type[0]
            x = functional.layer_norm(x, (hidden,), *self.ln, eps)
            attn_mask = mask[:, None, None, :].bool()
            for qkv_w, qkv_b, o_w, o_b, l1_w, l1_b, u_w, u_b, d_w, d_b, l2_w, l2_b in self.layers:
                qkv = functional.linear(x, qkv_w, qkv_b).view(n, length, 3, heads, size).permute(2, 0, 3, 1, 4)
                context = functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)
                context = context.transpose(1, 2).reshape(n, length, hidden)
                x = functional.layer_norm(functional.linear(context, o_w, o_b) + x, (hidden,), l1_w, l1_b, eps)
                up = functional.gelu(functional.linear(x, u_w, u_b))
                x = functional.layer_norm(functional.linear(up, d_w, d_b) + x, (hidden,), l2_w, l2_b, eps)
            weights = mask.to(torch.float32)[:, :, None]
            pooled = (x.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            out = functional.normalize(pooled, p=2.0, dim=1)
            result: npt.NDArray[np.float32] = out.cpu().numpy().astype(np.float32, copy=False)
        return result
