"""The few primitives every encoder family shares: packing real tokens, attention over packed tokens,
activations, the sequence-classification loss and the output container."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Packing:
    """Where a batch's real tokens sit. Linear layers, norms and MLPs run on the packed (N, H) tokens only;
    attention scatters them back onto a (B, T) grid trimmed to the longest real sequence."""

    indices: Tensor | None  # (N,) flat positions of real tokens in the (B*T) grid; None when nothing is padding
    batch: int
    seq_len: int
    key_mask: Tensor | None  # (B, 1, 1, T) True where a key is a real token
    first: Tensor  # (B,) packed index of each sequence's first real token ([CLS] / <s>)

    @property
    def num_tokens(self) -> int:
        return self.batch * self.seq_len if self.indices is None else self.indices.numel()

    @staticmethod
    def from_mask(attention_mask: Tensor | None, shape: tuple[int, int], device) -> "Packing":
        batch, seq_len = shape
        if attention_mask is None or bool(attention_mask.all()):
            first = torch.arange(batch, device=device) * seq_len
            return Packing(None, batch, seq_len, None, first)
        mask = attention_mask.bool()
        lengths = mask.sum(1)  # (B,)
        indices = mask.flatten().nonzero().squeeze(1)  # (N,) row-major, so each row's tokens are contiguous
        first = torch.cumsum(lengths, 0) - lengths
        return Packing(indices, batch, seq_len, mask[:, None, None, :], first)

    def pack(self, grid: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...)"""
        flat = grid.reshape(self.batch * self.seq_len, *grid.shape[2:])
        return flat if self.indices is None else flat[self.indices]

    def unpack(self, packed: Tensor) -> Tensor:
        """(N, ...) -> (B, T, ...), zeros at padding."""
        if self.indices is None:
            return packed.reshape(self.batch, self.seq_len, *packed.shape[1:])
        grid = packed.new_zeros(self.batch * self.seq_len, *packed.shape[1:])
        grid = grid.index_copy(0, self.indices, packed)
        return grid.view(self.batch, self.seq_len, *packed.shape[1:])


def trim_padding(input_ids: Tensor, attention_mask: Tensor | None, *others: Tensor | None):
    """Drop trailing columns that are padding in every row (e.g. padding="max_length"), before any compute."""
    if attention_mask is None:
        return (input_ids, attention_mask, *others)
    real_columns = attention_mask.any(0).nonzero()
    seq_len = int(real_columns[-1]) + 1 if real_columns.numel() else 1
    if seq_len == input_ids.shape[1]:
        return (input_ids, attention_mask, *others)
    cut = lambda t: None if t is None else t[:, :seq_len]  # noqa: E731
    return (cut(input_ids), cut(attention_mask), *(cut(t) for t in others))


def packed_attention(qkv: Tensor, packing: Packing, num_heads: int, dropout_p: float) -> Tensor:
    """Multi-head attention where each sequence sees only its own real tokens.

    qkv: (N, 3*H) packed projections -> (N, H). Attention costs O(T) per token against O(H) for the
    projections, so re-gridding here spends almost nothing on padding."""
    n, three_h = qkv.shape
    hidden = three_h // 3
    head_dim = hidden // num_heads
    grid = packing.unpack(qkv).view(packing.batch, packing.seq_len, 3, num_heads, head_dim)  # (B, T, 3, nh, d)
    q, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, d)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=packing.key_mask, dropout_p=dropout_p)  # (B, nh, T, d)
    out = out.transpose(1, 2).reshape(packing.batch, packing.seq_len, hidden)  # (B, T, H)
    return packing.pack(out)  # (N, H)


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": F.gelu, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "relu": F.relu,
               "silu": F.silu, "swish": F.silu, "tanh": torch.tanh}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden activation {name!r} is not supported; supported: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def check_positions(seq_len: int, limit: int) -> None:
    if seq_len > limit:
        raise ValueError(
            f"input of {seq_len} tokens is longer than this model's position limit of {limit} tokens "
            f"(max_position_embeddings); tokenize with truncation=True, max_length={limit}")


def sequence_classification_loss(logits: Tensor, labels: Tensor, config) -> Tensor:
    """The reference's rule: problem_type from config, else inferred from num_labels and the labels' dtype."""
    num_labels = logits.shape[-1]
    problem_type = config.problem_type
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
        config.problem_type = problem_type
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def init_weights(module: nn.Module, std: float) -> None:
    """The reference's initialisation for fresh heads: N(0, std) weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ModelOutput(dict):
    """Outputs readable as attributes (out.logits), keys (out["logits"]) or positions (out[0]), like the
    reference's; fields that are None are left out."""

    def __init__(self, **fields):
        super().__init__((k, v) for k, v in fields.items() if v is not None)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __getitem__(self, key):
        if isinstance(key, (int, slice)):
            return tuple(self.values())[key]
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        return tuple(self.values())


def fused_qkv(x: Tensor, query: nn.Linear, key: nn.Linear, value: nn.Linear) -> Tensor:
    """One (N, H) x (H, 3H) matmul instead of three: better use of the CPU's GEMM for small N."""
    weight = torch.cat([query.weight, key.weight, value.weight])  # (3H, H)
    bias = torch.cat([query.bias, key.bias, value.bias])
    return F.linear(x, weight, bias)  # (N, 3H)

