"""Weight generation: every generated weight of a graph written in place, one autograd node per bank group per step.

A generated layer's weight is an ``R x C`` grid of blocks (a template-mixed layer is the ``1 x 1`` case); block
``(r, c)`` is the sum of its terms ``A_b[row] @ T_b`` over banks ``b`` (usually one term). Viewed as
``[R, out, C, width]`` (``out`` the block's output channels, ``width`` the rest of the block flattened), grid row
``r`` is one contiguous slab, and a run of columns that read the same bank is

    W[r, :, c0:c1, :] = P @ T_b   batched over out:   [out, n, K] @ [out, K, width] -> [out, n, width]

with ``P = A_b[rows]`` (``n x K``) and ``T_b`` seen as ``[out, K, width]`` (a strided view of the templates, no
copy). A row read from one bank, the common case (parents' rows and their cross blocks share the row's bank), is
one ``bmm`` writing straight into the weight: no per-block work, no concatenation, no layout copy.

:class:`_Generate` does this for a whole :class:`Layout` (several layers over several banks) in one autograd
node. Its backward reads each weight gradient slab where it lies: ``dT_b`` accumulates ``Pᵀ @ dW`` per slab into
one ``[out, K, width]`` buffer per bank (handed back as a transposed view, which is the templates' own memory
format, see :func:`growc.runtime.bank.out_major`: no copy) and ``dA_b[rows]`` is ``sum_out(dW @ T_bᵀ)``. Everything is
computed in at least fp32 with autocast off; the result is returned in the templates' dtype, so an autocast region
casts the finished weight once. Double backward, forward-mode AD and ``torch.func`` transforms run the same ``bmm``
as ordinary differentiable ops (:func:`_plain`).

A :class:`Group` is a connected set of banks and the layers of one graph that read them (see
:func:`register`). In a training step (between the graph's ``begin_step``/``end_step`` markers) the first layer
that needs its weight generates the whole group's weights in one node and the others take theirs from it; in eval
with gradients off the group caches its weights until a template or coefficient changes; elsewhere (and under
``torch.compile``, which traces the same function) a layer generates just its own weight with the same kernels, so
every path computes bit for bit the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from einops import rearrange
from networkx.utils import UnionFind
from torch import Tensor
from torch.autograd import forward_ad

from growc.runtime.bank import TemplateBank, Term
from growc.runtime.precision import compute_dtype, full_precision

__all__ = ["Binding", "Blocks", "Generated", "Group", "Layout", "assemble", "register"]

#: a layer's blocks: ``blocks[r][c]`` lists the block's terms as ``(bank, coefficient row)``
Blocks = Sequence[Sequence[Sequence[Term]]]


class Generated(Protocol):
    """What :func:`register` needs of a generated layer (see :class:`growc.runtime.layers.GeneratedLayer`)."""

    @property
    def blocks(self) -> Blocks: ...

    @property
    def banks(self) -> list[TemplateBank]: ...

    @property
    def scale(self) -> float: ...

    def bind(self, group: Group | None, slot: int = 0) -> None: ...


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


@dataclass(frozen=True)
class _Segment:
    """Columns ``[c0, c1)`` of grid row ``r`` from one bank: rows ``first .. first + c1 - c0`` of its gather."""

    bank: int
    r: int
    c0: int
    c1: int
    first: int
    add: bool  # a second (third...) term of its blocks: added to what earlier segments wrote


@dataclass(frozen=True)
class _Geometry:
    """One generated weight: ``shape``, seen as ``[rows, out, cols, width]``, and the segments that write it (its
    scale is applied to its gathered coefficient rows)."""

    shape: tuple[int, ...]
    rows: int
    out: int
    cols: int
    width: int
    zero: bool  # some block has no term: start from zeros
    segments: tuple[_Segment, ...]


def _layer_key(blocks: Blocks, scale: float, position: dict[int, int]) -> tuple[Any, ...]:
    """A hashable description of a layer in terms of bank positions (layers with equal keys share a weight)."""
    rows = tuple(tuple(tuple((position[id(b)], int(i)) for b, i in terms) for terms in row) for row in blocks)
    return (rows, float(scale))


class Layout:
    """What one generation computes: the rows it gathers from each bank and the weights it writes.

    ``banks`` are positions in the owner's bank list, ``shapes`` the weight shapes of the owner's banks, ``keys``
    the layers' keys (see :func:`_layer_key`); ``layers`` holds their geometries.
    """

    def __init__(self, banks: Sequence[int], shapes: Sequence[tuple[int, ...]], keys: Sequence[tuple[Any, ...]]):
        local = {b: j for j, b in enumerate(banks)}
        self.banks = tuple(banks)
        rows: list[list[int]] = [[] for _ in banks]
        scales: list[list[float]] = [[] for _ in banks]
        geometries = []
        for blocks, scale in keys:
            geometries.append(self._geometry(blocks, local, shapes, rows))
            for j, r in enumerate(rows):
                scales[j] += [scale] * (len(r) - len(scales[j]))
        self.rows = tuple(tuple(r) for r in rows)
        self.scales = tuple(tuple(s) for s in scales) if any(x != 1.0 for s in scales for x in s) else None
        self.layers = tuple(geometries)
        self._gather: dict[torch.device, _Gather] = {}

    @staticmethod
    def _geometry(
        blocks: tuple[Any, ...],
        local: dict[int, int],
        shapes: Sequence[tuple[int, ...]],
        rows: list[list[int]],
    ) -> _Geometry:
        r_count, c_count = len(blocks), len(blocks[0])
        block = next(shapes[b] for row in blocks for terms in row for b, _ in terms)  # one shape: see _Grid
        if len(block) == 1 and c_count != 1:
            raise ValueError(f"a grid of 1-D blocks cannot have {c_count} columns")
        out, width = block[0], 1
        for size in block[1:]:
            width *= size
        segments = []
        depth = max(len(terms) for row in blocks for terms in row)
        for t in range(depth):
            for r, row in enumerate(blocks):
                c = 0
                while c < c_count:
                    if len(row[c]) <= t:
                        c += 1
                        continue
                    bank = local[row[c][t][0]]
                    end = c + 1
                    while end < c_count and len(row[end]) > t and local[row[end][t][0]] == bank:
                        end += 1
                    first = len(rows[bank])
                    rows[bank].extend(row[k][t][1] for k in range(c, end))
                    segments.append(_Segment(bank, r, c, end, first, add=t > 0))
                    c = end
        shape = (r_count * out, *((c_count * block[1], *block[2:]) if len(block) > 1 else ()))
        zero = any(len(terms) == 0 for row in blocks for terms in row)
        return _Geometry(shape, r_count, out, c_count, width, zero, tuple(segments))

    def gather(self, device: torch.device) -> _Gather:
        """The rows to gather from each bank (and their layers' scales) as tensors on ``device``: made once per
        device, or afresh (constants of the traced graph) under ``torch.compile``, which must not see them cached."""
        if torch.compiler.is_compiling():
            return self._make_gather(device)
        found = self._gather.get(device)
        if found is None:
            found = self._gather[device] = self._make_gather(device)
        return found

    def _make_gather(self, device: torch.device) -> _Gather:
        index = tuple(torch.tensor(r, dtype=torch.long, device=device) for r in self.rows)
        scale = None
        if self.scales is not None:
            scale = tuple(torch.tensor(s, dtype=torch.float64, device=device) for s in self.scales)
        return _Gather(index, scale)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_gather": {}}


@dataclass(frozen=True)
class _Gather:
    index: tuple[Tensor, ...]  # per bank: the coefficient rows its layers read, back to back
    scale: tuple[Tensor, ...] | None  # per bank: each row's layer scale, float64 (None when all are 1)


def _operands(gather: _Gather, params: Sequence[Tensor], dtype: torch.dtype) -> tuple[list[Tensor], list[Tensor]]:
    """Per bank: the gathered (and scaled) coefficient rows ``[rows, K]`` and the templates as ``[out, K, width]``."""
    picked = [_as(a.index_select(0, i), dtype) for a, i in zip(params[0::2], gather.index, strict=True)]
    if gather.scale is not None:  # layers with a scale: their rows are scaled once, here
        picked = [p * s.to(dtype)[:, None] for p, s in zip(picked, gather.scale, strict=True)]
    mats = [_as(t, dtype).reshape(t.shape[0], t.shape[1], -1).transpose(0, 1) for t in params[1::2]]
    return picked, mats


class _Generate(torch.autograd.Function):
    """All weights of a :class:`Layout` from ``(coefficients, templates)`` of each of its banks, in one node."""

    @staticmethod
    def forward(ctx: Any, layout: Layout, gather: _Gather, *params: Tensor) -> tuple[Tensor, ...]:
        device, result_dtype = params[1].device, params[1].dtype
        dtype = compute_dtype(result_dtype)
        with full_precision(device):
            picked, mats = _operands(gather, params, dtype)
            lefts = [p.expand(m.shape[0], *p.shape) for p, m in zip(picked, mats, strict=True)]  # [out, rows, K]
            outputs = []
            for g in layout.layers:
                weight = (torch.zeros if g.zero else torch.empty)(
                    (g.rows, g.out, g.cols, g.width), dtype=dtype, device=device
                )
                slabs = weight.unbind(0)
                for s in g.segments:
                    lhs = lefts[s.bank][:, s.first : s.first + s.c1 - s.c0]
                    if s.c1 - s.c0 == g.cols:  # the whole grid row: written in place
                        if s.add:
                            slabs[s.r].baddbmm_(lhs, mats[s.bank])
                        else:
                            torch.bmm(lhs, mats[s.bank], out=slabs[s.r])
                    else:  # a grid row shared by several banks (a head): a strided write
                        target = slabs[s.r][:, s.c0 : s.c1]
                        piece = torch.bmm(lhs, mats[s.bank])
                        target.add_(piece) if s.add else target.copy_(piece)
                outputs.append(_as(weight.view(g.shape), result_dtype))
        ctx.layout, ctx.gather = layout, gather
        ctx.save_for_backward(*params)
        ctx.set_materialize_grads(False)  # an unused layer's gradient stays None: its banks get none from it
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        layout, gather = ctx.layout, ctx.gather
        params = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain definition instead
            return (None, None, *_plain_backward(layout, gather, params, grads, ctx.needs_input_grad[2:]))
        need_a, need_t = ctx.needs_input_grad[2::2], ctx.needs_input_grad[3::2]
        dtype = compute_dtype(params[1].dtype)
        sums: list[Tensor | None] = [None] * len(gather.index)  # per bank: dT as [out, K, width]
        partials: list[dict[int, Tensor]] = [{} for _ in gather.index]  # per bank: first row -> dP of a segment
        with full_precision(params[1].device):
            picked, mats = _operands(gather, params, dtype)
            lefts = [p.T.expand(m.shape[0], *p.T.shape) for p, m in zip(picked, mats, strict=True)]  # [out, K, rows]
            rights = [m.transpose(1, 2) for m in mats]  # [out, width, K]
            for g, grad in zip(layout.layers, grads, strict=True):
                if grad is None:
                    continue
                slabs = _as(grad, dtype).reshape(g.rows, g.out, g.cols, g.width).unbind(0)
                for s in g.segments:
                    n = s.c1 - s.c0
                    part = slabs[s.r] if n == g.cols else slabs[s.r][:, s.c0 : s.c1]
                    if need_t[s.bank]:
                        lhs = lefts[s.bank][:, :, s.first : s.first + n]
                        acc = sums[s.bank]
                        sums[s.bank] = torch.bmm(lhs, part) if acc is None else acc.baddbmm_(lhs, part)
                    if need_a[s.bank]:
                        partials[s.bank][s.first] = torch.bmm(part, rights[s.bank]).sum(0)
            result: list[Tensor | None] = [None, None]
            for j, index in enumerate(gather.index):
                a, t = params[2 * j], params[2 * j + 1]
                d_a = None
                if partials[j]:
                    d_picked = _rows_in_order(partials[j], len(index), a.shape[1], dtype, a.device)
                    if gather.scale is not None:
                        d_picked = d_picked * gather.scale[j].to(dtype)[:, None]
                    d_a = _as(
                        torch.zeros(a.shape, dtype=dtype, device=a.device).index_add_(0, index, d_picked), a.dtype
                    )
                acc = sums[j]
                result += [d_a, None if acc is None else _as(acc.transpose(0, 1).reshape(t.shape), t.dtype)]
        return tuple(result)


def _rows_in_order(parts: dict[int, Tensor], total: int, k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The segments' row gradients back to back (zeros for rows of layers that got no gradient)."""
    pieces, row = [], 0
    for first in sorted(parts):
        if first > row:
            pieces.append(torch.zeros(first - row, k, dtype=dtype, device=device))
        pieces.append(parts[first])
        row = first + len(parts[first])
    if row < total:
        pieces.append(torch.zeros(total - row, k, dtype=dtype, device=device))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def assemble(grid: Tensor, shape: Sequence[int]) -> Tensor:
    """A weight of ``shape`` from its block grid ``[R, out, C, width]`` (grid rows, a block's output channels, grid
    columns, the rest of a block flattened): block ``(r, c)`` lands at rows ``r * out ...`` and input channels
    ``c * in ...``. A view of a contiguous grid. (The hot path, :class:`_Generate`, writes the grid in this order and
    takes the same view with ``Tensor.view``, which costs less per call.)"""
    return rearrange(grid, "r o c w -> (r o) (c w)").view(shape)


def _plain(layout: Layout, gather: _Gather, *params: Tensor) -> tuple[Tensor, ...]:
    """The same weights with ordinary differentiable ops (the same ``bmm`` per segment, so the same values): the
    path for forward-mode AD, ``torch.func`` transforms and double backward, which :class:`_Generate` lacks."""
    device, result_dtype = params[1].device, params[1].dtype
    dtype = compute_dtype(result_dtype)
    outputs = []
    with full_precision(device):
        picked, mats = _operands(gather, params, dtype)
        for g in layout.layers:
            rows = [torch.zeros((g.out, g.cols, g.width), dtype=dtype, device=device) for _ in range(g.rows)]
            for s in g.segments:
                n = s.c1 - s.c0
                p = picked[s.bank][s.first : s.first + n]
                piece = torch.bmm(p.expand(g.out, n, p.shape[1]), mats[s.bank])
                columns = torch.arange(s.c0, s.c1, device=device)
                rows[s.r] = rows[s.r].index_add(1, columns, piece)
            outputs.append(_as(assemble(torch.stack(rows), g.shape), result_dtype))
    return tuple(outputs)


def _plain_backward(
    layout: Layout, gather: _Gather, params: Sequence[Tensor], grads: Sequence[Tensor | None], needs: Sequence[bool]
) -> list[Tensor | None]:
    with torch.enable_grad():
        outputs = _plain(layout, gather, *params)
    pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None]
    wanted = [p for p, need in zip(params, needs, strict=True) if need]
    if not pairs or not wanted:
        return [None] * len(params)
    found = iter(
        torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True, allow_unused=True)
    )
    return [next(found) if need else None for need in needs]


def _plain_needed(params: Sequence[Tensor]) -> bool:
    """Forward-mode AD or a ``torch.func`` transform is active: :class:`_Generate` supports neither."""
    if torch._C._are_functorch_transforms_active():
        return True
    return any(forward_ad.unpack_dual(p).tangent is not None for p in params)


#: generated weights and what they were generated from: (parameters, versions and epochs, mode, weights)
_Saved = tuple[tuple[Tensor, ...], tuple[int, ...], Any, tuple[Tensor, ...]]


def _cacheable(banks: Sequence[TemplateBank]) -> bool:
    if any(b.training for b in banks):
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(b.templates.requires_grad or b.coefficients.requires_grad for b in banks)


class Group:
    """Banks and the layers that read them, generated together (see the module docstring)."""

    def __init__(self, banks: Sequence[TemplateBank], layers: Sequence[tuple[Blocks, float]]) -> None:
        self.banks = list(banks)
        position = {id(b): j for j, b in enumerate(self.banks)}
        self.shapes = [b.weight_shape for b in self.banks]
        self.keys: list[tuple[Any, ...]] = []
        for blocks, scale in layers:
            key = _layer_key(blocks, scale, position)
            if key not in self.keys:
                self.keys.append(key)
        self.layout = Layout(range(len(self.banks)), self.shapes, self.keys)
        self.solo = [self._solo(key) for key in self.keys]  # each layer alone: only the banks it reads
        self._in_step = False
        self._step: _Saved | None = None  # this step's weights (between the graph's step markers)
        self._cache: _Saved | None = None  # the eval cache

    def _solo(self, key: tuple[Any, ...]) -> Layout:
        if len(self.keys) == 1:
            return self.layout
        used = sorted({b for row in key[0] for terms in row for b, _ in terms})
        return Layout(used, self.shapes, [key])

    def slot(self, blocks: Blocks, scale: float) -> int:
        position = {id(b): j for j, b in enumerate(self.banks)}
        return self.keys.index(_layer_key(blocks, scale, position))

    def _state(self) -> tuple[tuple[Tensor, ...], tuple[int, ...]]:
        """What the weights depend on: the parameters (by identity), their versions and the banks' cache epochs."""
        tensors = tuple(p for b in self.banks for p in (b.templates, b.coefficients))
        return tensors, (*(p._version for p in tensors), *(b.epoch for b in self.banks))

    @staticmethod
    def _fresh(saved: _Saved | None, state: tuple[tuple[Tensor, ...], tuple[int, ...]], mode: Any) -> bool:
        return (
            saved is not None
            and saved[2] == mode
            and saved[1] == state[1]
            and all(a is b for a, b in zip(saved[0], state[0], strict=True))
        )

    def generate(self, layout: Layout) -> tuple[Tensor, ...]:
        params = [p for j in layout.banks for p in (self.banks[j].coefficients, self.banks[j].templates)]
        gather = layout.gather(params[1].device)
        if _plain_needed(params):
            return _plain(layout, gather, *params)
        return _Generate.apply(layout, gather, *params)

    def weight(self, slot: int) -> Tensor:
        """Layer ``slot``'s weight: from the eval cache, this step's shared generation, or generated alone."""
        if torch.compiler.is_compiling():
            return self.generate(self.solo[slot])[0]
        if _cacheable(self.banks):
            state, mode = self._state(), ("eval", torch.is_inference_mode_enabled())
            if not self._fresh(self._cache, state, mode):
                with torch.no_grad():
                    self._cache = (*state, mode, self.generate(self.layout))
            return self._cache[3][slot]
        if self._in_step:
            state = self._state()
            if not self._fresh(self._step, state, torch.is_grad_enabled()):
                self._step = (*state, torch.is_grad_enabled(), self.generate(self.layout))
            return self._step[3][slot]
        return self.generate(self.solo[slot])[0]

    @property
    def in_step(self) -> bool:
        """Between the graph's ``begin_step`` and ``end_step`` markers."""
        return self._in_step

    @property
    def step_weights(self) -> tuple[Tensor, ...] | None:
        """This step's shared weights, one per slot (None until a layer of the group needs its weight)."""
        return None if self._step is None else self._step[3]

    @property
    def cached_weights(self) -> tuple[Tensor, ...] | None:
        """The eval cache, one weight per slot (None when empty)."""
        return None if self._cache is None else self._cache[3]

    def clear(self) -> None:
        """Drop this step's weights and the eval cache (they are regenerated on next use)."""
        self._step, self._cache = None, None

    def begin_step(self) -> None:
        self._in_step, self._step = True, None

    def end_step(self) -> None:
        self._in_step, self._step = False, None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_in_step": False, "_step": None, "_cache": None}


class Binding(NamedTuple):
    """Where a layer's weight comes from: slot ``slot`` of ``group``'s generation."""

    group: Group
    slot: int


def register(layers: Sequence[Generated]) -> list[Group]:
    """Group ``layers`` (generated layers of one graph) by the banks they read: connected banks form one group.

    Each layer is bound to its group and slot (:meth:`~growc.runtime.layers.GeneratedLayer.bind`); the groups are
    returned (for the graph's step markers).
    """
    sets = UnionFind()
    banks: dict[int, TemplateBank] = {}
    for layer in layers:
        ids = [id(bank) for bank in layer.banks]
        banks.update(zip(ids, layer.banks, strict=True))
        sets.union(*ids)
    members: dict[int, list[Generated]] = {}
    for layer in layers:
        members.setdefault(sets[id(layer.banks[0])], []).append(layer)
    groups = []
    for root, group_layers in members.items():
        group_banks = [b for key, b in banks.items() if sets[key] == root]
        group = Group(group_banks, [(layer.blocks, layer.scale) for layer in group_layers])
        for layer in group_layers:
            layer.bind(group, group.slot(layer.blocks, layer.scale))
        groups.append(group)
    return groups
