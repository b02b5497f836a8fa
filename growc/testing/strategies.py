"""Hypothesis strategies that generate random, ``torch.fx``-traceable CNNs with example inputs.

The central object is :class:`CNNSpec`, a plain, hashable, JSON-serialisable description of an
architecture (a tuple of :class:`BlockSpec` block descriptors, a head descriptor, the input
dimensionality / channels / spatial size, the number of classes and a weight seed).
:func:`build_cnn` turns a spec into a fresh :class:`GeneratedCNN` deterministically: the weights
(and the randomised batch-norm running statistics) are drawn from a local
:class:`torch.Generator` seeded with ``spec.seed``; the global RNG is never touched.

:func:`cnn_specs` draws specs, :func:`cnn_models` draws :class:`GeneratedModel` objects (a spec
plus seeded example inputs).  Every generated model can be traced with
:func:`torch.fx.symbolic_trace`: :meth:`GeneratedCNN.forward` is a plain Python loop over the
blocks, each of which has straight-line, data-independent control flow.

Feature names (see :data:`ALL_FEATURES`), each of which can be switched off through the
``features`` argument:

``conv``
    plain convolution (kernel 1 or 3, stride 1 or 2, "same" or "valid" padding, bias on/off,
    dilation 2 sometimes).
``grouped``
    grouped convolution, ``1 < groups < in_channels`` dividing both channel counts.
``depthwise``
    depthwise convolution, ``groups == in_channels``, channel multiplier 1 or 2.
``bn``
    ``BatchNorm1d/2d`` with random affine parameters *and* random running statistics.
``gn``
    ``GroupNorm`` with a group count dividing the channels, random affine parameters.
``act``
    standalone activation (ReLU, GELU, SiLU, Hardswish); also lets composite blocks and the MLP
    head pick any of these (otherwise they use ReLU).
``residual``
    conv -> norm -> act -> conv -> norm, plus a skip connection (``out + skip``) with a 1x1
    projection convolution when the channel count or the stride changes; optional activation
    after the add.
``concat``
    DenseNet-style ``torch.cat([x, branch(x)], dim=1)`` or a two-branch Inception-style
    ``torch.cat([branch1(x), branch2(x)], dim=1)``.
``se``
    squeeze-and-excitation gating: adaptive avg pool -> 1x1 conv -> ReLU -> 1x1 conv ->
    ``torch.sigmoid`` -> ``x * gate``.
``pool``
    max or average pooling (only with sizes the current spatial extent allows).
``dropout``
    ``nn.Dropout`` with a small ``p``.
``functional``
    a block owning raw ``nn.Parameter`` weights used through ``F.conv1d``/``F.conv2d`` or
    ``F.linear`` (channel mixing), i.e. through ``get_attr`` nodes in the traced graph.
``reuse``
    module reuse: one channel-preserving, stride-1, "same"-padded convolution called twice in one
    forward, ``conv(act(conv(x)))``, so the traced graph has two ``call_module`` nodes with the
    same target.
``tied``
    tied weights: two distinct ``Conv1d/2d`` (or ``Linear``, channel mixing) submodules ``a`` and
    ``b`` sharing one ``nn.Parameter`` weight (``b.weight is a.weight``) but owning their own
    biases, applied as ``b(act(a(x)))``.  The tie survives :func:`build_cnn`, ``to_empty``,
    ``.to(...)``, ``copy.deepcopy`` and tracing; ``state_dict`` lists the shared weight under both
    names (``named_parameters`` / ``parameters`` list it once).
``einops``
    einops in ``forward``: ``op="move"`` moves the channels last with ``rearrange``, mixes them with an
    ``nn.Linear`` and moves them back; ``op="merge"`` merges the spatial axes and splits them again
    (``b c h w -> b c (h w) -> b c h w``); ``op="reduce"`` adds the spatial mean (``reduce(..., "mean")``, channels
    kept).
``gap_head`` / ``flatten_head``
    the head: global average pool -> flatten -> Linear, or flatten -> Linear over ``C * H * W``
    features.  If neither is enabled the global-average-pool head is used.
``mlp_head``
    the head may end in Linear -> activation -> Linear instead of a single Linear.

The output of every model is a logits tensor of shape ``[B, num_classes]`` with
``2 <= num_classes <= 6``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from hypothesis import strategies as st
from torch import nn

# einops blocks stay one graph node each under plain torch.fx.symbolic_trace too (growc.trace autowraps einops)
torch.fx.wrap("rearrange")
torch.fx.wrap("reduce")

__all__ = [
    "ACTIVATIONS",
    "ALL_FEATURES",
    "BlockSpec",
    "CNNSpec",
    "GeneratedCNN",
    "GeneratedModel",
    "block_output_shape",
    "build_cnn",
    "cnn_models",
    "cnn_specs",
    "make_inputs",
]

ParamValue = int | float | str | bool

#: Block-level features (each maps to one or more block kinds).
BLOCK_FEATURES: tuple[str, ...] = (
    "conv",
    "grouped",
    "depthwise",
    "bn",
    "gn",
    "act",
    "residual",
    "concat",
    "se",
    "pool",
    "dropout",
    "functional",
    "reuse",
    "tied",
    "einops",
)
#: Head features.
HEAD_FEATURES: tuple[str, ...] = ("gap_head", "flatten_head", "mlp_head")
#: Every feature name understood by :func:`cnn_specs` / :func:`cnn_models`.
ALL_FEATURES: frozenset[str] = frozenset(BLOCK_FEATURES + HEAD_FEATURES)
#: Activation names usable in specs, in shrinking order (simplest first).
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "silu", "hardswish")

_ACT_MODULES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "hardswish": nn.Hardswish,
}
_HEAD_KINDS = frozenset({"gap_head", "flatten_head"})
_NORMS = ("none", "bn", "gn")


# --------------------------------------------------------------------------------------------
# Spec data structures
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block descriptor: a kind plus an ordered tuple of ``(name, scalar)`` parameters.

    Hashable and JSON-serialisable (via :meth:`to_dict`).  Parameters are read with
    ``block["name"]`` or :meth:`get`.  Build one by hand with ``BlockSpec.of("conv", out=8, ...)``.

    Block kinds and their parameters:

    * ``conv``: ``out, k, stride, pad, dil, groups, bias``
    * ``bn``: none;  ``gn``: ``groups``;  ``act``: ``fn``;  ``dropout``: ``p``
    * ``residual``: ``out, stride, norm, norm_groups, act, post_act``
    * ``dense``: ``growth, norm, norm_groups, act``;  ``inception``: ``c1, c2, stride, act``
    * ``se``: ``hidden``;  ``pool``: ``op, k, stride, pad``
    * ``fconv``: ``out, k, bias``;  ``flinear``: ``out, bias``
    * ``reuse``: ``k, bias, act`` (channel- and size-preserving conv called twice)
    * ``tied``: ``op`` (``"conv"`` or ``"linear"``), ``k`` (conv only), ``act`` (channel- and
      size-preserving pair with one shared weight)
    * ``einops``: ``op`` (``"move"``, ``"merge"`` or ``"reduce"``), ``out`` (``move``: the Linear's outputs)
    * heads ``gap_head`` / ``flatten_head``: ``hidden`` (0 = single Linear), ``act``

    ``norm`` is one of ``"none"``, ``"bn"``, ``"gn"`` (``norm_groups`` is used for ``"gn"``).
    """

    kind: str
    params: tuple[tuple[str, ParamValue], ...] = ()

    @classmethod
    def of(cls, kind: str, **params: ParamValue) -> BlockSpec:
        """Build a block descriptor from keyword parameters (their order is kept)."""
        return cls(kind, tuple(params.items()))

    def __getitem__(self, name: str) -> ParamValue:
        for key, value in self.params:
            if key == name:
                return value
        raise KeyError(f"block {self.kind!r} has no parameter {name!r}")

    def get(self, name: str, default: ParamValue | None = None) -> ParamValue | None:
        """Return parameter ``name`` or ``default``."""
        try:
            return self[name]
        except KeyError:
            return default

    def to_dict(self) -> dict[str, ParamValue]:
        """Plain ``{"kind": ..., **params}`` dict (JSON-serialisable)."""
        return {"kind": self.kind, **dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockSpec:
        """Inverse of :meth:`to_dict`."""
        items = dict(data)
        kind = items.pop("kind")
        return cls(str(kind), tuple(items.items()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"{self.kind}({args})"


@dataclasses.dataclass(frozen=True)
class CNNSpec:
    """Plain, hashable, JSON-serialisable description of a generated CNN.

    Attributes:
        dim: 1 (``Conv1d``, inputs ``[B, C, L]``) or 2 (``Conv2d``, inputs ``[B, C, H, W]``).
        in_channels: channels of the input tensor.
        input_size: spatial size of the input (``(L,)`` or ``(H, W)``).
        blocks: the body, applied in order.
        head: ``gap_head`` or ``flatten_head`` descriptor.
        num_classes: width of the output logits.
        seed: seed of the local generator used for the weights and BN statistics.
    """

    dim: int
    in_channels: int
    input_size: tuple[int, ...]
    blocks: tuple[BlockSpec, ...]
    head: BlockSpec
    num_classes: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of JSON types; :meth:`from_dict` inverts it."""
        return {
            "dim": self.dim,
            "in_channels": self.in_channels,
            "input_size": list(self.input_size),
            "blocks": [b.to_dict() for b in self.blocks],
            "head": self.head.to_dict(),
            "num_classes": self.num_classes,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CNNSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            dim=int(data["dim"]),
            in_channels=int(data["in_channels"]),
            input_size=tuple(int(n) for n in data["input_size"]),
            blocks=tuple(BlockSpec.from_dict(b) for b in data["blocks"]),
            head=BlockSpec.from_dict(data["head"]),
            num_classes=int(data["num_classes"]),
            seed=int(data["seed"]),
        )

    def to_json(self) -> str:
        """Compact JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CNNSpec:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        """Shape of a valid input batch: ``(batch_size, in_channels, *input_size)``."""
        return (batch_size, self.in_channels, *self.input_size)

    @property
    def features(self) -> frozenset[str]:
        """The feature names (see :data:`ALL_FEATURES`) this spec actually uses."""
        used: set[str] = set()
        c, size = self.in_channels, self.input_size
        for block in self.blocks:
            kind = block.kind
            if kind == "conv":
                groups = int(block["groups"])
                used.add("conv" if groups == 1 else ("depthwise" if groups == c else "grouped"))
            elif kind in ("bn", "gn", "act", "residual", "se", "pool", "dropout", "reuse", "tied", "einops"):
                used.add(kind)
            elif kind in ("dense", "inception"):
                used.add("concat")
            elif kind in ("fconv", "flinear"):
                used.add("functional")
            norm = block.get("norm")
            if norm in ("bn", "gn"):
                used.add(str(norm))
            c, size = block_output_shape(block, self.dim, c, size)
        used.add(self.head.kind)
        if int(self.head["hidden"]) > 0:
            used.add("mlp_head")
        return frozenset(used)

    def __repr__(self) -> str:
        blocks = ", ".join(repr(b) for b in self.blocks)
        return (
            f"CNNSpec(dim={self.dim}, in_channels={self.in_channels}, input_size={self.input_size}, "
            f"num_classes={self.num_classes}, seed={self.seed}, blocks=[{blocks}], head={self.head!r})"
        )


# --------------------------------------------------------------------------------------------
# Shape bookkeeping
# --------------------------------------------------------------------------------------------


def _out_len(n: int, k: int, stride: int, pad: int, dil: int = 1) -> int:
    return (n + 2 * pad - dil * (k - 1) - 1) // stride + 1


def block_output_shape(block: BlockSpec, dim: int, c: int, size: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """Channels and spatial size after ``block`` given its input channels ``c`` and ``size``.

    Raises:
        ValueError: for an unknown block kind or a block that would shrink a size below 1.
    """
    kind = block.kind
    new_c, new_size = c, size
    if kind == "conv":
        k, s, p, d = (int(block[n]) for n in ("k", "stride", "pad", "dil"))
        new_c, new_size = int(block["out"]), tuple(_out_len(n, k, s, p, d) for n in size)
    elif kind in ("bn", "gn", "act", "dropout", "se"):
        pass
    elif kind == "einops":
        new_c = int(block["out"]) if block["op"] == "move" else c
    elif kind in ("reuse", "tied"):
        if int(block.get("k", 1)) % 2 != 1:  # "same" padding k // 2 keeps the size only for odd k
            raise ValueError(f"block {block!r} needs an odd kernel size")
    elif kind == "residual":
        s = int(block["stride"])
        new_c, new_size = int(block["out"]), tuple(_out_len(n, 3, s, 1) for n in size)
    elif kind == "dense":
        new_c = c + int(block["growth"])
    elif kind == "inception":
        s = int(block["stride"])
        new_c, new_size = int(block["c1"]) + int(block["c2"]), tuple(_out_len(n, 1, s, 0) for n in size)
    elif kind == "pool":
        k, s, p = (int(block[n]) for n in ("k", "stride", "pad"))
        new_size = tuple(_out_len(n, k, s, p) for n in size)
    elif kind in ("fconv", "flinear"):
        new_c = int(block["out"])
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    if len(new_size) != dim or min(new_size) < 1 or new_c < 1:
        raise ValueError(f"block {block!r} maps (C={c}, size={size}) to invalid (C={new_c}, size={new_size})")
    return new_c, new_size


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


def _conv_cls(dim: int) -> type[nn.Conv1d] | type[nn.Conv2d]:
    return nn.Conv1d if dim == 1 else nn.Conv2d


def _make_act(name: str) -> nn.Module:
    try:
        return _ACT_MODULES[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}") from None


def _make_norm(norm: str, groups: int, dim: int, c: int, device: torch.device | str) -> nn.Module | None:
    if norm == "none":
        return None
    if norm == "bn":
        return (nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d)(c, device=device)
    if norm == "gn":
        return nn.GroupNorm(groups, c, device=device)
    raise ValueError(f"unknown norm {norm!r}; expected one of {_NORMS}")


class ResidualBlock(nn.Module):
    """conv3x3(stride) -> norm -> act -> conv3x3 -> norm, plus skip (1x1 projection if needed)."""

    def __init__(
        self,
        dim: int,
        c_in: int,
        c_out: int,
        stride: int,
        norm: str,
        norm_groups: int,
        act: str,
        post_act: bool,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        conv = _conv_cls(dim)
        bias = norm == "none"
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=bias, device=device)
        self.norm1 = _make_norm(norm, norm_groups, dim, c_out, device)
        self.act1 = _make_act(act)
        self.conv2 = conv(c_out, c_out, 3, stride=1, padding=1, bias=bias, device=device)
        self.norm2 = _make_norm(norm, norm_groups, dim, c_out, device)
        needs_proj = c_in != c_out or stride != 1
        self.proj = conv(c_in, c_out, 1, stride=stride, bias=False, device=device) if needs_proj else None
        self.act2 = _make_act(act) if post_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.norm1 is not None:
            out = self.norm1(out)
        out = self.act1(out)
        out = self.conv2(out)
        if self.norm2 is not None:
            out = self.norm2(out)
        skip = x if self.proj is None else self.proj(x)
        out = out + skip
        if self.act2 is not None:
            out = self.act2(out)
        return out


class DenseConcat(nn.Module):
    """DenseNet-style block: ``torch.cat([x, conv3x3(act(norm(x)))], dim=1)``."""

    def __init__(
        self,
        dim: int,
        c_in: int,
        growth: int,
        norm: str,
        norm_groups: int,
        act: str,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        norm_mod = _make_norm(norm, norm_groups, dim, c_in, device)
        if norm_mod is not None:
            layers.append(norm_mod)
        layers.append(_make_act(act))
        layers.append(_conv_cls(dim)(c_in, growth, 3, padding=1, bias=norm == "none", device=device))
        self.branch = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.branch(x)], dim=1)


class InceptionConcat(nn.Module):
    """Two-branch Inception-style block: ``torch.cat([act(conv1x1(x)), act(conv3x3(x))], dim=1)``."""

    def __init__(
        self, dim: int, c_in: int, c1: int, c2: int, stride: int, act: str, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__()
        conv = _conv_cls(dim)
        self.branch1 = nn.Sequential(conv(c_in, c1, 1, stride=stride, device=device), _make_act(act))
        self.branch2 = nn.Sequential(conv(c_in, c2, 3, stride=stride, padding=1, device=device), _make_act(act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x)], dim=1)


class SqueezeExcite(nn.Module):
    """SE gating: avg pool -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> ``x * gate``."""

    def __init__(self, dim: int, c: int, hidden: int, device: torch.device | str = "cpu") -> None:
        super().__init__()
        conv = _conv_cls(dim)
        self.pool = nn.AdaptiveAvgPool1d(1) if dim == 1 else nn.AdaptiveAvgPool2d(1)
        self.reduce = conv(c, hidden, 1, device=device)
        self.act = nn.ReLU()
        self.expand = conv(hidden, c, 1, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * gate


class FunctionalConv(nn.Module):
    """Convolution with raw ``nn.Parameter`` weights, applied through ``F.conv1d``/``F.conv2d``."""

    def __init__(self, dim: int, c_in: int, c_out: int, k: int, bias: bool, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.dim = dim
        self.padding = k // 2
        self.weight = nn.Parameter(torch.empty((c_out, c_in, *([k] * dim)), device=device))
        self.bias = nn.Parameter(torch.empty(c_out, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dim == 1:
            return F.conv1d(x, self.weight, self.bias, padding=self.padding)
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)


class FunctionalLinear(nn.Module):
    """Channel mixing with raw ``nn.Parameter`` weights through ``F.linear`` (channels moved last)."""

    def __init__(self, c_in: int, c_out: int, bias: bool, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty((c_out, c_in), device=device))
        self.bias = nn.Parameter(torch.empty(c_out, device=device)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.movedim(1, -1), self.weight, self.bias)
        return y.movedim(-1, 1)


class ReusedConv(nn.Module):
    """Module reuse: one ``c -> c``, stride-1, same-padded conv called twice, ``conv(act(conv(x)))``."""

    def __init__(self, dim: int, c: int, k: int, bias: bool, act: str, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.conv = _conv_cls(dim)(c, c, k, padding=k // 2, bias=bias, device=device)
        self.act = _make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.conv(x)))


class TiedPair(nn.Module):
    """Tied weights: distinct ``c -> c`` modules ``a`` and ``b`` sharing one weight, own biases, ``b(act(a(x)))``.

    ``op="conv"``: stride-1, same-padded ``Conv1d/2d`` with kernel ``k``; ``op="linear"``:
    ``nn.Linear`` over the channels (moved last and back).  ``b.weight is a.weight`` holds after
    construction and after every ``_apply`` (``to_empty``, ``to``, ``half``, ...), which would
    otherwise give each module its own copy.
    """

    def __init__(self, dim: int, c: int, op: str, k: int, act: str, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.op = op
        if op == "conv":
            self.a: nn.Module = _conv_cls(dim)(c, c, k, padding=k // 2, device=device)
            self.b: nn.Module = _conv_cls(dim)(c, c, k, padding=k // 2, device=device)
        elif op == "linear":
            self.a = nn.Linear(c, c, device=device)
            self.b = nn.Linear(c, c, device=device)
        else:
            raise ValueError(f"unknown tied op {op!r}; expected 'conv' or 'linear'")
        self.act = _make_act(act)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make ``b`` use ``a``'s weight Parameter (idempotent)."""
        self.b.weight = self.a.weight

    def _apply(self, fn: Any, recurse: bool = True) -> TiedPair:
        super()._apply(fn, recurse)
        self.tie_weights()
        return self

    def extra_repr(self) -> str:
        return f"op={self.op!r}, weight_tied={self.b.weight is self.a.weight}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "linear":
            return self.b(self.act(self.a(x.movedim(1, -1)))).movedim(-1, 1)
        return self.b(self.act(self.a(x)))


class EinopsBlock(nn.Module):
    """einops in ``forward`` (see the ``einops`` feature): ``move``, ``merge`` or ``reduce``."""

    def __init__(self, dim: int, c: int, op: str, out: int, size: tuple[int, ...], device: torch.device | str) -> None:
        super().__init__()
        self.op, self.dim, self.size = op, dim, size
        if op == "move":
            self.fc = nn.Linear(c, out, device=device)
        elif op not in ("merge", "reduce"):
            raise ValueError(f"unknown einops op {op!r}; expected 'move', 'merge' or 'reduce'")

    def extra_repr(self) -> str:
        return f"op={self.op!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "move":
            return rearrange(self.fc(rearrange(x, "b c ... -> b ... c")), "b ... c -> b c ...")
        if self.op == "merge":
            if self.dim == 1:
                return rearrange(rearrange(x, "b c l -> b l c"), "b l c -> b c l")
            merged = rearrange(x, "b c h w -> b c (h w)")
            return rearrange(merged, "b c (h w) -> b c h w", h=self.size[0])
        pattern = "b c l -> b c ()" if self.dim == 1 else "b c h w -> b c () ()"
        return x + reduce(x, pattern, "mean")


def _make_layer_block(block: BlockSpec, dim: int, c: int, device: torch.device | str) -> nn.Module | None:
    """A conv, norm, activation or dropout layer, or None for another kind."""
    kind = block.kind
    if kind == "conv":
        return _conv_cls(dim)(
            c,
            int(block["out"]),
            int(block["k"]),
            stride=int(block["stride"]),
            padding=int(block["pad"]),
            dilation=int(block["dil"]),
            groups=int(block["groups"]),
            bias=bool(block["bias"]),
            device=device,
        )
    if kind == "bn":
        return (nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d)(c, device=device)
    if kind == "gn":
        return nn.GroupNorm(int(block["groups"]), c, device=device)
    if kind == "act":
        return _make_act(str(block["fn"]))
    if kind == "dropout":
        return nn.Dropout(float(block["p"]))
    return None


def _make_composite_block(block: BlockSpec, dim: int, c: int, device: torch.device | str) -> nn.Module | None:
    """A residual, concat or squeeze-excite block, or None for another kind."""
    kind = block.kind
    if kind == "residual":
        return ResidualBlock(
            dim,
            c,
            int(block["out"]),
            int(block["stride"]),
            str(block["norm"]),
            int(block["norm_groups"]),
            str(block["act"]),
            bool(block["post_act"]),
            device=device,
        )
    if kind == "dense":
        return DenseConcat(
            dim,
            c,
            int(block["growth"]),
            str(block["norm"]),
            int(block["norm_groups"]),
            str(block["act"]),
            device,
        )
    if kind == "inception":
        return InceptionConcat(
            dim, c, int(block["c1"]), int(block["c2"]), int(block["stride"]), str(block["act"]), device
        )
    if kind == "se":
        return SqueezeExcite(dim, c, int(block["hidden"]), device)
    return None


def _make_other_block(block: BlockSpec, dim: int, c: int, device: torch.device | str) -> nn.Module | None:
    """A pooling, functional, reused or tied block, or None for another kind."""
    kind = block.kind
    if kind == "pool":
        k, s, p = int(block["k"]), int(block["stride"]), int(block["pad"])
        if block["op"] == "max":
            return (nn.MaxPool1d if dim == 1 else nn.MaxPool2d)(k, stride=s, padding=p)
        if block["op"] == "avg":
            return (nn.AvgPool1d if dim == 1 else nn.AvgPool2d)(k, stride=s, padding=p)
        raise ValueError(f"unknown pooling op in {block!r}")
    if kind == "fconv":
        return FunctionalConv(dim, c, int(block["out"]), int(block["k"]), bool(block["bias"]), device)
    if kind == "flinear":
        return FunctionalLinear(c, int(block["out"]), bool(block["bias"]), device)
    if kind == "reuse":
        return ReusedConv(dim, c, int(block["k"]), bool(block["bias"]), str(block["act"]), device)
    if kind == "tied":
        return TiedPair(dim, c, str(block["op"]), int(block.get("k", 1)), str(block["act"]), device)
    return None


def _make_block(block: BlockSpec, dim: int, c: int, size: tuple[int, ...], device: torch.device | str) -> nn.Module:
    if block.kind == "einops":
        return EinopsBlock(dim, c, str(block["op"]), int(block["out"]), size, device)
    for make in (_make_layer_block, _make_composite_block, _make_other_block):
        module = make(block, dim, c, device)
        if module is not None:
            return module
    kind = block.kind
    raise ValueError(f"unknown block kind {kind!r}")


def _make_head(
    head: BlockSpec, dim: int, c: int, size: tuple[int, ...], num_classes: int, device: torch.device | str
) -> nn.Sequential:
    layers: list[nn.Module] = []
    if head.kind == "gap_head":
        layers.append(nn.AdaptiveAvgPool1d(1) if dim == 1 else nn.AdaptiveAvgPool2d(1))
        in_features = c
    elif head.kind == "flatten_head":
        in_features = c * math.prod(size)
    else:
        raise ValueError(f"unknown head kind {head.kind!r}; expected one of {sorted(_HEAD_KINDS)}")
    layers.append(nn.Flatten(1))
    hidden = int(head["hidden"])
    if hidden > 0:
        layers += [
            nn.Linear(in_features, hidden, device=device),
            _make_act(str(head["act"])),
            nn.Linear(hidden, num_classes, device=device),
        ]
    else:
        layers.append(nn.Linear(in_features, num_classes, device=device))
    return nn.Sequential(*layers)


class GeneratedCNN(nn.Module):
    """A CNN interpreting a :class:`CNNSpec`.

    ``__init__`` turns each block descriptor into a submodule (``self.blocks[i]``) and builds the
    head (``self.head``); ``forward`` is a plain Python loop over the blocks followed by the head,
    which ``torch.fx.symbolic_trace`` unrolls.  Parameters are left uninitialised when built on the
    ``meta`` device; use :func:`build_cnn` to get a deterministically initialised model.
    """

    def __init__(self, spec: CNNSpec, *, device: torch.device | str = "cpu") -> None:
        super().__init__()
        if spec.dim not in (1, 2):
            raise ValueError(f"dim must be 1 or 2, got {spec.dim}")
        if len(spec.input_size) != spec.dim:
            raise ValueError(f"input_size {spec.input_size} does not match dim={spec.dim}")
        self.spec = spec
        c, size = spec.in_channels, spec.input_size
        blocks: list[nn.Module] = []
        for block in spec.blocks:
            blocks.append(_make_block(block, spec.dim, c, size, device))
            c, size = block_output_shape(block, spec.dim, c, size)
        self.blocks = nn.ModuleList(blocks)
        self.head = _make_head(spec.head, spec.dim, c, size, spec.num_classes, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def extra_repr(self) -> str:
        return f"seed={self.spec.seed}"


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


@torch.no_grad()
def _init_parameters(model: nn.Module, gen: torch.Generator) -> None:
    """Fill every parameter and buffer of ``model`` from ``gen`` (in module registration order).

    A weight shared by several modules (tied weights) is filled once, at its first owner; the
    biases of the later owners are still filled (with the bound of the shared weight's fan-in).
    """
    seen: set[int] = set()
    for name, mod in model.named_modules():
        params = dict(mod.named_parameters(recurse=False))
        buffers = dict(mod.named_buffers(recurse=False))
        if isinstance(mod, _NORM_TYPES):
            if "weight" in params:
                params.pop("weight").uniform_(0.5, 1.5, generator=gen)
            if "bias" in params:
                params.pop("bias").normal_(0.0, 0.2, generator=gen)
            if "running_mean" in buffers:
                buffers.pop("running_mean").normal_(0.0, 0.5, generator=gen)
            if "running_var" in buffers:
                buffers.pop("running_var").uniform_(0.5, 2.0, generator=gen)
            if "num_batches_tracked" in buffers:
                buffers.pop("num_batches_tracked").zero_()
        elif "weight" in params and params["weight"].dim() >= 2:
            weight = params.pop("weight")
            fan_in = max(1, weight[0].numel())
            if id(weight) not in seen:
                seen.add(id(weight))
                weight.uniform_(-math.sqrt(3.0 / fan_in), math.sqrt(3.0 / fan_in), generator=gen)
            if "bias" in params:
                bound = 1.0 / math.sqrt(fan_in)
                params.pop("bias").uniform_(-bound, bound, generator=gen)
        if params or buffers:  # pragma: no cover - guards against new block types
            raise TypeError(f"no initialiser for {name or 'root'}: {sorted(params) + sorted(buffers)}")


def build_cnn(spec: CNNSpec, *, device: torch.device | str = "cpu") -> GeneratedCNN:
    """Build a fresh, deterministically initialised :class:`GeneratedCNN` from ``spec``.

    Modules are created on the ``meta`` device and then filled from a local
    ``torch.Generator().manual_seed(spec.seed)``, so the result depends only on ``spec`` and the
    global RNG is neither read nor advanced.  The module is returned in training mode, like any
    freshly constructed ``nn.Module``.
    """
    model = GeneratedCNN(spec, device="meta")
    model.to_empty(device="cpu")
    _init_parameters(model, torch.Generator().manual_seed(spec.seed))
    return model.to(device) if torch.device(device).type != "cpu" else model


def make_inputs(spec: CNNSpec, batch_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Example inputs for ``spec``: one standard-normal ``float32`` tensor from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(spec.input_shape(batch_size), generator=gen),)


@dataclasses.dataclass(frozen=True, eq=False)
class GeneratedModel:
    """A generated architecture together with valid example inputs.

    Attributes:
        spec: the architecture (hashable, JSON-serialisable).
        inputs: positional example inputs, ``(x,)`` with ``x`` of shape ``spec.input_shape(B)``.
        input_seed: the seed ``inputs`` were drawn with (see :func:`make_inputs`).
    """

    spec: CNNSpec
    inputs: tuple[torch.Tensor, ...]
    input_seed: int = 0

    @classmethod
    def from_spec(cls, spec: CNNSpec, batch_size: int = 2, input_seed: int = 0) -> GeneratedModel:
        """Pair ``spec`` with inputs from :func:`make_inputs`."""
        return cls(spec, make_inputs(spec, batch_size, input_seed), input_seed)

    def build(self) -> GeneratedCNN:
        """A fresh module built from :attr:`spec` (identical weights on every call)."""
        return build_cnn(self.spec)

    @functools.cached_property
    def module(self) -> GeneratedCNN:
        """A module built once (``build()``) and cached; use :meth:`build` for an unshared copy."""
        return self.build()

    @property
    def batch_size(self) -> int:
        """Batch size of :attr:`inputs`."""
        return int(self.inputs[0].shape[0])

    @property
    def output_shape(self) -> tuple[int, int]:
        """Expected output shape ``(B, num_classes)``."""
        return (self.batch_size, self.spec.num_classes)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{list(t.shape)}" for t in self.inputs)
        return f"GeneratedModel(spec={self.spec!r}, inputs=[{shapes}], input_seed={self.input_seed})"


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclasses.dataclass
class _State:
    dim: int
    c: int
    size: tuple[int, ...]
    max_channels: int
    features: frozenset[str]

    def acts(self) -> list[str]:
        return list(ACTIVATIONS) if "act" in self.features else ["relu"]


def _applicable(feature: str, s: _State) -> bool:
    if feature == "grouped":
        return any(1 < g < s.c for g in _divisors(s.c))
    if feature == "depthwise":
        return s.c >= 2 and s.c <= s.max_channels
    if feature == "bn":
        return math.prod(s.size) >= 2
    if feature == "concat":
        return s.max_channels >= 2
    return True


def _draw_norm(draw: st.DrawFn, s: _State, c: int, size: tuple[int, ...]) -> tuple[str, int]:
    options = ["none"]
    if "bn" in s.features and math.prod(size) >= 2:
        options.append("bn")
    if "gn" in s.features:
        options.append("gn")
    norm = draw(st.sampled_from(options))
    groups = draw(st.sampled_from(_divisors(c))) if norm == "gn" else 0
    return norm, groups


def _draw_conv_geometry(draw: st.DrawFn, s: _State) -> dict[str, ParamValue]:
    k = draw(st.sampled_from((1, 3)))
    dil, pad = 1, 0
    if k == 3:
        dil = draw(st.sampled_from((1, 2)))
        pads = [dil] + ([0] if min(s.size) >= 2 * dil + 1 else [])
        pad = draw(st.sampled_from(pads))
    stride = draw(st.sampled_from((1, 2)))
    return {"k": k, "stride": stride, "pad": pad, "dil": dil}


def _draw_conv_block(draw: st.DrawFn, feature: str, s: _State) -> BlockSpec | None:
    """A conv block (plain, grouped or depthwise), or None for another feature."""
    mc = s.max_channels
    if feature == "conv":
        out = draw(st.integers(1, mc))
        geo = _draw_conv_geometry(draw, s)
        return BlockSpec.of("conv", out=out, **geo, groups=1, bias=draw(st.booleans()))
    if feature == "grouped":
        groups = draw(st.sampled_from([g for g in _divisors(s.c) if 1 < g < s.c]))
        out = groups * draw(st.integers(1, max(1, mc // groups)))
        geo = _draw_conv_geometry(draw, s)
        return BlockSpec.of("conv", out=out, **geo, groups=groups, bias=draw(st.booleans()))
    if feature == "depthwise":
        mult = draw(st.sampled_from([m for m in (1, 2) if s.c * m <= mc]))
        geo = _draw_conv_geometry(draw, s)
        return BlockSpec.of("conv", out=s.c * mult, **geo, groups=s.c, bias=draw(st.booleans()))
    return None


def _draw_layer_block(draw: st.DrawFn, feature: str, s: _State) -> BlockSpec | None:
    """A norm, activation or dropout block, or None for another feature."""
    if feature == "bn":
        return BlockSpec.of("bn")
    if feature == "gn":
        return BlockSpec.of("gn", groups=draw(st.sampled_from(_divisors(s.c))))
    if feature == "act":
        return BlockSpec.of("act", fn=draw(st.sampled_from(ACTIVATIONS)))
    if feature == "dropout":
        return BlockSpec.of("dropout", p=draw(st.sampled_from((0.1, 0.05, 0.2))))
    return None


def _draw_composite_block(draw: st.DrawFn, feature: str, s: _State) -> BlockSpec | None:
    """A residual, concat or squeeze-excite block, or None for another feature."""
    mc = s.max_channels
    if feature == "residual":
        out = draw(st.integers(1, mc))
        stride = draw(st.sampled_from((1, 2)))
        out_size = tuple(_out_len(n, 3, stride, 1) for n in s.size)
        norm, groups = _draw_norm(draw, s, out, out_size)
        return BlockSpec.of(
            "residual",
            out=out,
            stride=stride,
            norm=norm,
            norm_groups=groups,
            act=draw(st.sampled_from(s.acts())),
            post_act=draw(st.booleans()),
        )
    if feature == "concat":
        variants = (["dense"] if s.c < mc else []) + ["inception"]
        if draw(st.sampled_from(variants)) == "dense":
            growth = draw(st.integers(1, mc - s.c))
            norm, groups = _draw_norm(draw, s, s.c, s.size)
            act = draw(st.sampled_from(s.acts()))
            return BlockSpec.of("dense", growth=growth, norm=norm, norm_groups=groups, act=act)
        c1 = draw(st.integers(1, mc - 1))
        c2 = draw(st.integers(1, mc - c1))
        stride = draw(st.sampled_from((1, 2)))
        return BlockSpec.of("inception", c1=c1, c2=c2, stride=stride, act=draw(st.sampled_from(s.acts())))
    if feature == "se":
        return BlockSpec.of("se", hidden=draw(st.integers(1, max(1, s.c // 2))))
    return None


def _draw_other_block(draw: st.DrawFn, feature: str, s: _State) -> BlockSpec | None:
    """A pooling, functional, reused or tied block, or None for another feature."""
    mc = s.max_channels
    if feature == "pool":
        geometries = [(3, 1, 1), (3, 2, 1)]
        if min(s.size) >= 2:
            geometries.append((2, 2, 0))
        if min(s.size) >= 3:
            geometries += [(3, 1, 0), (3, 2, 0)]
        k, stride, pad = draw(st.sampled_from(geometries))
        return BlockSpec.of("pool", op=draw(st.sampled_from(("max", "avg"))), k=k, stride=stride, pad=pad)
    if feature == "functional":
        out = draw(st.integers(1, mc))
        bias = draw(st.booleans())
        if draw(st.sampled_from(("fconv", "flinear"))) == "fconv":
            return BlockSpec.of("fconv", out=out, k=draw(st.sampled_from((1, 3))), bias=bias)
        return BlockSpec.of("flinear", out=out, bias=bias)
    if feature == "reuse":
        k = draw(st.sampled_from((1, 3)))
        return BlockSpec.of("reuse", k=k, bias=draw(st.booleans()), act=draw(st.sampled_from(s.acts())))
    if feature == "einops":
        op = draw(st.sampled_from(("move", "merge", "reduce")))
        return BlockSpec.of("einops", op=op, out=draw(st.integers(1, mc)) if op == "move" else s.c)
    if feature == "tied":
        if draw(st.sampled_from(("conv", "linear"))) == "conv":
            k = draw(st.sampled_from((1, 3)))
            return BlockSpec.of("tied", op="conv", k=k, act=draw(st.sampled_from(s.acts())))
        return BlockSpec.of("tied", op="linear", act=draw(st.sampled_from(s.acts())))
    return None


def _draw_block(draw: st.DrawFn, feature: str, s: _State) -> BlockSpec:
    for drawer in (_draw_conv_block, _draw_layer_block, _draw_composite_block, _draw_other_block):
        block = drawer(draw, feature, s)  # draws nothing unless the feature is its own
        if block is not None:
            return block
    raise ValueError(f"unknown feature {feature!r}")  # pragma: no cover


@st.composite
def _spec_strategy(
    draw: st.DrawFn, dims: tuple[int, ...], max_blocks: int, max_channels: int, features: frozenset[str]
) -> CNNSpec:
    dim = draw(st.sampled_from(dims))
    in_channels = draw(st.integers(1, min(4, max_channels)))
    if dim == 1:
        input_size: tuple[int, ...] = (draw(st.integers(8, 24)),)
    else:
        input_size = (draw(st.integers(6, 16)), draw(st.integers(6, 16)))
    block_features = [f for f in BLOCK_FEATURES if f in features]  # fixed order: reproducible draws
    n_blocks = draw(st.integers(1 if block_features and max_blocks > 0 else 0, max_blocks))
    state = _State(dim, in_channels, input_size, max_channels, features)
    blocks: list[BlockSpec] = []
    for _ in range(n_blocks):
        options = [f for f in block_features if _applicable(f, state)]
        if not options:
            break
        block = _draw_block(draw, draw(st.sampled_from(options)), state)
        blocks.append(block)
        state.c, state.size = block_output_shape(block, dim, state.c, state.size)
    head_kinds = [k for k in ("gap_head", "flatten_head") if k in features] or ["gap_head"]
    head_kind = draw(st.sampled_from(head_kinds))
    hidden = draw(st.integers(2, 16)) if "mlp_head" in features and draw(st.booleans()) else 0
    act = draw(st.sampled_from(state.acts())) if hidden else "relu"
    head = BlockSpec.of(head_kind, hidden=hidden, act=act)
    num_classes = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    return CNNSpec(dim, in_channels, input_size, tuple(blocks), head, num_classes, seed)


def _check_args(dims: Iterable[int], max_blocks: int, max_channels: int, features: Iterable[str]) -> tuple:
    dims_t = tuple(dims)
    if not dims_t or any(d not in (1, 2) for d in dims_t):
        raise ValueError(f"dims must be a non-empty subset of (1, 2), got {dims_t!r}")
    if max_blocks < 0:
        raise ValueError(f"max_blocks must be >= 0, got {max_blocks}")
    if max_channels < 1:
        raise ValueError(f"max_channels must be >= 1, got {max_channels}")
    if isinstance(features, str):
        raise TypeError("features must be a collection of feature names, not a string")
    feats = frozenset(features)
    unknown = feats - ALL_FEATURES
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; known: {sorted(ALL_FEATURES)}")
    return dims_t, max_blocks, max_channels, feats


def cnn_specs(
    *,
    dims: Iterable[int] = (1, 2),
    max_blocks: int = 5,
    max_channels: int = 16,
    features: Iterable[str] = ALL_FEATURES,
) -> st.SearchStrategy[CNNSpec]:
    """Strategy for :class:`CNNSpec` values.

    Args:
        dims: spatial dimensionalities to draw from (1: ``[B, C, L]``, 2: ``[B, C, H, W]``).
        max_blocks: maximum number of body blocks (at least one is drawn when any block feature
            is enabled and ``max_blocks > 0``).
        max_channels: upper bound on every channel count in the body.
        features: enabled feature names, a subset of :data:`ALL_FEATURES`.
    """
    return _spec_strategy(*_check_args(dims, max_blocks, max_channels, features))


def cnn_models(
    *,
    dims: Iterable[int] = (1, 2),
    max_blocks: int = 5,
    max_channels: int = 16,
    batch_sizes: Iterable[int] = (2, 3),
    features: Iterable[str] = ALL_FEATURES,
) -> st.SearchStrategy[GeneratedModel]:
    """Strategy for :class:`GeneratedModel` values: a spec from :func:`cnn_specs` plus inputs.

    ``batch_sizes`` are the candidate batch sizes of the example input; the other arguments are
    those of :func:`cnn_specs`.
    """
    sizes = tuple(batch_sizes)
    if not sizes or any(b < 1 for b in sizes):
        raise ValueError(f"batch_sizes must be non-empty positive ints, got {sizes!r}")
    return st.builds(
        GeneratedModel.from_spec,
        cnn_specs(dims=dims, max_blocks=max_blocks, max_channels=max_channels, features=features),
        batch_size=st.sampled_from(sizes),
        input_seed=st.integers(0, 2**31 - 1),
    )
