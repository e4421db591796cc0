"""Packing a batch's real tokens, and attention over them.

Linear layers, norms and MLPs run on the packed (N, H) tokens; attention runs per group of similar-length sequences
on small grids. Training on CPU uses attention with forward and backward written out (_PackedAttention,
_FirstTokenMix); inference and other devices use SDPA."""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .layers import (LinearParts, apply_dropout, backward_outside_autocast, dropout_grad, linear_parts,
                     low_rank_linear)


@dataclass
class Group:
    """Sequences of similar length, consecutive in the packing: attention runs on a (seqs, longest) grid of just
    these, so short sequences do not pay for the batch's longest. The grids of all groups are stacked in one padded
    buffer (Packing.to_grids), this group's from row `row`."""

    seqs: int
    longest: int
    row: int
    key_mask: Tensor | None  # (seqs, 1, 1, longest); None if all equally long

    def grid(self, grids: Tensor, *shape: int) -> Tensor:
        """This group's (seqs, longest, *shape) view of the stacked grids (R, C)."""
        return grids[self.row:self.row + self.seqs * self.longest].view(self.seqs, self.longest, *shape)


@dataclass
class Packing:
    """Where a batch's real tokens sit. Linear layers, norms and MLPs run on the packed (N, H) tokens only. Tokens
    are packed sequence by sequence, longest sequence first, so that attention can work on groups of similar
    length; `restore` brings per-sequence outputs back to the input order."""

    indices: Tensor | None  # (N,) flat positions of the packed tokens in the (B*T) grid; None: no padding
    batch: int
    seq_len: int
    groups: list[Group]
    starts: Tensor  # (B,) packed index of each sequence's first real token ([CLS] / <s>), in packing order
    restore: Tensor | None  # (B,) position of each input row in packing order; None: the same order
    grid_rows: Tensor | None  # (N,) each packed token's row in the stacked grids; None: they are the packed rows
    grid_sources: Tensor | None  # (R,) each grid row's packed token, N for padding
    lengths: list[int]  # (B,) real tokens of each sequence, in packing order
    # Several sequences in a row (from_positions): each input row's first and last packed token, (B,) each.
    row_tokens: tuple[Tensor, Tensor] | None = None
    _head_major: dict[int, HeadMajor] = field(default_factory=dict, repr=False)

    def head_major(self, num_heads: int) -> HeadMajor:
        """The head-by-head layout of the groups' projections (made once a batch, shared by its blocks)."""
        if num_heads not in self._head_major:
            self._head_major[num_heads] = HeadMajor.build(self, num_heads)
        return self._head_major[num_heads]

    @property
    def first_tokens(self) -> Tensor:
        """(B,) packed index of each input row's first real token."""
        if self.row_tokens is not None:
            return self.row_tokens[0]
        return self.to_input_order(self.starts)

    @property
    def last_tokens(self) -> Tensor:
        """(B,) packed index of each input row's last real token (what a decoder's head reads)."""
        if self.row_tokens is not None:
            return self.row_tokens[1]
        return self.to_input_order(self.ends)

    @property
    def ends(self) -> Tensor:
        """(S,) packed index of each sequence's last token, in packing order."""
        return self.starts + torch.tensor(self.lengths, device=self.starts.device) - 1

    @functools.cached_property
    def positions(self) -> Tensor:
        """(N,) each packed token's place in its own sequence: positions restart per sequence."""
        lengths = torch.tensor(self.lengths, device=self.starts.device)
        total = int(lengths.sum())
        return torch.arange(total, device=self.starts.device) - self.starts.repeat_interleave(lengths, output_size=total)

    @property
    def rows(self) -> Tensor:
        """(N,) each packed token's row in the input batch."""
        flat = self.indices if self.indices is not None else torch.arange(self.batch * self.seq_len,
                                                                          device=self.starts.device)
        return flat // self.seq_len

    def to_input_order(self, rows: Tensor) -> Tensor:
        """(B, ...) rows in packing order -> in input order"""
        return rows if self.restore is None else rows[self.restore]

    def to_grids(self, x: Tensor) -> Tensor:
        """(N, C) packed tokens -> (R, C) the groups' stacked grids, zeros at padding. One row gather for all groups:
        per-group scatters into strided grids cost more than the attention's maths."""
        if self.grid_rows is None:
            return x
        return torch.cat([x, x.new_zeros(1, x.shape[1])]).index_select(0, self.grid_sources)

    def from_grids(self, grids: Tensor) -> Tensor:
        """(R, C) -> (N, C): the real tokens' rows."""
        return grids if self.grid_rows is None else grids.index_select(0, self.grid_rows)

    @staticmethod
    @torch.compiler.disable  # data-dependent lengths: traced, every new batch would compile again
    def from_mask(attention_mask: Tensor | None, shape: tuple[int, int], device) -> "Packing":
        batch, seq_len = shape
        if attention_mask is None or bool(attention_mask.all()):
            starts = torch.arange(batch, device=device) * seq_len
            return Packing(None, batch, seq_len, [Group(batch, seq_len, 0, None)], starts, None,
                           None, None, [seq_len] * batch)
        mask = attention_mask.bool()
        lengths = mask.sum(1)  # (B,)
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,)
        sorted_lengths = lengths[order]
        # Flat grid positions of real tokens, sequence by sequence in `order` (any mask layout works).
        rows, cols = mask[order].nonzero(as_tuple=True)
        indices = order[rows] * seq_len + cols  # (N,)
        starts = torch.cumsum(sorted_lengths, 0) - sorted_lengths
        restore = torch.empty_like(order).scatter_(0, order, torch.arange(batch, device=device))
        lengths = sorted_lengths.tolist()
        groups = _groups(lengths, device)
        grid_rows, grid_sources = _grid_layout(groups, rows, starts, device)
        return Packing(indices, batch, seq_len, groups, starts, restore, grid_rows, grid_sources, lengths)

    @staticmethod
    @torch.compiler.disable  # like from_mask
    def from_positions(attention_mask: Tensor | None, position_ids: Tensor | None, shape: tuple[int, int],
                       device) -> "Packing":
        """Decoders' packing, with the reference's padding-free format: without an attention mask, a position id
        that is not the previous one + 1 starts a new sequence inside the row (the reference's
        find_packed_sequence_indices), so several sequences share a row, each attending only to itself, and
        positions restart per sequence. With a mask (or no restart) position ids only place the tokens, as in the
        reference, and this is from_mask."""
        if position_ids is None or attention_mask is not None:
            return Packing.from_mask(attention_mask, shape, device)
        batch, seq_len = shape
        positions = position_ids.expand(batch, seq_len)
        new = torch.ones(batch, seq_len, dtype=torch.bool, device=device)  # (B, T) True where a sequence starts
        new[:, 1:] = positions[:, 1:] - positions[:, :-1] != 1
        if int(new.sum()) == batch:
            return Packing.from_mask(None, shape, device)
        sequence = new.flatten().cumsum(0) - 1  # (B*T,) each token's sequence, in row order
        lengths = torch.bincount(sequence)  # (S,)
        order = torch.argsort(lengths, descending=True, stable=True)  # (S,) longest first
        rank = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=device))
        ranks = rank[sequence]  # (B*T,)
        indices = torch.argsort(ranks, stable=True)  # (N,) flat positions, sequence by sequence in `order`
        sorted_lengths = lengths[order]
        starts = torch.cumsum(sorted_lengths, 0) - sorted_lengths
        lengths = sorted_lengths.tolist()
        groups = _groups(lengths, device)
        grid_rows, grid_sources = _grid_layout(groups, ranks[indices], starts, device)
        packed = torch.empty_like(indices).scatter_(0, indices, torch.arange(len(indices), device=device))
        rows = torch.arange(batch, device=device) * seq_len  # (B,) flat position of each row's first token
        row_tokens = (packed[rows], packed[rows + seq_len - 1])
        return Packing(indices, batch, seq_len, groups, starts, None, grid_rows, grid_sources, lengths, row_tokens)

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


def _grid_layout(groups: list[Group], sequence: Tensor, starts: Tensor, device) -> tuple[Tensor | None, Tensor | None]:
    """Where each packed token sits in the groups' stacked grids, from each token's sequence (N,) (in packing order)
    and the sequences' packed starts: (grid_rows (N,), grid_sources (R,)), or (None, None) when the grids are the
    packed rows themselves."""
    if all(g.key_mask is None for g in groups):
        return None, None
    # Sequence i of a group starts at row + i * longest of the stacked grids; its tokens follow.
    grid_starts = torch.tensor([g.row + i * g.longest for g in groups for i in range(g.seqs)], device=device)
    position = torch.arange(len(sequence), device=device) - starts[sequence]  # each token's place in its sequence
    grid_rows = grid_starts[sequence] + position  # (N,)
    last = groups[-1]
    grid_sources = torch.full((last.row + last.seqs * last.longest,), len(sequence), device=device)
    grid_sources[grid_rows] = torch.arange(len(sequence), device=device)
    return grid_rows, grid_sources


def _groups(lengths: list[int], device, shrink: float = 0.7, max_groups: int = 6) -> list[Group]:
    """Cut the length-sorted sequences where the length falls below `shrink` x the group's longest. Padded
    attention work per group is seqs x longest^2, so a few groups remove most of it; more cost launch overhead."""
    cuts = [0]
    for i, n in enumerate(lengths):
        if n < shrink * lengths[cuts[-1]] and len(cuts) < max_groups:
            cuts.append(i)
    cuts.append(len(lengths))
    groups, row = [], 0
    for a, b in zip(cuts, cuts[1:]):
        group_lengths = lengths[a:b]
        longest = group_lengths[0]
        key_mask = None
        if any(x != longest for x in group_lengths):
            key_mask = (torch.arange(longest, device=device) < torch.tensor(group_lengths, device=device)[:, None])
            key_mask = key_mask[:, None, None, :]  # (seqs, 1, 1, longest)
        groups.append(Group(b - a, longest, row, key_mask))
        row += (b - a) * longest
    return groups


@dataclass
class HeadMajor:
    """The packed q, k and v laid out head by head: each group's are (seqs * heads, longest, head_dim) blocks of one
    (3, rows, head_dim) tensor, so a group's attention is three batched GEMMs on views, and getting there and back
    is one row gather each way for all groups (per-group permuting copies cost more than the maths). The groups'
    score matrices sit end to end in one flat buffer, so masking and dropout run once for all groups."""

    gather: Tensor  # (3 * rows,) row of the (N * 3 * heads, head_dim) projections for each head-major row
    scatter: Tensor  # (N * 3 * heads,) head-major row of each projection row: gather's inverse on real tokens
    outputs: Tensor  # (N * heads,) head-major row of each token's query, per head: where its output is
    grad_gather: Tensor  # (rows,) row of the (N * heads + 1, head_dim) output gradient for each query row
    blocks: list[tuple[int, int, int, int]]  # per group: first row, seqs * heads, longest, first score
    padded_keys: Tensor | None  # (scores,) True at scores of padding keys; None: no padding
    rows: int
    scores: int

    @staticmethod
    def build(packing: Packing, num_heads: int) -> HeadMajor:
        nh, lengths = num_heads, packing.lengths
        starts = np.cumsum([0] + lengths[:-1])  # (B,) packed row of each sequence's first token
        tokens, valid, padded_keys, blocks = [], [], [], []
        seq = row = score = 0
        for g in packing.groups:
            lens = np.asarray(lengths[seq:seq + g.seqs])[:, None, None]  # (S, 1, 1)
            pos = np.arange(g.longest)  # (L,)
            tokens.append(np.broadcast_to(starts[seq:seq + g.seqs, None, None] + pos, (g.seqs, nh, g.longest)))
            valid.append(np.broadcast_to(pos < lens, (g.seqs, nh, g.longest)))
            padded_keys.append(np.broadcast_to(pos >= lens[..., None], (g.seqs, nh, g.longest, g.longest)))
            blocks.append((row, g.seqs * nh, g.longest, score))
            seq, row, score = seq + g.seqs, row + g.seqs * nh * g.longest, score + g.seqs * nh * g.longest ** 2
        token, real = np.concatenate([t.ravel() for t in tokens]), np.concatenate([v.ravel() for v in valid])
        head = np.concatenate([np.broadcast_to(np.arange(nh)[:, None], (s // nh, nh, n)).ravel()
                               for _, s, n, _ in blocks])  # (rows,)
        source = np.where(real, token * 3 * nh + head, 0)  # padding reads token 0: finite, and masked
        gather = np.concatenate([source + part * nh for part in range(3)])  # q, k, v
        n = sum(lengths)
        scatter = np.empty(n * 3 * nh, dtype=np.int64)
        real_rows = np.flatnonzero(real)
        for part in range(3):
            scatter[source[real_rows] + part * nh] = real_rows + part * row
        outputs = scatter.reshape(-1, 3, nh)[:, 0].ravel()
        grad_gather = np.where(real, token * nh + head, n * nh)  # padding: the zero row appended
        masks = np.concatenate([m.ravel() for m in padded_keys]) if not real.all() else None
        device = packing.starts.device
        tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return HeadMajor(tensor(gather), tensor(scatter), tensor(outputs), tensor(grad_gather), blocks,
                         None if masks is None else tensor(masks), row, score)


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


def self_attention(h: Tensor, x: Tensor, packing: Packing, query: nn.Module, key: nn.Module, value: nn.Module,
                   num_heads: int, dropout_p: float) -> Tensor:
    """Multi-head self-attention over packed tokens x (N, H), before the output projection, for the query rows h:
    all of x -> (N, H), or each sequence's first token, (B, H) in packing order -> (B, H)."""
    if h is not x:
        keys, values = linear_parts(key, biased=False), linear_parts(value, biased=False)
        if keys is not None and values is not None:
            return first_token_attention(query(h), x, keys, values, packing, num_heads, dropout_p)
        qkv = torch.cat([query(x), key(x), value(x)], 1)  # replaced or hooked modules: their own outputs
        return attend(qkv, packing, num_heads, dropout_p=dropout_p)[packing.starts]
    return attend(fused_qkv(x, query, key, value), packing, num_heads, dropout_p=dropout_p)


def fused_qkv(x: Tensor, query: nn.Module, key: nn.Module, value: nn.Module) -> Tensor:
    """(N, H) -> (N, 3H): the three projections as one GEMM, forward and backward, LoRA adapters on any of them
    folded in (low_rank_linear)."""
    parts = [linear_parts(m, biased=False) for m in (query, key, value)]
    biased = {p is not None and p.bias is not None for p in parts}
    adapted = [p for p in parts if p is not None and p.lora_a is not None]
    if (None in parts or len(biased) > 1
            or adapted and (torch.is_autocast_enabled(x.device.type) or torch.compiler.is_compiling())):
        return torch.cat([query(x), key(x), value(x)], 1)
    bias = torch.cat([p.bias for p in parts]) if True in biased else None
    if not adapted:
        return F.linear(x, torch.cat([p.weight for p in parts]), bias)  # (3H, H)
    columns = [0, parts[0].weight.shape[0], parts[0].weight.shape[0] + parts[1].weight.shape[0]]
    return low_rank_linear(x, [p.weight for p in parts], bias,
                           [(c, p) for c, p in zip(columns, parts) if p.lora_a is not None])


def attend(qkv: Tensor, packing: Packing, num_heads: int, num_kv_heads: int | None = None, *, causal: bool = False,
           dropout_p: float = 0.0, window: int | None = None, cache: LayerCache | None = None) -> Tensor:
    """The one attention entry point models call: (N, (nh + 2 nkv) d) packed q, k, v projections (positions
    already applied) -> (N, nh d). Each sequence attends to its own tokens only (to earlier ones if causal, to the
    last `window` if given); grouped-query attention when nkv < nh. With a KV cache, keys and values are stored for
    generation, and a decoding step attends to all the cached tokens."""
    nkv = num_kv_heads or num_heads
    if cache is not None:
        d = qkv.shape[1] // (num_heads + 2 * nkv)
        q, k, v = qkv.view(-1, num_heads + 2 * nkv, d).split([num_heads, nkv, nkv], 1)
        cache.write(k, v)
        if cache.decoding:
            return cache.attend(q, num_heads // nkv, window)
    if qkv.device.type == "cpu" and not causal and nkv == num_heads and (dropout_p > 0.0 or torch.is_grad_enabled()):
        return packed_attention_cpu(qkv, packing, num_heads, dropout_p)
    if (qkv.device.type == "cuda" and causal and dropout_p == 0.0 and qkv.dtype in (torch.float16, torch.bfloat16)
            and _varlen() is not None):
        return varlen_attention(qkv, packing, num_heads, nkv, window)
    return packed_attention(qkv, packing, num_heads, dropout_p, nkv, causal, window)


@functools.cache
def _varlen():
    """torch's variable-length (flash) attention for CUDA, where this torch has it with windows and GQA."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    return varlen_attn if "window_size" in params and "enable_gqa" in params else None


def varlen_attention(qkv: Tensor, packing: Packing, num_heads: int, nkv: int, window: int | None = None) -> Tensor:
    """Causal attention on CUDA (flash, half precision) straight on the packed tokens: no grids at all."""
    d = qkv.shape[1] // (num_heads + 2 * nkv)
    q, k, v = qkv.view(-1, num_heads + 2 * nkv, d).split([num_heads, nkv, nkv], 1)  # (N, heads, d)
    lengths = torch.tensor(packing.lengths, device=qkv.device, dtype=torch.int32)
    cu = F.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))  # (B + 1,) sequence bounds, packing order
    longest = max(packing.lengths)
    # (left, 0): causal; left = window - 1 keeps the query and the window - 1 tokens before it, as the reference.
    left = -1 if window is None else window - 1
    out = _varlen()(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, longest, longest, window_size=(left, 0),
                    enable_gqa=nkv != num_heads)
    return out.reshape(q.shape[0], num_heads * d)


@torch.compiler.disable  # a Python loop over the batch's length groups, different for every batch
def packed_attention(qkv: Tensor, packing: Packing, num_heads: int, dropout_p: float, num_kv_heads: int | None = None,
                     causal: bool = False, window: int | None = None) -> Tensor:
    """Attention where each sequence sees only its own real tokens: (N, (nh + 2 nkv) d) projections -> (N, nh d).
    Each group of similar-length sequences gets its own small grid, and SDPA's fused kernel. A group's sequences
    end in padding, so under a causal mask real queries never see it (padding queries are dropped)."""
    nkv = num_kv_heads or num_heads
    d = qkv.shape[1] // (num_heads + 2 * nkv)
    grids = packing.to_grids(qkv)  # (R, (nh + 2 nkv) d)
    out = []
    for g in packing.groups:
        grid = g.grid(grids, num_heads + 2 * nkv, d).transpose(1, 2)  # (S, heads, L, d)
        q, k, v = grid.split([num_heads, nkv, nkv], 1)
        if nkv != num_heads:
            k, v = (t.repeat_interleave(num_heads // nkv, 1) for t in (k, v))
        mask, is_causal = g.key_mask, False
        if causal:
            mask = _causal_mask(g.longest, window, qkv.device)
            is_causal = mask is None
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        out.append(mixed.transpose(1, 2).reshape(-1, num_heads * d))  # (S*L, nh d)
    return packing.from_grids(out[0] if len(out) == 1 else torch.cat(out))


def _causal_mask(n: int, window: int | None, device) -> Tensor | None:
    """(n, n) True where query i may see key j: j <= i, and i - j < window; None: SDPA's own causal mask."""
    if window is None or window >= n:
        return None
    i = torch.arange(n, device=device)
    return (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)


class LayerCache:
    """One layer's keys and values for generation: (B, capacity, nkv, d), each sequence's tokens from slot 0 (so
    left padding never enters it). The KVCache that owns it says where this step's tokens go."""

    def __init__(self, owner: KVCache):
        self.owner, self.k, self.v = owner, None, None

    @property
    def decoding(self) -> bool:
        return self.owner.decoding

    def write(self, k: Tensor, v: Tensor) -> None:  # (N, nkv, d) each
        o = self.owner
        if self.k is None:
            self.k = k.new_zeros(o.batch * o.capacity, *k.shape[1:])
            self.v = v.new_zeros(o.batch * o.capacity, *v.shape[1:])
        self.k[o.slots], self.v[o.slots] = k, v

    def attend(self, q: Tensor, repeat: int, window: int | None) -> Tensor:
        """One new token per sequence: q (B, nh, d) in input order over each sequence's cached keys -> (B, nh d)."""
        o = self.owner
        width = int(o.lengths.max())
        k, v = (t.view(o.batch, o.capacity, *t.shape[1:])[:, :width].transpose(1, 2) for t in (self.k, self.v))
        if repeat > 1:
            k, v = k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1)  # (B, nh, width, d)
        slots = torch.arange(width, device=q.device)
        seen = slots < o.lengths[:, None]  # (B, width)
        if window is not None:
            seen &= slots > o.lengths[:, None] - 1 - window
        out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=seen[:, None, None])  # (B, nh, 1, d)
        return out.reshape(q.shape[0], -1)


class KVCache:
    """Keys and values of every layer for batched generation. Before a forward the generator sets `slots`: where
    each packed token goes ((N,) indices into batch x capacity), `lengths`: each sequence's tokens after it, and
    `decoding`: whether this step is one new token per sequence (in input order) rather than the prompt."""

    def __init__(self, batch: int, capacity: int, layers: int):
        self.batch, self.capacity = batch, capacity
        self.layers = [LayerCache(self) for _ in range(layers)]
        self.slots: Tensor | None = None
        self.lengths: Tensor | None = None
        self.decoding = False

    def prepare(self, packing: Packing) -> Tensor:
        """Before a forward: where this step's packed tokens go; -> their positions (N,)."""
        if not self.decoding:  # the prompts: positions restart per sequence
            positions, rows = packing.positions, packing.rows
            self.lengths = torch.zeros(self.batch, dtype=torch.long, device=rows.device).index_add_(
                0, rows, torch.ones_like(rows))
        else:  # one new token per sequence, in input order
            positions, rows = self.lengths.clone(), torch.arange(self.batch, device=self.lengths.device)
            self.lengths += 1
        self.slots = rows * self.capacity + positions
        return positions


@torch.compiler.disable  # like packed_attention
def packed_attention_cpu(qkv: Tensor, packing: Packing, num_heads: int, dropout_p: float) -> Tensor:
    """packed_attention for training on CPU."""
    return _apply_outside_autocast(_PackedAttention, qkv, packing, num_heads, dropout_p)


def _apply_outside_autocast(function: type[torch.autograd.Function], *args):
    """Runs a written-out autograd Function at one precision: autocast would give its forward and backward a mix of
    bfloat16 and float32 tensors that they cannot combine. Under autocast it runs in float32 (float64 if an input is);
    its backward is decorated with backward_outside_autocast."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return function.apply(*args)
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    with torch.autocast(device, enabled=False):
        return function.apply(*(a.to(dtype) if isinstance(a, Tensor) else a for a in args))


class _PackedAttention(torch.autograd.Function):
    """Attention over packed tokens with forward and backward written out, per length group, on the head-major
    layout (HeadMajor): (N, 3H) -> (N, H). On CPU, SDPA with dropout falls back to unfused maths whose bernoulli_
    mask costs 2.5x the bit draws of `apply_dropout`, and autograd's bookkeeping for the small operations per group
    costs more than their maths."""

    @staticmethod
    def forward(ctx, qkv: Tensor, packing: Packing, num_heads: int, dropout_p: float) -> Tensor:
        tokens, hidden = qkv.shape[0], qkv.shape[1] // 3
        d = hidden // num_heads
        layout = packing.head_major(num_heads)
        qkv_h = qkv.reshape(-1, d).index_select(0, layout.gather).view(3, layout.rows, d)
        q, k, v = qkv_h  # each (rows, d)
        scores = qkv.new_empty(layout.scores)
        for row, b, n, score in layout.blocks:  # a group: b = seqs * heads matrices of n x n
            rows, block = slice(row, row + b * n), scores[score:score + b * n * n].view(b, n, n)
            torch.baddbmm(block, q[rows].view(b, n, d), k[rows].view(b, n, d).transpose(1, 2), beta=0,
                          alpha=d**-0.5, out=block)
        if layout.padded_keys is not None:
            scores.masked_fill_(layout.padded_keys, float("-inf"))
        probs = torch.empty_like(scores)
        for row, b, n, score in layout.blocks:
            span = slice(score, score + b * n * n)
            torch._softmax(scores[span].view(b, n, n), -1, False, out=probs[span].view(b, n, n))
        dropped, scale = apply_dropout(probs, dropout_p)
        out = qkv.new_empty(layout.rows, d)
        for row, b, n, score in layout.blocks:
            rows = slice(row, row + b * n)
            probs_b = dropped[score:score + b * n * n].view(b, n, n)
            torch.bmm(probs_b, v[rows].view(b, n, d), out=out[rows].view(b, n, d))
        ctx.save_for_backward(qkv_h, probs, dropped, scale)
        ctx.packing, ctx.num_heads = packing, num_heads
        return out.index_select(0, layout.outputs).view(tokens, hidden)

    @staticmethod
    @once_differentiable
    @backward_outside_autocast
    def backward(ctx, grad: Tensor):
        layout = ctx.packing.head_major(ctx.num_heads)
        qkv_h, probs, dropped, scale = ctx.saved_tensors
        tokens, hidden = grad.shape
        d = hidden // ctx.num_heads
        # Padding query rows get a zero gradient, so they pass nothing on to the keys and values they read.
        d_out = torch.cat([grad.reshape(-1, d), grad.new_zeros(1, d)]).index_select(0, layout.grad_gather)  # (rows, d)
        q, k, v = qkv_h
        d_qkv_h = torch.empty_like(qkv_h)
        dq, dk, dv = d_qkv_h
        d_probs = torch.empty_like(probs)
        for row, b, n, score in layout.blocks:
            rows, span = slice(row, row + b * n), slice(score, score + b * n * n)
            d_out_b = d_out[rows].view(b, n, d)
            torch.bmm(dropped[span].view(b, n, n).transpose(1, 2), d_out_b, out=dv[rows].view(b, n, d))
            torch.bmm(d_out_b, v[rows].view(b, n, d).transpose(1, 2), out=d_probs[span].view(b, n, n))
        d_dropped = dropout_grad(d_probs, scale)
        d_scores = torch.empty_like(probs)
        for row, b, n, score in layout.blocks:
            rows, span = slice(row, row + b * n), slice(score, score + b * n * n)
            block = torch._softmax_backward_data(d_dropped[span].view(b, n, n), probs[span].view(b, n, n), -1,
                                                 probs.dtype, grad_input=d_scores[span].view(b, n, n))
            dq_b, dk_b = dq[rows].view(b, n, d), dk[rows].view(b, n, d)
            torch.baddbmm(dq_b, block, k[rows].view(b, n, d), beta=0, alpha=d**-0.5, out=dq_b)
            torch.baddbmm(dk_b, block.transpose(1, 2), q[rows].view(b, n, d), beta=0, alpha=d**-0.5, out=dk_b)
        return d_qkv_h.view(-1, d).index_select(0, layout.scatter).view(tokens, 3 * hidden), None, None, None


@torch.compiler.disable  # like packed_attention
def first_token_attention(q: Tensor, x: Tensor, key: LinearParts, value: LinearParts, packing: Packing,
                          num_heads: int, dropout_p: float) -> Tensor:
    """Attention for each sequence's first token over all of its tokens: (B, H) queries in packing order and
    (N, H) tokens -> (B, H). The key and value projections are folded into the B queries and outputs instead of
    running on all N tokens (per head h, with attention weights p_j over tokens x_j):
        q . (Wk x_j + bk) = (Wk^T q) . x_j + q . bk
        sum_j p_j (Wv x_j + bv) = Wv (sum_j p_j x_j) + bv sum_j p_j
    A LoRA adapter adds s B A to a weight W, and is folded the same way: (s B_k A_k)^T q = s A_k^T (B_k^T q)."""
    batch, hidden = q.shape
    d = hidden // num_heads
    qh = q.view(batch, num_heads, d) * d**-0.5  # (B, nh, d), scaled as in SDPA
    u = torch.einsum("bhd,hdi->bhi", qh, key.weight.view(num_heads, d, hidden))  # (B, nh, H)
    if key.lora_a is not None:
        qb = torch.einsum("bhd,hdr->bhr", qh, key.lora_b.view(num_heads, d, -1))  # (B, nh, r)
        u = u + key.scaling * qb @ key.lora_a  # (B, nh, H)
    shift = (qh * key.bias.view(num_heads, d)).sum(-1, keepdim=True) if key.bias is not None else None  # (B, nh, 1)
    z, p_sum = _apply_outside_autocast(_FirstTokenMix, u, shift, x, packing, dropout_p)  # (B, nh, H), (B, nh, 1)
    out = torch.einsum("bhi,hdi->bhd", z, value.weight.view(num_heads, d, hidden))  # (B, nh, d)
    if value.lora_a is not None:
        za = z @ value.lora_a.t()  # (B, nh, r)
        out = out + value.scaling * torch.einsum("bhr,hdr->bhd", za, value.lora_b.view(num_heads, d, -1))
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
        grids = packing.to_grids(x)  # (R, H)
        mixed, sums, saved = [], [], []
        for g, ui, si in zip(packing.groups, u.split(seqs), shifts):
            xg = g.grid(grids, -1)  # (S, L, H)
            scores = torch.bmm(ui, xg.transpose(1, 2)) if si is None else torch.baddbmm(si, ui, xg.transpose(1, 2))
            if g.key_mask is not None:  # scores: (S, nh, L)
                scores.masked_fill_(~g.key_mask.view(g.seqs, 1, g.longest), float("-inf"))
            probs = torch.softmax(scores, -1)
            dropped, scale = apply_dropout(probs, dropout_p)
            mixed.append(torch.bmm(dropped, xg))  # (S, nh, H)
            sums.append(dropped.sum(-1, keepdim=True))  # (S, nh, 1)
            saved += [probs, dropped, scale]
        ctx.save_for_backward(u, grids, *saved)
        ctx.packing, ctx.has_shift = packing, shift is not None
        return torch.cat(mixed), torch.cat(sums)

    @staticmethod
    @once_differentiable
    @backward_outside_autocast
    def backward(ctx, grad_mixed: Tensor, grad_sums: Tensor):
        packing = ctx.packing
        seqs = [g.seqs for g in packing.groups]
        u, grids, *saved = ctx.saved_tensors
        d_grids = torch.empty_like(grids)  # (R, H)
        du, dshift = [], []
        parts = zip(packing.groups, u.split(seqs), grad_mixed.split(seqs), grad_sums.split(seqs))
        for i, (g, ui, dmi, dsi) in enumerate(parts):
            probs, dropped, scale = saved[3 * i:3 * i + 3]
            xg = g.grid(grids, -1)  # (S, L, H)
            d_dropped = torch.baddbmm(dsi, dmi, xg.transpose(1, 2))  # (S, nh, L)
            d_scores = torch._softmax_backward_data(dropout_grad(d_dropped, scale), probs, -1, probs.dtype)
            du.append(torch.bmm(d_scores, xg))  # (S, nh, H)
            dshift.append(d_scores.sum(-1, keepdim=True))
            dxg = torch.bmm(dropped.transpose(1, 2), dmi, out=g.grid(d_grids, -1))  # (S, L, H)
            dxg.baddbmm_(d_scores.transpose(1, 2), ui)
        dx = packing.from_grids(d_grids)
        return torch.cat(du), torch.cat(dshift) if ctx.has_shift else None, dx, None, None
