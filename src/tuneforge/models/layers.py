"""The few primitives every encoder family shares besides packing and attention (attention.py): the block stack,
dropout, activations, the post-norm block's part after attention, the sequence-classification loss, initialisation
and the output container."""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from ..errors import InputError

if TYPE_CHECKING:
    from .attention import Packing


class LayerStack(nn.Module):
    """The blocks, run in order; with gradient checkpointing their activations are recomputed in backward.
    Its one attribute, `layer`, is the checkpoints' "encoder.layer.N" / "transformer.layer.N".

    With heads_only, the last block computes only each sequence's first token, the one a classification head
    reads: its other outputs would be thrown away, and its queries, MLP and norms are most of a block's work."""

    def __init__(self, blocks):
        super().__init__()
        self.layer = nn.ModuleList(blocks)
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, packing: Packing, heads_only: bool = False) -> Tensor:
        """(N, H) -> (N, H), or (B, H) in input order with heads_only"""
        for i, block in enumerate(self.layer):
            last = heads_only and i == len(self.layer) - 1
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, packing, last, use_reentrant=False)
            else:
                x = block(x, packing, last)
        return packing.to_input_order(x) if heads_only else x


def _random_bits(n: int, device: torch.device) -> Tensor:
    """(n,) int32 with every bit uniform. On CPU from numpy's SFC64, seeded by one draw from torch's generator (so
    torch.manual_seed, checkpointing's RNG replay and resume govern it): about half the cost per bit of torch's
    Mersenne Twister, which draws one word at a time."""
    words = (n + 1) // 2
    if device.type == "cpu" and n >= 1 << 14:  # numpy's set-up costs about 10 us: it pays from ~16k values
        seed = int(torch.randint(2**63 - 1, ()))
        return torch.from_numpy(np.random.SFC64(seed).random_raw(words).view(np.int32))[:n]
    return torch.empty(words, dtype=torch.int64, device=device).random_(-2**63, None).view(torch.int32)[:n]


def _dropout_scale(x: Tensor, p: float) -> Tensor:
    """x's shape: 1 / (1 - p) with probability 1 - p (to within 2^-23), else 0; float32 (float64 for float64 x).
    Made with float arithmetic on the random bits: torch's boolean masks cost several times more to make and apply.
    p = 1 keeps nothing, as F.dropout."""
    bits = _random_bits(x.numel(), x.device).bitwise_and_(0x7FFFFF).bitwise_or_(0x3F800000)  # exponent of 1.0
    keep = bits.view(torch.float32).sub_(p).floor_()  # uniform in [1, 2), minus p, floored: 1 where kept, else 0
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    return keep.to(torch.promote_types(x.dtype, torch.float32)).mul_(scale).view(x.shape)


def apply_dropout(x: Tensor, p: float) -> tuple[Tensor, Tensor | None]:
    """Inverted dropout -> (the result, the scale for dropout_grad; None when p is 0). nn.Dropout's distribution, at
    about half the cost of its bernoulli_ draw on CPU."""
    if p == 0.0:
        return x, None
    scale = _dropout_scale(x, p)
    return (x * scale).to(x.dtype), scale


def dropout_grad(grad: Tensor, scale: Tensor | None) -> Tensor:
    """The gradient through apply_dropout, from its scale."""
    return grad if scale is None else (grad * scale).to(grad.dtype)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        out, scale = apply_dropout(x, p)
        ctx.save_for_backward(scale)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (scale,) = ctx.saved_tensors
        return dropout_grad(grad, scale), None


def dropout(x: Tensor, p: float) -> Tensor:
    """F.dropout in training mode, with the cheaper mask on CPU."""
    if p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    return _Dropout.apply(x, p)


class Dropout(nn.Dropout):
    """nn.Dropout's interface (and state-dict-free), with the cheaper mask on CPU."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p) if self.training else x


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


class Activation(NamedTuple):
    forward: Callable[[Tensor], Tensor]
    backward: Callable[[Tensor, Tensor | None, Tensor], Tensor]  # (gradient, input, output) -> the input's gradient
    backward_reads_input: bool  # else only the output, so the input need not be kept


_aten = torch.ops.aten


def _gelu_grad(grad: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return _aten.gelu_backward(grad, x)


def _gelu_tanh_grad(grad: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return _aten.gelu_backward(grad, x, approximate="tanh")


def _relu_grad(grad: Tensor, x: Tensor | None, y: Tensor) -> Tensor:
    return _aten.threshold_backward(grad, y, 0)


def _silu_grad(grad: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return _aten.silu_backward(grad, x)


def _tanh_grad(grad: Tensor, x: Tensor | None, y: Tensor) -> Tensor:
    return _aten.tanh_backward(grad, y)


_GELU_TANH = Activation(gelu_tanh, _gelu_tanh_grad, True)
_SILU = Activation(F.silu, _silu_grad, True)
ACTIVATIONS = {"gelu": Activation(F.gelu, _gelu_grad, True), "gelu_new": _GELU_TANH, "gelu_pytorch_tanh": _GELU_TANH,
               "relu": Activation(F.relu, _relu_grad, False), "silu": _SILU, "swish": _SILU,
               "tanh": Activation(torch.tanh, _tanh_grad, False)}


def activation(name: str) -> Activation:
    if name not in ACTIVATIONS:
        raise InputError(f"hidden activation {name!r} is not supported; supported: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def post_attention(a: Tensor, x: Tensor, out: nn.Module, norm1: nn.LayerNorm, fc1: nn.Module, act: Activation,
                   fc2: nn.Module, norm2: nn.LayerNorm, out_dropout: float, mlp_dropout: float) -> Tensor:
    """The rest of a post-norm block, after attention mixed the rows x into a (both (M, H)):
        h = norm1(x + dropout(out(a)));  return norm2(h + dropout(fc2(act(fc1(h)))))
    Training on CPU runs it as one autograd Function with the backward written out (_PostAttention): autograd's
    bookkeeping for these dozen operations cost 3% of a step. Its linear layers may carry LoRA adapters, folded into
    its GEMMs (linear_parts). Other devices, autocast, the compiler, and modules that are replaced otherwise, hooked
    or without biases get the modules."""
    parts = [linear_parts(m) for m in (out, fc1, fc2)]
    if (x.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and is_plain(norm1, norm2) and None not in parts):
        p_out, p_fc1, p_fc2 = parts
        blocks = tuple(_blocks([(0, p)] if p.lora_a is not None else []) for p in parts)
        return _PostAttention.apply(a, x, *p_out[:4], norm1.weight, norm1.bias, *p_fc1[:4], *p_fc2[:4], norm2.weight,
                                    norm2.bias, act, blocks, out_dropout, mlp_dropout, norm1.eps, norm2.eps)
    h = norm1(x + dropout(out(a), out_dropout))
    return norm2(h + dropout(fc2(act.forward(fc1(h))), mlp_dropout))


def is_plain(*modules: nn.Module, biased: bool = True) -> bool:
    """Exactly nn.Linear or nn.LayerNorm (with a bias if `biased`) and no hooks: only then may a fast path read their
    tensors; a replaced or hooked module must be called as a module, or its change would be lost (a LoRA layer
    offers its parts instead: linear_parts)."""
    return all(type(m) in (nn.Linear, nn.LayerNorm) and (m.bias is not None or not biased) and not m._forward_hooks
               and not m._forward_pre_hooks for m in modules)


def backward_outside_autocast(backward):
    """For written-out Functions whose forward ran at one precision: their backward is often called under an autocast
    (the Trainer's bf16 step), which would cast some of its operations down."""
    @functools.wraps(backward)
    def run(ctx, *grads):
        with torch.autocast(grads[0].device.type, enabled=False):
            return backward(ctx, *grads)
    return run


class LinearParts(NamedTuple):
    """What a written-out fast path computes a linear layer from: y = x W^T + b, plus s (x A^T) B^T for a LoRA
    adapter."""

    weight: Tensor  # (out, in)
    bias: Tensor | None  # (out,)
    lora_a: Tensor | None = None  # (r, in)
    lora_b: Tensor | None = None  # (out, r)
    scaling: float = 1.0


def linear_parts(module: nn.Module, biased: bool = True) -> LinearParts | None:
    """A plain nn.Linear's tensors (is_plain), or a LoRA layer's from its low_rank_parts() (peft.lora.Linear: None
    where it must run as a module); None: call the module."""
    if is_plain(module, biased=biased):
        return LinearParts(module.weight, module.bias)
    low_rank = getattr(module, "low_rank_parts", None)
    parts = low_rank() if callable(low_rank) else None
    return None if parts is None or (biased and parts.bias is None) else parts


class Linear(nn.Linear):
    """nn.Linear (the same parameters, checkpoint keys and results) that keeps no low-precision copy of its weight
    between forward and backward when it trains under CPU autocast. Autocast caches each weight's cast until the
    forward ends, and the backward then holds it: a second copy of every block weight, alive when the activations
    peak. Here the backward casts the weight again, which is cheap beside its GEMMs."""

    def forward(self, x: Tensor) -> Tensor:
        device = x.device.type
        if (device == "cpu" and torch.is_autocast_enabled(device) and torch.is_grad_enabled()
                and self.weight.dtype == torch.float32 and not torch.compiler.is_compiling()):
            with torch.autocast(device, enabled=False):
                return _RecastLinear.apply(x, self.weight, self.bias, torch.get_autocast_dtype(device))
        return F.linear(x, self.weight, self.bias)


class _RecastLinear(torch.autograd.Function):
    """F.linear at autocast's precision (x, weight and bias cast to `dtype`, as autocast casts them) whose backward
    casts the float32 weight again instead of keeping the cast; the gradients are autocast's: made at `dtype`,
    returned in each input's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
        low = x.to(dtype)
        ctx.save_for_backward(low, weight)
        ctx.x_dtype, ctx.bias_dtype = x.dtype, None if bias is None else bias.dtype
        return F.linear(low, weight.to(dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    @once_differentiable
    @backward_outside_autocast
    def backward(ctx, grad: Tensor):
        low, weight = ctx.saved_tensors
        g = grad.to(low.dtype).reshape(-1, weight.shape[0])  # (M, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight.to(low.dtype)).view(low.shape).to(ctx.x_dtype)  # (..., in)
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ low.reshape(-1, weight.shape[1])).to(weight.dtype)  # (out, in)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = g.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None


def _low_rank_forward(x: Tensor, w: Tensor, b: Tensor | None, lora_a: Tensor | None, lora_b: Tensor | None,
                      blocks: tuple) -> tuple[Tensor, Tensor | None]:
    """x W^T + b plus each adapter's s (x A_i^T) B_i^T on its columns -> (that (M, out), x A^T (M, R) for the
    backward, or None without adapters). A (R, in) holds the adapters' A stacked, B (rows in block order) their B;
    a block is (first column, end column, first rank, end rank, s)."""
    y = torch.addmm(b, x, w.t()) if b is not None else x.mm(w.t())  # (M, out)
    if lora_a is None:
        return y, None
    t = x.mm(lora_a.t())  # (M, R)
    row = 0
    for c0, c1, r0, r1, s in blocks:
        y[:, c0:c1].addmm_(t[:, r0:r1], lora_b[row:row + c1 - c0].t(), alpha=s)
        row += c1 - c0
    return y, t


def _low_rank_grads(dy: Tensor, x: Tensor, t: Tensor | None, w: Tensor, lora_a: Tensor | None,
                    lora_b: Tensor | None, blocks: tuple, need: tuple[bool, ...], into: Tensor | None = None):
    """_low_rank_forward's gradients (x's plus `into`, W's, b's, A's, B's), each None where `need` (five flags)
    says it is not needed: a frozen weight costs no GEMM."""
    dt = d_lora_b = None
    if lora_a is not None:
        dt = t.new_empty(t.shape)  # (M, R)
        d_lora_b = torch.empty_like(lora_b) if need[4] else None
        row = 0
        for c0, c1, r0, r1, s in blocks:
            dy_i, b_i = dy[:, c0:c1], lora_b[row:row + c1 - c0]
            dt[:, r0:r1].addmm_(dy_i, b_i, beta=0, alpha=s)
            if d_lora_b is not None:
                rows = d_lora_b[row:row + c1 - c0]
                torch.addmm(rows, dy_i.t(), t[:, r0:r1], beta=0, alpha=s, out=rows)
            row += c1 - c0
    dx = None
    if need[0]:
        dx = dy.mm(w) if into is None else torch.addmm(into, dy, w)  # (M, in)
        if dt is not None:
            dx.addmm_(dt, lora_a)
    dw, db = (dy.t().mm(x) if need[1] else None), (dy.sum(0) if need[2] else None)
    da = dt.t().mm(x) if dt is not None and need[3] else None  # (R, in)
    return dx, dw, db, da, d_lora_b


def _blocks(adapters: list[tuple[int, LinearParts]]) -> tuple:
    """_low_rank_forward's blocks for adapters given as (first output column, parts), their A stacked in order."""
    blocks, rank = [], 0
    for column, p in adapters:
        r = p.lora_a.shape[0]
        blocks.append((column, column + p.lora_b.shape[0], rank, rank + r, p.scaling))
        rank += r
    return tuple(blocks)


def low_rank_linear(x: Tensor, weights: list[Tensor], bias: Tensor | None,
                    adapters: list[tuple[int, LinearParts]]) -> Tensor:
    """x W^T + b with LoRA updates on column ranges of the output, W the `weights` stacked as rows (the query, key
    and value projections, say) and `adapters` (first output column, parts) of those that have one; (M, in) ->
    (M, out). One GEMM for the weights, one for every adapter's x A^T, and a written-out backward with no GEMM for
    frozen weights."""
    lora_a = torch.cat([p.lora_a for _, p in adapters]) if len(adapters) > 1 else adapters[0][1].lora_a
    lora_b = torch.cat([p.lora_b for _, p in adapters]) if len(adapters) > 1 else adapters[0][1].lora_b
    weight = torch.cat(weights) if len(weights) > 1 else weights[0]  # (out, in)
    return _LowRankLinear.apply(x, weight, bias, lora_a, lora_b, _blocks(adapters))


class _LowRankLinear(torch.autograd.Function):
    """low_rank_linear (_low_rank_forward and _low_rank_grads)."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None, lora_a: Tensor, lora_b: Tensor, blocks) -> Tensor:
        y, t = _low_rank_forward(x, w, b, lora_a, lora_b, blocks)
        ctx.save_for_backward(x, w, lora_a, lora_b, t)
        ctx.blocks, ctx.has_bias = blocks, b is not None
        return y

    @staticmethod
    @once_differentiable
    @backward_outside_autocast
    def backward(ctx, dy: Tensor):
        x, w, lora_a, lora_b, t = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = _low_rank_grads(dy, x, t, w, lora_a, lora_b, ctx.blocks,
                                (need[0], need[1], ctx.has_bias and need[2], need[3], need[4]))
        return (*grads, None)


class _PostAttention(torch.autograd.Function):
    """post_attention with forward and backward written out; each linear layer is (W, b, A, B), A and B None
    without an adapter, with its blocks (_low_rank_forward) in `blocks`."""

    @staticmethod
    def forward(ctx, a, x, w_out, b_out, la_out, lb_out, g1, b1, w_fc1, b_fc1, la_fc1, lb_fc1, w_fc2, b_fc2, la_fc2,
                lb_fc2, g2, b2, act: Activation, blocks: tuple, out_dropout: float, mlp_dropout: float, eps1: float,
                eps2: float) -> Tensor:
        hidden = x.shape[1]
        k_out, k_fc1, k_fc2 = blocks
        o, t_out = _low_rank_forward(a, w_out, b_out, la_out, lb_out, k_out)  # (M, H), a new tensor
        o, out_scale = apply_dropout(o, out_dropout)
        z1 = o.add_(x)
        h, mean1, rstd1 = torch.native_layer_norm(z1, (hidden,), g1, b1, eps1)
        u, t_fc1 = _low_rank_forward(h, w_fc1, b_fc1, la_fc1, lb_fc1, k_fc1)  # (M, I)
        m = act.forward(u)
        f, t_fc2 = _low_rank_forward(m, w_fc2, b_fc2, la_fc2, lb_fc2, k_fc2)  # (M, H)
        f, mlp_scale = apply_dropout(f, mlp_dropout)
        z2 = f.add_(h)
        y, mean2, rstd2 = torch.native_layer_norm(z2, (hidden,), g2, b2, eps2)
        u = u if act.backward_reads_input else None  # relu and tanh need only their output
        ctx.save_for_backward(a, w_out, la_out, lb_out, t_out, out_scale, z1, mean1, rstd1, g1, b1, h, w_fc1, la_fc1,
                              lb_fc1, t_fc1, u, m, w_fc2, la_fc2, lb_fc2, t_fc2, mlp_scale, z2, mean2, rstd2, g2, b2)
        ctx.act, ctx.blocks = act, blocks
        return y

    @staticmethod
    @once_differentiable
    @backward_outside_autocast
    def backward(ctx, dy: Tensor):
        (a, w_out, la_out, lb_out, t_out, out_scale, z1, mean1, rstd1, g1, b1, h, w_fc1, la_fc1, lb_fc1, t_fc1, u, m,
         w_fc2, la_fc2, lb_fc2, t_fc2, mlp_scale, z2, mean2, rstd2, g2, b2) = ctx.saved_tensors
        need = ctx.needs_input_grad
        k_out, k_fc1, k_fc2 = ctx.blocks
        shape = (dy.shape[1],)
        dz2, dg2, db2 = _aten.native_layer_norm_backward(dy, z2, shape, mean2, rstd2, g2, b2, [True, *need[16:18]])
        df = dropout_grad(dz2, mlp_scale)  # (M, H)
        dm, *fc2_grads = _low_rank_grads(df, m, t_fc2, w_fc2, la_fc2, lb_fc2, k_fc2, (True, *need[12:16]))
        du = ctx.act.backward(dm, u, m)  # (M, I)
        # Through the residual and through the MLP, in one GEMM.
        dh, *fc1_grads = _low_rank_grads(du, h, t_fc1, w_fc1, la_fc1, lb_fc1, k_fc1, (True, *need[8:12]),
                                         into=dz2)
        dz1, dg1, db1 = _aten.native_layer_norm_backward(dh, z1, shape, mean1, rstd1, g1, b1, [True, *need[6:8]])
        do = dropout_grad(dz1, out_scale)
        da, *out_grads = _low_rank_grads(do, a, t_out, w_out, la_out, lb_out, k_out, need[0:1] + need[2:6])
        return (da, dz1 if need[1] else None, *out_grads, dg1, db1, *fc1_grads, *fc2_grads, dg2, db2,
                None, None, None, None, None, None)


def check_positions(seq_len: int, limit: int) -> None:
    if seq_len > limit:
        raise InputError(
            f"input of {seq_len} tokens is longer than this model's position limit of {limit} tokens "
            f"(max_position_embeddings); tokenize with truncation=True, max_length={limit}")


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
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)
    elif hasattr(module, "init_weights"):  # a family's own layer type (GPT-2's Conv1D)
        module.init_weights(std)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 as the reference does, then cast back."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE) on half-split head dimensions, as the reference's rotate_half: the inverse
    frequencies are a computed buffer (in no checkpoint), with the 'linear' and 'llama3' rescalings."""

    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None):
        super().__init__()
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling or {}
        self.register_buffer("inv_freq", torch.empty(head_dim // 2), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Computes the frequencies (again after a meta-device build: from_pretrained calls it)."""
        if self.inv_freq.is_meta:
            return
        d = self.head_dim
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))  # as the reference
        kind = self.scaling.get("rope_type", "default")
        if kind == "linear":
            inv_freq = inv_freq / self.scaling["factor"]
        elif kind == "llama3":
            inv_freq = _llama3_frequencies(inv_freq, **{k: self.scaling[k] for k in (
                "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")})
        with torch.no_grad():
            self.inv_freq.copy_(inv_freq)

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) would round the frequencies (a cos error of 0.4 by position 1000): they stay float32,
        # as the reference's loader leaves them.
        super()._apply(fn, recurse)
        if not self.inv_freq.is_meta and self.inv_freq.dtype != torch.float32:
            self.inv_freq = torch.empty(self.inv_freq.shape, dtype=torch.float32, device=self.inv_freq.device)
            self.reset_buffers()
        return self

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(N,) positions -> cos, sin (N, 1, head_dim), broadcast over heads."""
        freqs = positions.float()[:, None] * self.inv_freq.float()[None, :]  # (N, d/2)
        angles = torch.cat([freqs, freqs], -1)[:, None, :]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """(N, heads, d) rotated by position."""
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _llama3_frequencies(inv_freq: Tensor, factor: float, low_freq_factor: float, high_freq_factor: float,
                        original_max_position_embeddings: int) -> Tensor:
    """Llama 3's rescaling: long wavelengths slowed by `factor`, short ones kept, a smooth blend between."""
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = original_max_position_embeddings / low_freq_factor
    high_wavelen = original_max_position_embeddings / high_freq_factor
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


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
