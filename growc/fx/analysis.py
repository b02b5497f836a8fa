"""Shape and dtype propagation on the meta device: no real compute, no parameter copies.

:func:`propagate_shapes` runs the graph with every parameter, buffer and input swapped for a ``meta`` tensor of the
same shape and dtype (swapped back afterwards), and stores a :class:`TensorInfo` pytree on every node as
``node.meta["growc_shape"]``. A node whose op cannot run on meta tensors (it inspects data, e.g. ``if x.sum() > 0``
inside a leaf module) is run once on real zeros of the propagated shapes instead; such nodes are listed in the
returned report, never hidden.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_map

from growc.errors import GrowcConfigError, GrowcDataError, GrowcError

__all__ = [
    "TensorInfo",
    "as_tensor",
    "check_finite_state",
    "check_finite_values",
    "computation_dtype",
    "exactness_tolerance",
    "leaf_error",
    "max_abs_rel_error",
    "nonfinite_tree",
    "plain_containers",
    "propagate_shapes",
    "relative_error",
    "run_outputs",
]


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one tensor value of the graph."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": str(self.dtype).removeprefix("torch.")}


def _info(value: Any) -> Any:
    return TensorInfo(tuple(int(s) for s in value.shape), value.dtype) if isinstance(value, Tensor) else value


def _to_meta(value: Any) -> Any:
    return value.to("meta") if isinstance(value, Tensor) else value


class _MetaInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.real_nodes: list[str] = []
        self.real_state: dict[str, Tensor] = {}
        self.device = torch.device("cpu")

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as error:  # a data-dependent op: fall back to zeros, and say so
            if n.op not in ("call_module", "call_function", "call_method"):
                raise
            try:
                result = self._run_on_zeros(n, error)
            except Exception as real_error:
                args, _ = self.fetch_args_kwargs_from_env(n)
                shapes = [tuple(a.shape) for a in tree_flatten(args)[0] if isinstance(a, Tensor)]
                target = getattr(n.target, "__name__", str(n.target))
                raise GrowcError(
                    f"shape analysis: node '{n.name}' ({n.op} {target}) fails on inputs of shapes {shapes}: "
                    f"{type(real_error).__name__}: {str(real_error).splitlines()[0]}. Do the example inputs fit "
                    "the model?"
                ) from real_error
        n.meta["growc_shape"] = tree_map(_info, result)
        return result

    def fetch_attr(self, target: str) -> Any:
        return _to_meta(super().fetch_attr(target))

    def _run_on_zeros(self, n: fx.Node, error: Exception) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)

        def real(value: Any) -> Any:
            if isinstance(value, Tensor) and value.is_meta:
                return torch.zeros(value.shape, dtype=value.dtype, device=self.device)
            return value

        args, kwargs = tree_map(real, args), tree_map(real, kwargs)
        with _reparametrize_module(self.module, self.real_state):
            out = getattr(self, n.op)(n.target, args, kwargs)
        self.real_nodes.append(f"{n.name} ({type(error).__name__})")
        return tree_map(_to_meta, out)


def _locations(gm: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer *slot*, once: a module reachable by two paths, or a tensor tied between two
    modules, must be swapped exactly once per slot, or restoring would put a swapped tensor back."""
    state: dict[str, Tensor] = {}
    for prefix, module in gm.named_modules():  # each module object once
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is not None:
                    state[f"{prefix}.{name}" if prefix else name] = tensor
    return state


def _check_arity(gm: fx.GraphModule, count: int) -> None:
    """The graph's placeholders take ``count`` positional inputs (fx would fail on a missing one with a raw
    RuntimeError, and silently drop extra ones)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if any(str(n.target).startswith("*") for n in placeholders):
        return  # *args: any count
    required = [n for n in placeholders if not n.args]  # a placeholder with a default has it in args
    if not len(required) <= count <= len(placeholders):
        names = ", ".join(str(n.target) for n in placeholders) or "none"
        expected = (
            str(len(placeholders)) if len(required) == len(placeholders) else f"{len(required)} to {len(placeholders)}"
        )
        raise GrowcConfigError(
            f"shape analysis: the model takes {expected} positional input(s) ({names}), got {count} example input(s)"
        )


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> dict[str, Any]:
    """Annotate every node of ``gm`` with ``node.meta["growc_shape"]`` (a pytree of :class:`TensorInfo`).

    Runs on meta tensors in eval mode under ``no_grad`` (training flags are restored afterwards; parameters and
    buffers are untouched). Returns a report: ``nodes`` (count) and ``real_compute_nodes`` (nodes that had to run
    on zeros).
    """
    _check_arity(gm, len(example_inputs))
    state = _locations(gm)
    meta_of: dict[int, Tensor] = {}
    meta_state = {name: meta_of.setdefault(id(t), t.to("meta")) for name, t in state.items()}
    flags = [(m, m.training) for m in gm.modules()]
    interpreter = _MetaInterpreter(gm)
    interpreter.real_state = state
    devices = [t.device for t in tree_flatten(list(example_inputs))[0] if isinstance(t, Tensor)]
    interpreter.device = devices[0] if devices else torch.device("cpu")
    gm.eval()
    try:
        with torch.no_grad(), _reparametrize_module(gm, meta_state):
            try:
                interpreter.run(*tree_map(_to_meta, list(example_inputs)))
            except GrowcError as error:
                # fx's interpreter appends "While executing %node ..." to the message; ours already names the node
                message = str(error).split("\n\nWhile executing")[0]
                raise GrowcError(message) from error.__cause__
    finally:
        for module, flag in flags:
            module.training = flag
        for module in gm.modules():
            if hasattr(module, "clear_cache"):
                module.clear_cache()
    return {"nodes": len(gm.graph.nodes), "real_compute_nodes": interpreter.real_nodes}


# Error measure (a *max-norm relative error*), per output leaf ``x`` (reference) and ``y`` (candidate):
#     max_abs = max |x - y|;  max_rel = max_abs / max |x|  (0 when max_abs == 0)
# In :func:`max_abs_rel_error` a NaN anywhere (in either) is an infinite difference: NaN is never equal to NaN.
# Equal infinities count as 0, any other infinity mismatch as an infinite difference; ``max |x|`` is taken over
# finite entries. (``leaf_error`` alone, which growc.testing's assert_same_function uses, counts NaN vs NaN as 0.)


def as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (bool, int, float, complex)):
        return torch.tensor(value)
    return None


def leaf_error(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """``(max|ref - out|, max|ref|)`` for two same-shaped tensors (see module docstring)."""
    if ref.numel() == 0:
        return 0.0, 0.0
    wide = torch.complex128 if (ref.is_complex() or out.is_complex()) else torch.float64
    x = ref.detach().to("cpu", wide)
    y = out.detach().to("cpu", wide)
    diff = (x - y).abs()
    same = (x == y) | (x.isnan() & y.isnan())
    diff = torch.where(same, torch.zeros_like(diff), diff)
    diff = torch.nan_to_num(diff, nan=math.inf)
    ref_abs = x.abs()
    finite = ref_abs[torch.isfinite(ref_abs)]
    ref_max = float(finite.max()) if finite.numel() else 0.0
    return float(diff.max()), ref_max


def relative_error(max_abs: float, ref_max: float) -> float:
    if max_abs == 0.0:
        return 0.0
    return max_abs / ref_max if ref_max > 0.0 else math.inf


def run_outputs(modules: Sequence[nn.Module], inputs: Sequence[Any], *, train: bool, seed: int = 0) -> list[Any]:
    """Each module's output on ``inputs``, without changing any module or the global RNG.

    ``train=False``: eval mode under ``no_grad`` (training flags restored afterwards). ``train=True``: train mode on
    deep copies (BatchNorm statistics of the originals untouched), each call after ``torch.manual_seed(seed)`` so
    random ops draw alike. A traced graph is specialised to the training flag it was traced with
    (``if self.training`` in Python, ``stochastic_depth(..., self.training)``), so checks run in that mode.
    """
    outputs = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for module in modules:
            if train:
                module = copy.deepcopy(module).train()
                torch.manual_seed(seed)
                outputs.append(module(*inputs))
                continue
            flags = [(m, m.training) for m in module.modules()]
            try:
                module.eval()
                outputs.append(module(*inputs))
            finally:
                for m, flag in flags:
                    m.training = flag
    return outputs


def plain_containers(tree: Any) -> Any:
    """Mappings as plain dicts and namedtuples as tuples: a traced model returns ``dict`` where the model
    returned an ``OrderedDict``, and that is the same output."""
    if isinstance(tree, Mapping):
        return {k: plain_containers(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(plain_containers(v) for v in tree)
    if isinstance(tree, list):
        return [plain_containers(v) for v in tree]
    return tree


def max_abs_rel_error(ref: Any, out: Any) -> tuple[float, float]:
    """Max absolute and max-norm relative error between two outputs (tensors or pytrees).

    Returns ``(max_abs, max_abs / max|ref|)`` where both maxima run over all elements of all
    leaves; the relative error is 0 when ``max_abs`` is 0 (in particular when both are zero)
    and ``inf`` when ``ref`` is all zeros but ``out`` is not.  Python numbers are treated as
    0-d tensors; other leaves (``None``, strings, ...) contribute 0 if equal and ``inf`` if not.

    Raises:
        ValueError: if the tree structures or the shapes of corresponding leaves differ.
    """
    ref_leaves, ref_spec = tree_flatten(plain_containers(ref))
    out_leaves, out_spec = tree_flatten(plain_containers(out))
    if ref_spec != out_spec:
        raise ValueError(f"output structures differ:\n  ref: {ref_spec}\n  out: {out_spec}")
    max_abs = ref_max = 0.0
    for i, (r, o) in enumerate(zip(ref_leaves, out_leaves, strict=True)):
        rt, ot = as_tensor(r), as_tensor(o)
        if rt is None or ot is None:
            leaf_abs, leaf_ref = (0.0 if r == o else math.inf), 0.0
        else:
            if rt.shape != ot.shape:
                raise ValueError(f"leaf {i}: shapes differ: ref {tuple(rt.shape)} vs out {tuple(ot.shape)}")
            if _has_nan(rt) or _has_nan(ot):
                return math.inf, math.inf  # a NaN is never equal to anything, another NaN included
            leaf_abs, leaf_ref = leaf_error(rt, ot)
        max_abs, ref_max = max(max_abs, leaf_abs), max(ref_max, leaf_ref)
    return max_abs, relative_error(max_abs, ref_max)


def _has_nan(t: Tensor) -> bool:
    if not (t.is_floating_point() or t.is_complex()):
        return False
    # fast path: a sum that is not NaN has no NaN term (one reduction, not a mask of the tensor's size)
    return not (t.numel() == 0 or not bool(torch.isnan(t.sum()))) and bool(t.isnan().any())


def _all_finite(t: Tensor) -> bool:
    """Every entry finite. A finite sum proves it in one reduction (any NaN or infinite entry makes the sum
    non-finite); a sum that overflows falls back to the entrywise check."""
    return t.numel() == 0 or bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


# ---- exactness tolerances ----------------------------------------------------------------------------------------

#: Units in the last place of the computation's own dtype an exactness check allows: the rounding of every op's
#: result to that dtype, and ulp flips it propagates (measured: at most ~1 ulp of max-norm relative error for
#: fused and widened float16/bfloat16 models, WRN and ResNet-18 included).
STORAGE_ULPS = 8
#: Units in the last place of the accumulation dtype (float32 for 32-bit and narrower types, whose kernels
#: accumulate in float32; float64 for float64): a fused or widened layer sums its products in another order than
#: the parents' layers (measured: at most ~17 ulps over the torchvision zoo in float32, tests/test_zoo.py).
ACCUMULATION_ULPS = 64


def exactness_tolerance(dtype: torch.dtype) -> float:
    """The max-norm relative error a function-preservation check allows for a computation in ``dtype``.

    ``STORAGE_ULPS * eps(dtype) + ACCUMULATION_ULPS * eps(accumulation dtype)`` (8 and 64 ulps), where ``eps`` is
    ``torch.finfo(...).eps`` and the accumulation dtype is float64 for float64 (and complex128) and float32 for
    every narrower floating type: float64 1.6e-14, float32 8.6e-6, float16 7.8e-3, bfloat16 6.3e-2. Integer
    dtypes compute exactly: 0.
    """
    if not (dtype.is_floating_point or dtype.is_complex):
        return 0.0
    eps = torch.finfo(dtype).eps
    accumulation = max(torch.finfo(torch.float64).eps, min(eps, torch.finfo(torch.float32).eps))
    return STORAGE_ULPS * eps + ACCUMULATION_ULPS * accumulation


def computation_dtype(modules: Sequence[nn.Module], outputs: Any = ()) -> torch.dtype:
    """The least precise floating dtype among the parameters and buffers of ``modules`` and the tensor leaves of
    ``outputs`` (float32 when there is none): the precision an exactness check on their outputs must allow for."""
    dtypes = {t.dtype for m in modules for t in (*m.parameters(), *m.buffers())}
    dtypes |= {t.dtype for t in tree_flatten(outputs)[0] if isinstance(t, Tensor)}
    floating = [d for d in dtypes if d.is_floating_point or d.is_complex]
    return max(floating, key=lambda d: torch.finfo(d).eps, default=torch.float32)


# ---- non-finite values -------------------------------------------------------------------------------------------

_NORM_STATISTICS = ("running_mean", "running_var")


def _nonfinite(t: Tensor) -> str | None:
    """``"holds 3 NaN and 1 infinite value(s) (of 144)"`` for a tensor with non-finite entries, else None."""
    return nonfinite_tree(t)


def nonfinite_tree(values: Any) -> str | None:
    """Like :func:`_nonfinite`, summed over every tensor leaf of a pytree (Python floats included)."""
    tensors = [t for t in (as_tensor(leaf) for leaf in tree_flatten(values)[0]) if t is not None]
    floating = [t for t in tensors if (t.is_floating_point() or t.is_complex()) and not t.is_meta]
    if all(_all_finite(t) for t in floating):
        return None
    nan = sum(int(t.isnan().sum()) for t in floating)
    inf = sum(int(t.isinf().sum()) for t in floating)
    counts = " and ".join(part for part in (f"{nan} NaN" * bool(nan), f"{inf} infinite" * bool(inf)) if part)
    return f"holds {counts} value(s) (of {sum(t.numel() for t in floating)})"


def check_finite_state(module: nn.Module, where: str, *, owner: str = "") -> None:
    """Raise :class:`~growc.errors.GrowcDataError` for the first parameter or buffer of ``module`` that has no data
    (the meta device) or holds values the passes cannot work with: NaN or infinity in a parameter or in a
    normalization statistic (``running_mean``/``running_var``), NaN in any other floating buffer (an attention mask
    buffer may hold ``-inf``, that is what it means). The message starts with ``where`` (the pass) and names the
    tensor, prefixed by ``owner`` (e.g. ``"parent 1's "``). One ``isfinite`` per tensor: the passes run it once,
    never a forward."""
    tensors = [("parameter", name, t) for name, t in module.named_parameters()]
    tensors += [("buffer", name, t) for name, t in module.named_buffers()]
    for kind, name, t in tensors:
        if t.is_meta:
            raise GrowcDataError(
                f"{where}: {owner}{kind} '{name}' is on the meta device (no data): the passes need real weights; "
                "create the model on a real device, or give it weights first (model.to_empty(device='cpu'), then "
                "load_state_dict)"
            )
        if kind == "buffer" and name.rpartition(".")[2] not in _NORM_STATISTICS:
            if not _has_nan(t):
                continue
            problem = f"holds {int(t.isnan().sum())} NaN value(s) (of {t.numel()})"
        else:
            problem = _nonfinite(t)
        if problem is not None:
            raise GrowcDataError(
                f"{where}: {owner}{kind} '{name}' {problem}: growc cannot grow a model with non-finite weights or "
                "statistics (a diverged training run, or an overflow when converting it to a narrower dtype?)"
            )


def check_finite_values(values: Any, where: str, what: str) -> None:
    """Raise :class:`~growc.errors.GrowcDataError` when a tensor leaf of the pytree ``values`` is on the meta device
    or holds NaN or infinity; the message names the leaf by its path (``example input [0]``)."""
    leaves, _ = tree_flatten_with_path(values)
    single = isinstance(values, Tensor)
    for path, leaf in leaves:
        if not isinstance(leaf, Tensor):
            continue
        name = what if single else f"{what} {keystr(path)}"
        if leaf.is_meta:
            raise GrowcDataError(f"{where}: {name} is on the meta device (no data): the passes need real inputs")
        problem = _nonfinite(leaf)
        if problem is not None:
            raise GrowcDataError(f"{where}: {name} {problem}: the output check needs finite values")
