"""Packing a batch's real tokens, and attention over them.

Linear layers, norms and MLPs run on the packed (N, H) tokens; attention runs per group of similar-length sequences
on small grids. Training on CPU uses attention with forward and backward written out (_PackedAttention,
_FirstTokenMix); inference and other devices use SDPA."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .layers import apply_dropout, dropout_grad


@dataclass
class Group:
    """Sequences of similar length whose packed tokens are the contiguous slice [start, end): attention runs on
    a (seqs, longest) grid of just these, so short sequences do not pay for the batch's longest."""

    start: int
    end: int
    seqs: int
    longest: int
    cells: tuple[Tensor, Tensor] | None  # (n,) x2: each token's (sequence, position); None if all equally long
    key_mask: Tensor | None  # (seqs, 1, 1, longest)

    def scatter(self, x: Tensor, grid: Tensor) -> Tensor:
        """Write the (n, ...) tokens into `grid`, a zeroed (seqs, longest, ...) tensor or view; returns it."""
        return grid.copy_(x.view(grid.shape)) if self.cells is None else grid.index_put_(self.cells, x)

    def gather(self, grid: Tensor) -> Tensor:
        """(seqs, longest, ...) -> (n, ...)"""
        return grid.reshape(-1, *grid.shape[2:]) if self.cells is None else grid[self.cells]

    def new_grid(self, x: Tensor, *shape: int) -> Tensor:
        """A buffer like x for a grid of this group: zeroed only if it has padding for `scatter` to leave."""
        return x.new_empty(shape) if self.cells is None else x.new_zeros(shape)

    def to_grid(self, x: Tensor, num_heads: int) -> Tensor:
        """(n, H) this group's tokens -> (seqs, heads, longest, head_dim)"""
        shape = (self.seqs, self.longest, x.shape[1])
        grid = x.view(shape) if self.cells is None else self.scatter(x, x.new_zeros(shape))
        return grid.view(self.seqs, self.longest, num_heads, -1).transpose(1, 2)

    def from_grid(self, grid: Tensor) -> Tensor:
        """(seqs, heads, longest, head_dim) -> (n, H)"""
        return self.gather(grid.transpose(1, 2)).flatten(1)


@dataclass
class Packing:
    """Where a batch's real tokens sit. Linear layers, norms and MLPs run on the packed (N, H) tokens only. Tokens
    are packed sequence by sequence, longest sequence first, so that attention can work on groups of similar
    length; `restore` brings per-sequence outputs back to the input order."""

    indices: Tensor | None  # (N,) flat positions of the packed tokens in the (B*T) grid; None: no padding
    batch: int
    seq_len: int
    groups: list[Group]
    heads: Tensor  # (B,) packed index of each sequence's first real token ([CLS] / <s>), in packing order
    restore: Tensor | None  # (B,) position of each input row in packing order; None: the same order

    @property
    def first(self) -> Tensor:
        """(B,) packed index of each input row's first real token."""
        return self.heads_to_input_order(self.heads)

    @property
    def group_tokens(self) -> list[int]:
        """How many packed tokens each length group holds, in packing order (for Tensor.split)."""
        return [g.end - g.start for g in self.groups]

    def heads_to_input_order(self, heads: Tensor) -> Tensor:
        """(B, ...) rows in packing order -> in input order"""
        return heads if self.restore is None else heads[self.restore]

    @staticmethod
    @torch.compiler.disable  # data-dependent lengths: traced, every new batch would compile again
    def from_mask(attention_mask: Tensor | None, shape: tuple[int, int], device) -> "Packing":
        batch, seq_len = shape
        if attention_mask is None or bool(attention_mask.all()):
            heads = torch.arange(batch, device=device) * seq_len
            return Packing(None, batch, seq_len, [Group(0, batch * seq_len, batch, seq_len, None, None)], heads,
                           None)
        mask = attention_mask.bool()
        lengths = mask.sum(1)  # (B,)
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,)
        sorted_lengths = lengths[order].tolist()
        # Flat grid positions of real tokens, sequence by sequence in `order` (any mask layout works).
        rows, cols = mask[order].nonzero(as_tuple=True)
        indices = order[rows] * seq_len + cols  # (N,)
        heads = torch.cumsum(lengths[order], 0) - lengths[order]
        restore = torch.empty_like(order).scatter_(0, order, torch.arange(batch, device=device))
        return Packing(indices, batch, seq_len, _groups(sorted_lengths, device), heads, restore)

    def pack(self, grid: Tensor) -> Tensor:
        """(B, T, ...) -> (N, ...)"""
        flat = grid.reshape(self.batch * self.seq_len, *grid.shape[2:])
        return flat if self.indices is None else flat[self.indices]

    def unpack(self, packed: Tensor, seq_len: int | None = None) -> Tensor:
        """(N, ...) -> (B, seq_len, ...), zeros at padding; seq_len may exceed the trimmed grid's (the caller's)."""
        if self.indices is None:
            grid = packed.reshape(self.batch, self.seq_len, *packed.shape[1:])
        else:
            grid = packed.new_zeros(self.batch * self.seq_len, *packed.shape[1:])
            grid = grid.index_copy(0, self.indices, packed).view(self.batch, self.seq_len, *packed.shape[1:])
        if seq_len is not None and seq_len > self.seq_len:
            grid = torch.cat([grid, grid.new_zeros(self.batch, seq_len - self.seq_len, *grid.shape[2:])], 1)
        return grid


def _groups(lengths: list[int], device, shrink: float = 0.7, max_groups: int = 6) -> list[Group]:
    """Cut the length-sorted sequences where the length falls below `shrink` x the group's longest. Padded
    attention work per group is seqs x longest^2, so a few groups remove most of it; more cost launch overhead."""
    cuts = [0]
    for i, n in enumerate(lengths):
        if n < shrink * lengths[cuts[-1]] and len(cuts) < max_groups:
            cuts.append(i)
    cuts.append(len(lengths))
    groups, start = [], 0
    for a, b in zip(cuts, cuts[1:]):
        group_lengths = lengths[a:b]
        longest, n = group_lengths[0], sum(group_lengths)
        if all(x == longest for x in group_lengths):
            groups.append(Group(start, start + n, b - a, longest, None, None))
        else:
            lens = torch.tensor(group_lengths, device=device)
            real = torch.arange(longest, device=device) < lens[:, None]  # (seqs, longest)
            groups.append(Group(start, start + n, b - a, longest, real.nonzero(as_tuple=True), real[:, None, None, :]))
        start += n
    return groups


@torch.compiler.disable  # like Packing.from_mask
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


def self_attention(h: Tensor, x: Tensor, packing: Packing, query: nn.Linear, key: nn.Linear, value: nn.Linear,
                   num_heads: int, dropout_p: float) -> Tensor:
    """Multi-head self-attention over packed tokens x (N, H), before the output projection, for the query rows h:
    all of x -> (N, H), or each sequence's first token, (B, H) in packing order -> (B, H)."""
    if h is not x:
        return first_token_attention(query(h), x, key, value, packing, num_heads, dropout_p)
    if x.device.type == "cpu" and (dropout_p > 0.0 or torch.is_grad_enabled()):
        return packed_attention_cpu(fused_qkv(x, query, key, value), packing, num_heads, dropout_p)
    return packed_attention(query(x), key(x), value(x), packing, num_heads, dropout_p)


def fused_qkv(x: Tensor, query: nn.Linear, key: nn.Linear, value: nn.Linear) -> Tensor:
    """(N, H) -> (N, 3H): the three projections as one GEMM, forward and backward."""
    biases = [query.bias, key.bias, value.bias]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        return torch.cat([query(x), key(x), value(x)], 1)
    bias = None if biases[0] is None else torch.cat(biases)
    return F.linear(x, torch.cat([query.weight, key.weight, value.weight]), bias)


@torch.compiler.disable  # a Python loop over the batch's length groups, different for every batch
def packed_attention(q: Tensor, k: Tensor, v: Tensor, packing: Packing, num_heads: int, dropout_p: float) -> Tensor:
    """Attention where each sequence sees only its own real tokens: (N, H) x3 -> (N, H). Each group of
    similar-length sequences gets its own small grid, and SDPA's fused kernel."""
    # One split per tensor, not a slice per group: each slice's backward would fill a whole (N, H) gradient.
    tokens = packing.group_tokens
    out = []
    for g, qi, ki, vi in zip(packing.groups, q.split(tokens), k.split(tokens), v.split(tokens)):
        qg, kg, vg = (g.to_grid(t, num_heads) for t in (qi, ki, vi))  # each (S, nh, L, d)
        out.append(g.from_grid(F.scaled_dot_product_attention(qg, kg, vg, attn_mask=g.key_mask, dropout_p=dropout_p)))
    return out[0] if len(out) == 1 else torch.cat(out)


@torch.compiler.disable  # like packed_attention
def packed_attention_cpu(qkv: Tensor, packing: Packing, num_heads: int, dropout_p: float) -> Tensor:
    """packed_attention for training on CPU, from the fused (N, 3H) projections."""
    return _apply_outside_autocast(_PackedAttention, qkv, packing, num_heads, dropout_p)


def _apply_outside_autocast(function: type[torch.autograd.Function], *args):
    """Runs a written-out autograd Function at one precision: autocast would give its forward and backward a mix of
    bfloat16 and float32 tensors that they cannot combine. Under autocast it runs in float32 (float64 if an input is);
    its backward is decorated with _backward_outside_autocast."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return function.apply(*args)
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    with torch.autocast(device, enabled=False):
        return function.apply(*(a.to(dtype) if isinstance(a, Tensor) else a for a in args))


def _backward_outside_autocast(backward):
    """backward is often called under the autocast that the forward ran outside of (the Trainer's bf16 step)."""
    @functools.wraps(backward)
    def run(ctx, *grads):
        with torch.autocast(grads[0].device.type, enabled=False):
            return backward(ctx, *grads)
    return run


class _PackedAttention(torch.autograd.Function):
    """Attention over packed tokens with forward and backward written out, per length group: (N, 3H) -> (N, H).
    On CPU, SDPA with dropout falls back to unfused maths whose bernoulli_ mask costs 2.5x the bit draws of
    `apply_dropout`, and autograd's bookkeeping for the ~50 small operations per group costs more than their maths."""

    @staticmethod
    def forward(ctx, qkv: Tensor, packing: Packing, num_heads: int, dropout_p: float) -> Tensor:
        hidden = qkv.shape[1] // 3
        d = hidden // num_heads
        out, saved = [], []
        for g, part in zip(packing.groups, qkv.split(packing.group_tokens)):
            seqs, longest = g.seqs, g.longest
            grid = g.new_grid(part, 3, seqs, num_heads, longest, d)
            g.scatter(part.view(-1, 3, num_heads, d), grid.permute(1, 3, 0, 2, 4))
            grid = grid.view(3, seqs * num_heads, longest, d)
            q, k, v = grid  # each (S*nh, L, d)
            scores = torch.baddbmm(q.new_empty(()), q, k.transpose(1, 2), beta=0, alpha=d**-0.5)  # (S*nh, L, L)
            if g.key_mask is not None:
                scores.view(seqs, num_heads, longest, longest).masked_fill_(~g.key_mask, float("-inf"))
            probs = torch.softmax(scores, -1)
            dropped, keep = apply_dropout(probs, dropout_p)
            mixed = torch.bmm(dropped, v).view(seqs, num_heads, longest, d).transpose(1, 2)  # (S, L, nh, d)
            out.append(g.gather(mixed).reshape(-1, hidden))  # (n, H)
            saved += [grid, probs, dropped, keep]
        ctx.save_for_backward(*saved)
        ctx.packing, ctx.num_heads, ctx.dropout_p = packing, num_heads, dropout_p
        return out[0] if len(out) == 1 else torch.cat(out)

    @staticmethod
    @once_differentiable
    @_backward_outside_autocast
    def backward(ctx, grad: Tensor):
        packing, num_heads, p = ctx.packing, ctx.num_heads, ctx.dropout_p
        hidden = grad.shape[1]
        d = hidden // num_heads
        saved = ctx.saved_tensors
        grads = []
        for i, (g, part) in enumerate(zip(packing.groups, grad.split(packing.group_tokens))):
            grid, probs, dropped, keep = saved[4 * i:4 * i + 4]
            seqs, longest = g.seqs, g.longest
            q, k, v = grid
            d_mixed = g.new_grid(part, seqs, num_heads, longest, d)
            g.scatter(part.view(-1, num_heads, d), d_mixed.transpose(1, 2))
            d_mixed = d_mixed.view(seqs * num_heads, longest, d)
            d_grid = torch.empty_like(grid)
            dq, dk, dv = d_grid
            torch.bmm(dropped.transpose(1, 2), d_mixed, out=dv)
            d_probs = torch.bmm(d_mixed, v.transpose(1, 2))  # (S*nh, L, L)
            d_scores = torch._softmax_backward_data(dropout_grad(d_probs, keep, p), probs, -1, probs.dtype)
            torch.baddbmm(dq, d_scores, k, beta=0, alpha=d**-0.5, out=dq)
            torch.baddbmm(dk, d_scores.transpose(1, 2), q, beta=0, alpha=d**-0.5, out=dk)
            d_grid = d_grid.view(3, seqs, num_heads, longest, d).permute(1, 3, 0, 2, 4)  # (S, L, 3, nh, d)
            grads.append(g.gather(d_grid).reshape(-1, 3 * hidden))  # (n, 3H)
        return (grads[0] if len(grads) == 1 else torch.cat(grads)), None, None, None


@torch.compiler.disable  # like packed_attention
def first_token_attention(q: Tensor, x: Tensor, key: nn.Linear, value: nn.Linear, packing: Packing,
                          num_heads: int, dropout_p: float) -> Tensor:
    """Attention for each sequence's first token over all of its tokens: (B, H) queries in packing order and
    (N, H) tokens -> (B, H). The key and value projections are folded into the B queries and outputs instead of
    running on all N tokens (per head h, with attention weights p_j over tokens x_j):
        q . (Wk x_j + bk) = (Wk^T q) . x_j + q . bk
        sum_j p_j (Wv x_j + bv) = Wv (sum_j p_j x_j) + bv sum_j p_j"""
    batch, hidden = q.shape
    d = hidden // num_heads
    qh = q.view(batch, num_heads, d) * d**-0.5  # (B, nh, d), scaled as in SDPA
    u = torch.einsum("bhd,hdi->bhi", qh, key.weight.view(num_heads, d, hidden))  # (B, nh, H)
    shift = (qh * key.bias.view(num_heads, d)).sum(-1, keepdim=True) if key.bias is not None else None  # (B, nh, 1)
    z, p_sum = _apply_outside_autocast(_FirstTokenMix, u, shift, x, packing, dropout_p)  # (B, nh, H), (B, nh, 1)
    out = torch.einsum("bhi,hdi->bhd", z, value.weight.view(num_heads, d, hidden))  # (B, nh, d)
    if value.bias is not None:
        out = out + p_sum * value.bias.view(num_heads, d)
    return out.reshape(batch, hidden)


class _FirstTokenMix(torch.autograd.Function):
    """first_token_attention's per-group part with forward and backward written out, for the reasons of
    _PackedAttention: folded queries u (B, nh, H), their key-bias shift (B, nh, 1) or None, and the tokens x (N, H)
    -> the attention-weighted token sums (B, nh, H) and the weight sums (B, nh, 1), 1 but for dropout."""

    @staticmethod
    def forward(ctx, u: Tensor, shift: Tensor | None, x: Tensor, packing: Packing, dropout_p: float):
        seqs = [g.seqs for g in packing.groups]
        shifts = shift.split(seqs) if shift is not None else [None] * len(seqs)
        mixed, sums, saved = [], [], []
        for g, ui, si, xi in zip(packing.groups, u.split(seqs), shifts, x.split(packing.group_tokens)):
            xg = g.to_grid(xi, 1).squeeze(1)  # (S, L, H)
            scores = torch.bmm(ui, xg.transpose(1, 2)) if si is None else torch.baddbmm(si, ui, xg.transpose(1, 2))
            if g.key_mask is not None:  # scores: (S, nh, L)
                scores.masked_fill_(~g.key_mask.view(g.seqs, 1, g.longest), float("-inf"))
            probs = torch.softmax(scores, -1)
            dropped, keep = apply_dropout(probs, dropout_p)
            mixed.append(torch.bmm(dropped, xg))  # (S, nh, H)
            sums.append(dropped.sum(-1, keepdim=True))  # (S, nh, 1)
            saved += [ui, xg, probs, dropped, keep]
        ctx.save_for_backward(*saved)
        ctx.packing, ctx.dropout_p, ctx.has_shift = packing, dropout_p, shift is not None
        return torch.cat(mixed), torch.cat(sums)

    @staticmethod
    @once_differentiable
    @_backward_outside_autocast
    def backward(ctx, grad_mixed: Tensor, grad_sums: Tensor):
        packing, p = ctx.packing, ctx.dropout_p
        seqs = [g.seqs for g in packing.groups]
        saved = ctx.saved_tensors
        du, dshift, dx = [], [], []
        for i, (g, dmi, dsi) in enumerate(zip(packing.groups, grad_mixed.split(seqs), grad_sums.split(seqs))):
            ui, xg, probs, dropped, keep = saved[5 * i:5 * i + 5]
            d_dropped = torch.baddbmm(dsi, dmi, xg.transpose(1, 2))  # (S, nh, L)
            dxg = torch.bmm(dropped.transpose(1, 2), dmi)  # (S, L, H)
            d_scores = torch._softmax_backward_data(dropout_grad(d_dropped, keep, p), probs, -1, probs.dtype)
            du.append(torch.bmm(d_scores, xg))  # (S, nh, H)
            dshift.append(d_scores.sum(-1, keepdim=True))
            dx.append(g.gather(dxg.baddbmm_(d_scores.transpose(1, 2), ui)))  # (n, H)
        return torch.cat(du), torch.cat(dshift) if ctx.has_shift else None, torch.cat(dx), None, None
