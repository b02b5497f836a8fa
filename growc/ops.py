"""Template-mixed ops: weights generated as ``W_l = sum_k A[l, k] * T_k`` from a shared bank of templates.

A :class:`TemplateBank` holds the templates ``T`` (shape ``[K, *weight_shape]``) and the coefficients ``A``
(shape ``[L, K]``: one row per layer of the bank). It is registered once on the root module, so the state dict
holds every template exactly once. A mixed layer (:class:`MixedConv1d`, :class:`MixedConv2d`,
:class:`MixedConv3d`, :class:`MixedLinear`, :class:`MixedWeight`) *references* its bank and row without owning
them: the reference is a plain attribute, not a submodule, and survives ``deepcopy``, ``.to()`` and pickling of
the root module because those act on the root's registered bank.

Weight generation is one contraction (``A[l] @ T.flatten(1)``) computed in fp32 (or the parameters' dtype when
wider) with autocast disabled, so an autocast region casts the finished weight, not the templates. In eval mode
with gradients off, a bank generates all its layers' weights in one matmul and caches them until a parameter
changes (tracked by the tensors' version counters and storage).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "GENERATED_TYPES",
    "GRID_TYPES",
    "MIXED_TYPES",
    "GridConv1d",
    "GridConv2d",
    "GridConv3d",
    "GridLinear",
    "MixedConv1d",
    "MixedConv2d",
    "MixedConv3d",
    "MixedLinear",
    "MixedWeight",
    "TemplateBank",
    "add_step_markers",
    "begin_step",
    "end_step",
    "param_groups",
    "param_roles",
]


def _contract(coefficients: Tensor, templates: Tensor) -> Tensor:
    """``coefficients @ templates`` flattened, in at least fp32 and outside autocast, returned in the templates'
    dtype: the weights keep full precision and the op that uses them casts them once."""
    dtype = torch.promote_types(templates.dtype, torch.float32)
    device = templates.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            flat = coefficients.to(dtype) @ templates.flatten(1).to(dtype)
    else:  # no autocast region to leave (and none exists for meta tensors during shape analysis)
        flat = coefficients.to(dtype) @ templates.flatten(1).to(dtype)
    return flat.to(templates.dtype)


class _BankMix(torch.autograd.Function):
    """All of a bank's weights for one step in one contraction, handed out as one output per consumer.

    ``rows`` lists every consumer's rows back to back (``sizes`` long each): forward is ``A[rows] @ T`` once (fp32,
    outside autocast) and each consumer's output is a slice of it, no copy. Backward concatenates the consumers'
    gradients and does ``dT = A[rows]ᵀ @ dW`` and ``dA[rows] += dW @ Tᵀ``: one contraction each, with no per-consumer
    full-size gradient and no scatter over the weights.
    """

    @staticmethod
    def forward(
        ctx: Any, coefficients: Tensor, templates: Tensor, rows: Tensor, sizes: tuple[int, ...]
    ) -> tuple[Tensor, ...]:
        flat = _contract(coefficients.index_select(0, rows), templates)
        ctx.save_for_backward(coefficients, templates, rows)
        ctx.sizes = sizes
        shape = templates.shape[1:]
        return tuple(part.view(n, *shape) for part, n in zip(flat.split(sizes), sizes, strict=True))

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        coefficients, templates, rows = ctx.saved_tensors
        dtype = torch.promote_types(templates.dtype, torch.float32)
        width = templates[0].numel()
        parts = [
            g.reshape(n, width) if g is not None else templates.new_zeros(n, width)
            for g, n in zip(grads, ctx.sizes, strict=True)
        ]
        d_flat = (parts[0] if len(parts) == 1 else torch.cat(parts)).to(dtype)
        d_coefficients = d_templates = None
        if ctx.needs_input_grad[0]:
            d_picked = d_flat @ templates.flatten(1).to(dtype).T
            d_coefficients = torch.zeros_like(coefficients, dtype=dtype).index_add_(0, rows, d_picked)
            d_coefficients = d_coefficients.to(coefficients.dtype)
        if ctx.needs_input_grad[1]:
            picked = coefficients.index_select(0, rows).to(dtype)
            d_templates = (picked.T @ d_flat).view(templates.shape).to(templates.dtype)
        return d_coefficients, d_templates, None, None


class TemplateBank(nn.Module):
    """K templates shared by L layers of one kind, weight shape and ``groups``; one coefficient row per layer."""

    def __init__(self, templates: Tensor, coefficients: Tensor, *, kind: str, groups: int = 1) -> None:
        super().__init__()
        if coefficients.dim() != 2 or coefficients.shape[1] != templates.shape[0]:
            raise ValueError(f"coefficients must be [layers, K={templates.shape[0]}], got {tuple(coefficients.shape)}")
        self.templates = nn.Parameter(templates)
        self.coefficients = nn.Parameter(coefficients)
        self.kind = kind
        self.groups = groups
        self._cache: tuple[Tensor, Tensor, tuple[int, int], Tensor] | None = None
        self._in_step = False  # inside a forward of the model that owns the bank (see begin_step)
        self._step: tuple[Tensor, Tensor, tuple[int, int, bool], tuple[Tensor, ...]] | None = None
        self._consumers: dict[tuple[int, ...], int] = {}  # rows a layer asks for -> its output slot
        self._layout: tuple[Tensor, tuple[int, ...]] | None = None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(self.templates.shape[1:])

    @property
    def num_templates(self) -> int:
        return int(self.templates.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.coefficients.shape[0])

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, weight_shape={self.weight_shape}, groups={self.groups}, "
            f"templates={self.num_templates}, layers={self.num_layers}"
        )

    def _mix(self, coefficients: Tensor) -> Tensor:
        """``coefficients @ templates`` (see :func:`_contract`); one matmul whatever the row count."""
        return _contract(coefficients, self.templates)

    def weights(self) -> Tensor:
        """All L generated weights, ``[L, *weight_shape]``, in one contraction."""
        return self._mix(self.coefficients).view(self.num_layers, *self.weight_shape)

    def _cacheable(self) -> bool:
        if self.training or torch.compiler.is_compiling():
            return False
        return not (torch.is_grad_enabled() and (self.templates.requires_grad or self.coefficients.requires_grad))

    def cached_weights(self) -> Tensor:
        """The eval-mode weight cache: regenerated when a template or coefficient changed since the last call.

        A change is a different tensor object (``load_state_dict`` with ``assign``, ``.to()``) or a bumped
        version counter (any in-place update: optimizer steps, ``copy_``). Writes through ``.data`` bypass
        version counters: call :meth:`clear_cache` after one.
        """
        t, a = self.templates, self.coefficients
        cache = self._cache
        if cache is None or cache[0] is not t or cache[1] is not a or cache[2] != (t._version, a._version):
            with torch.no_grad():
                self._cache = cache = (t, a, (t._version, a._version), self.weights())
        return cache[3]

    def clear_cache(self) -> None:
        self._cache = None
        self._step = None

    def begin_step(self) -> None:
        """Start one forward of the owning model (see :func:`begin_step`, the graph op that calls this)."""
        self._in_step = True
        self._step = None

    def end_step(self) -> None:
        """End the forward: drop this step's generated weights (the next forward builds a new graph)."""
        self._in_step = False
        self._step = None

    def set_consumers(self, keys: list[tuple[int, ...]]) -> None:
        """The rows each layer of the owning model reads (set by :func:`add_step_markers`): every step generates
        exactly these, in this order, so the numbers do not depend on which forward came first (a resumed run
        computes what an uninterrupted one does)."""
        self._consumers = {key: i for i, key in enumerate(dict.fromkeys(keys))}
        self._layout = None
        self._step = None

    def _shared_outputs(self) -> tuple[Tensor, ...]:
        """This step's weights for every known consumer, from one contraction (see :class:`_BankMix`)."""
        t, a = self.templates, self.coefficients
        key = (t._version, a._version, torch.is_grad_enabled())
        step = self._step
        if step is None or step[0] is not t or step[1] is not a or step[2] != key:
            layout = self._consumer_layout(t.device)
            outputs = _BankMix.apply(a, t, *layout) if layout is not None else ()
            self._step = step = (t, a, key, outputs)
        return step[3]

    def _consumer_layout(self, device: torch.device) -> tuple[Tensor, tuple[int, ...]] | None:
        """Every consumer's rows back to back, and how many each has (rebuilt when a consumer joins)."""
        if not self._consumers:
            return None
        cached = self._layout
        if cached is None or len(cached[1]) != len(self._consumers) or cached[0].device != device:
            rows = [row for key in self._consumers for row in key]
            cached = (torch.tensor(rows, dtype=torch.long, device=device), tuple(len(k) for k in self._consumers))
            self._layout = cached
        return cached

    def _shared(self, key: tuple[int, ...]) -> Tensor | None:
        """This step's output for the consumer reading rows ``key``; None (and registered for the next steps) when
        it is new."""
        slot = self._consumers.get(key)
        if slot is None:
            self._consumers[key] = len(self._consumers)
            return None
        outputs = self._shared_outputs()
        if slot >= len(outputs):
            return None
        return outputs[slot]

    def rows(self, indices: Tensor, key: tuple[int, ...] | None = None) -> Tensor:
        """The generated weights of rows ``indices`` ``[n, *weight_shape]`` (``key``: the same rows as a tuple).

        In eval without gradients they come from the eval cache. Inside a forward of the owning model every
        consumer's rows come out of one contraction per bank (a consumer asking for the first time is served
        directly and joins from the next step on). Elsewhere: one contraction of just these rows.
        """
        if self._cacheable():
            cache = self.cached_weights()
            return cache.index_select(0, indices.to(cache.device))
        if self._in_step and not torch.compiler.is_compiling():
            shared = self._shared(tuple(int(i) for i in indices.tolist()) if key is None else key)
            if shared is not None:
                return shared
        rows = self.coefficients.index_select(0, indices.to(self.coefficients.device))
        return self._mix(rows).view(len(indices), *self.weight_shape)

    def add_rows(self, rows: Tensor) -> list[int]:
        """Append coefficient rows ``[r, K]`` (new layers or blocks over the same templates); returns their indices.

        The coefficients Parameter is replaced by a longer one: build optimizers after adding rows.
        """
        rows = rows.to(self.coefficients.device, self.coefficients.dtype).reshape(-1, self.num_templates)
        start = self.num_layers
        grown = torch.cat([self.coefficients.detach(), rows])
        self.coefficients = nn.Parameter(grown, requires_grad=self.coefficients.requires_grad)
        self._cache = None
        return list(range(start, start + rows.shape[0]))

    def weight(self, index: int) -> Tensor:
        """The generated weight of layer ``index``."""
        if self._cacheable():
            return self.cached_weights()[index]
        if self._in_step and not torch.compiler.is_compiling():
            shared = self._shared((int(index),))
            if shared is not None:
                return shared[0]
        return self._mix(self.coefficients[index]).view(self.weight_shape)

    def _apply(self, fn: Any, recurse: bool = True) -> TemplateBank:  # .to(), .cuda(), .half() ...
        self.clear_cache()

        def convert(t: Tensor) -> Tensor:
            try:
                return fn(t)
            except RuntimeError as error:
                # model.to(memory_format=torch.channels_last) reaches the 5-D templates of a conv2d bank; their
                # layout does not matter (the mix flattens them), so convert dtype/device through a 4-D view
                if "channels_last" not in str(error) or t.dim() != 5:
                    raise
                return fn(t.flatten(0, 1)).reshape(t.shape)

        return super()._apply(convert, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_step"] = None
        state["_in_step"] = False
        state["_layout"] = None
        return state


class _Mixed(nn.Module):
    """A layer whose weight is row ``index`` of a :class:`TemplateBank` it references but does not own."""

    _bank: TemplateBank

    def __init__(self, bank: TemplateBank, index: int, bias: nn.Parameter | None) -> None:
        super().__init__()
        object.__setattr__(self, "_bank", bank)  # a reference, not a submodule: no second copy in state_dict
        self.index = int(index)
        self.bias = bias  # the source layer's own Parameter: tied biases stay tied

    @property
    def bank(self) -> TemplateBank:
        return self._bank

    @property
    def weight(self) -> Tensor:
        return self._bank.weight(self.index)

    @property
    def trainable(self) -> bool:
        return self._bank.templates.requires_grad


class _ConvLayer(nn.Module):
    """What a generated-weight conv shares with ``nn.ConvNd``: attributes, ``forward`` and folding to a plain conv.

    Subclasses provide ``weight`` (generated), ``bias`` and ``trainable``.
    """

    _dim = 0
    weight: Tensor
    bias: nn.Parameter | None
    trainable: bool

    def _copy_conv_attrs(self, source: Any, **override: Any) -> None:
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, name, override.get(name, getattr(source, name)))
        self.padding_mode = source.padding_mode
        self._reversed_padding_repeated_twice = list(source._reversed_padding_repeated_twice)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )

    def forward(self, input: Tensor) -> Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[self._dim - 1]
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv(padded, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return conv(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def to_plain(self) -> nn.Module:
        """A plain ``nn.ConvNd`` with the generated weight (a detached copy) and this layer's bias Parameter."""
        cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self._dim - 1]
        plain = cls(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device="meta",
        )
        plain.weight = nn.Parameter(self.weight.detach().clone(), requires_grad=self.trainable)
        plain.bias = self.bias
        plain.train(self.training)
        return plain


class _LinearLayer(nn.Module):
    """What a generated-weight linear layer shares with ``nn.Linear``: ``forward`` and folding."""

    weight: Tensor
    bias: nn.Parameter | None
    trainable: bool
    in_features: int
    out_features: int

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias)

    def to_plain(self) -> nn.Module:
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight = nn.Parameter(self.weight.detach().clone(), requires_grad=self.trainable)
        plain.bias = self.bias
        plain.train(self.training)
        return plain


class _MixedConvNd(_Mixed, _ConvLayer):
    def __init__(self, bank: TemplateBank, index: int, source: nn.modules.conv._ConvNd) -> None:
        _Mixed.__init__(self, bank, index, source.bias)
        self._copy_conv_attrs(source)

    def extra_repr(self) -> str:
        return f"{_ConvLayer.extra_repr(self)}, row={self.index}"


class MixedConv1d(_MixedConvNd):
    """``nn.Conv1d`` whose weight is generated from a template bank."""

    _dim = 1


class MixedConv2d(_MixedConvNd):
    """``nn.Conv2d`` whose weight is generated from a template bank."""

    _dim = 2


class MixedConv3d(_MixedConvNd):
    """``nn.Conv3d`` whose weight is generated from a template bank."""

    _dim = 3


class MixedLinear(_Mixed, _LinearLayer):
    """``nn.Linear`` whose weight is generated from a template bank."""

    def __init__(self, bank: TemplateBank, index: int, source: nn.Linear) -> None:
        _Mixed.__init__(self, bank, index, source.bias)
        self.in_features = source.in_features
        self.out_features = source.out_features

    def extra_repr(self) -> str:
        return f"{_LinearLayer.extra_repr(self)}, row={self.index}"


class MixedWeight(_Mixed):
    """A generated weight tensor on its own: stands in for a ``get_attr`` of a raw weight ``nn.Parameter``.

    Used where a parameter reaches a functional op (``F.conv2d(x, self.weight)``), a leaf module's input or an
    opaque wrapped function (as a ``call_module`` node), and as the parametrization of a raw weight parameter
    inside a leaf module. ``source`` is the dotted path the parameter had, which :func:`growc.materialize`
    restores.
    """

    def __init__(self, bank: TemplateBank, index: int, source: str) -> None:
        super().__init__(bank, index, None)
        self.source = source

    def extra_repr(self) -> str:
        return f"source={self.source!r}, shape={self._bank.weight_shape}, row={self.index}"

    def forward(self, original: Tensor | None = None) -> Tensor:
        # ``original`` is ignored: it is what torch.nn.utils.parametrize passes when this module parametrizes a
        # raw parameter inside a leaf module; as a graph node it is called with no argument.
        return self.weight


MIXED_TYPES: tuple[type[nn.Module], ...] = (MixedConv1d, MixedConv2d, MixedConv3d, MixedLinear, MixedWeight)

Term = tuple[TemplateBank, int]


class _Grid(nn.Module):
    """A grown layer whose weight is an R x C grid of blocks; each block is the sum of one or more bank rows.

    Rows of the grid run along output channels, columns along input channels: ``weight = cat_i(cat_j(B_ij, 1),
    0) * scale``. A stem has one column (parents stacked along outputs), a head one row (side by side along
    inputs), an interior layer n x n (diagonal = the parents' rows, off-diagonal = new rows over existing
    templates). Like the mixed layers it references its banks without owning them.
    """

    def __init__(self, blocks: list[list[list[Term]]], bias: nn.Parameter | None, scale: float = 1.0) -> None:
        super().__init__()
        object.__setattr__(self, "_blocks", [[list(terms) for terms in row] for row in blocks])
        object.__setattr__(self, "_plan", None)
        self.scale = float(scale)
        self.bias = bias

    @property
    def blocks(self) -> list[list[list[Term]]]:
        """The block layout (read it; change it with :meth:`set_blocks`, which rebuilds the assembly plan)."""
        return self._blocks

    def set_blocks(self, blocks: list[list[list[Term]]]) -> None:
        object.__setattr__(self, "_blocks", [[list(terms) for terms in row] for row in blocks])
        object.__setattr__(self, "_plan", None)

    @property
    def banks(self) -> list[TemplateBank]:
        seen: dict[int, TemplateBank] = {}
        for row in self._blocks:
            for terms in row:
                for bank, _ in terms:
                    seen.setdefault(id(bank), bank)
        return list(seen.values())

    @property
    def trainable(self) -> bool:
        return any(bank.templates.requires_grad for bank in self.banks)

    def _assembly(self) -> tuple[list[tuple[TemplateBank, Tensor, tuple[int, ...]]], Tensor | None, Tensor | None]:
        """How to build the weight without per-block Python work: per bank the rows to gather, then either a
        permutation of the gathered terms into block order (one term per block) or the block each term adds to."""
        plan = self.__dict__.get("_plan")
        if plan is not None:
            return plan
        by_bank: dict[int, tuple[TemplateBank, list[int], list[int]]] = {}
        blocks = [terms for row in self._blocks for terms in row]
        for b, terms in enumerate(blocks):
            for bank, row in terms:
                entry = by_bank.setdefault(id(bank), (bank, [], []))
                entry[1].append(row)
                entry[2].append(b)
        gathers = [(bank, torch.tensor(rows, dtype=torch.long), tuple(rows)) for bank, rows, _ in by_bank.values()]
        owner = torch.tensor([b for _, _, owners in by_bank.values() for b in owners], dtype=torch.long)
        if len(owner) == len(blocks):  # one term per block: a permutation
            perm = torch.argsort(owner)
            identity = bool(torch.equal(perm, torch.arange(len(blocks))))
            plan = (gathers, None if identity else perm, None)
        else:
            plan = (gathers, None, owner)
        object.__setattr__(self, "_plan", plan)
        return plan

    @property
    def weight(self) -> Tensor:
        gathers, perm, owner = self._assembly()
        pieces = [bank.rows(rows, key) for bank, rows, key in gathers]
        terms = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        r, c = len(self._blocks), len(self._blocks[0])
        if owner is not None:  # blocks that sum several terms
            blocks = terms.new_zeros((r * c, *terms.shape[1:])).index_add(0, owner.to(terms.device), terms)
        else:
            blocks = terms if perm is None else terms.index_select(0, perm.to(terms.device))
        weight = rearrange(blocks.view(r, c, *blocks.shape[1:]), "r c o i ... -> (r o) (c i) ...")
        return weight * self.scale if self.scale != 1.0 else weight

    def grid_repr(self) -> str:
        return f"grid={len(self._blocks)}x{len(self._blocks[0])}, scale={self.scale:g}"


class _GridConvNd(_Grid, _ConvLayer):
    def __init__(
        self,
        blocks: list[list[list[Term]]],
        bias: nn.Parameter | None,
        source: Any,
        *,
        in_channels: int,
        out_channels: int,
        groups: int,
        scale: float = 1.0,
    ) -> None:
        _Grid.__init__(self, blocks, bias, scale)
        self._copy_conv_attrs(source, in_channels=in_channels, out_channels=out_channels, groups=groups)

    def extra_repr(self) -> str:
        return f"{_ConvLayer.extra_repr(self)}, {self.grid_repr()}"


class GridConv1d(_GridConvNd):
    """A grown ``nn.Conv1d``: its weight is a grid of template-mixed blocks."""

    _dim = 1


class GridConv2d(_GridConvNd):
    """A grown ``nn.Conv2d``: its weight is a grid of template-mixed blocks."""

    _dim = 2


class GridConv3d(_GridConvNd):
    """A grown ``nn.Conv3d``: its weight is a grid of template-mixed blocks."""

    _dim = 3


class GridLinear(_Grid, _LinearLayer):
    """A grown ``nn.Linear``: its weight is a grid of template-mixed blocks."""

    def __init__(
        self,
        blocks: list[list[list[Term]]],
        bias: nn.Parameter | None,
        *,
        in_features: int,
        out_features: int,
        scale: float = 1.0,
    ) -> None:
        _Grid.__init__(self, blocks, bias, scale)
        self.in_features = in_features
        self.out_features = out_features

    def extra_repr(self) -> str:
        return f"{_LinearLayer.extra_repr(self)}, {self.grid_repr()}"


GRID_TYPES: tuple[type[nn.Module], ...] = (GridConv1d, GridConv2d, GridConv3d, GridLinear)
#: every module whose weight growc generates: never traced into, never templatized again
GENERATED_TYPES: tuple[type[nn.Module], ...] = MIXED_TYPES + GRID_TYPES


def _banks_of(container: nn.Module) -> list[TemplateBank]:
    return [m for m in container.children() if isinstance(m, TemplateBank)]


def begin_step(banks: nn.Module) -> None:
    """Graph op at the start of a forward of a model that owns template banks (``growc_banks``).

    Until :func:`end_step`, the first layer that needs a bank's weights generates all of them in one contraction
    and every other layer of the bank reuses that tensor: one autograd node, so the backward is one contraction
    too. Under ``torch.compile`` it does nothing (the compiler sees the plain contractions).
    """
    if not torch.compiler.is_compiling():
        for bank in _banks_of(banks):
            bank.begin_step()


def end_step(banks: nn.Module) -> None:
    """Graph op before the output: the shared tensors are dropped (the next forward builds a new graph)."""
    if not torch.compiler.is_compiling():
        for bank in _banks_of(banks):
            bank.end_step()


torch.fx.node.has_side_effect(begin_step)
torch.fx.node.has_side_effect(end_step)
STEP_MARKERS = (begin_step, end_step)


def strip_step_markers(graph: torch.fx.Graph) -> None:
    """Remove the step markers (and the ``growc_banks`` reads only they use) from ``graph``."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in STEP_MARKERS:
            source = node.args[0]
            graph.erase_node(node)
            if isinstance(source, torch.fx.Node) and not source.users:
                graph.erase_node(source)


def add_step_markers(gm: torch.fx.GraphModule) -> None:
    """Put :func:`begin_step` after the inputs and :func:`end_step` before the output of ``gm``'s graph when it
    owns ``growc_banks`` (and no markers otherwise). Idempotent."""
    graph = gm.graph
    strip_step_markers(graph)
    if "growc_banks" not in gm._modules:
        return
    consumers: dict[int, list[tuple[int, ...]]] = {id(bank): [] for bank in _banks_of(gm.growc_banks)}
    for module in gm.modules():
        if isinstance(module, GRID_TYPES):
            for bank, _, key in module._assembly()[0]:
                consumers.setdefault(id(bank), []).append(key)
        elif isinstance(module, _Mixed):
            consumers.setdefault(id(module.bank), []).append((int(module.index),))
    for bank in _banks_of(gm.growc_banks):
        bank.set_consumers(consumers[id(bank)])  # the layers that read it are this graph's
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    output = next(n for n in reversed(nodes) if n.op == "output")
    with graph.inserting_after(inputs[-1]) if inputs else graph.inserting_before(nodes[0]):
        banks = graph.get_attr("growc_banks")
    with graph.inserting_after(banks):
        graph.call_function(begin_step, (banks,))
    with graph.inserting_before(output):
        graph.call_function(end_step, (banks,))


def param_roles(model: nn.Module) -> dict[str, str]:
    """Map each parameter name (as ``model.named_parameters()`` gives it) to its role.

    Roles: ``"template"`` (a bank's templates), ``"coefficient"`` (a bank's mixing coefficients) and ``"other"``
    (biases, normalization parameters, untemplated weights).
    """
    special: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, TemplateBank):
            special[id(module.templates)] = "template"
            special[id(module.coefficients)] = "coefficient"
    return {name: special.get(id(p), "other") for name, p in model.named_parameters()}


def param_groups(model: nn.Module, weight_decay: float = 0.0, *, only_trainable: bool = True) -> list[dict[str, Any]]:
    """Optimizer parameter groups: weight decay on templates and other parameters, never on coefficients.

    Returns ``[{"params": [...], "weight_decay": weight_decay, "name": "decay"},
    {"params": [...], "weight_decay": 0.0, "name": "coefficients"}]`` (empty groups are left out), ready for
    ``torch.optim.SGD(growc.param_groups(gm, 5e-4), lr=0.1, momentum=0.9)``.
    """
    roles = param_roles(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if only_trainable and not p.requires_grad:
            continue
        (no_decay if roles[name] == "coefficient" else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "coefficients"},
    ]
    return [g for g in groups if g["params"]]
