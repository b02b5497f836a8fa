"""Capture by ``torch.export``: an ATen-level ``fx.GraphModule`` that growc's passes read like any fx graph.

:func:`export_graph` runs ``torch.export.export(model, example_inputs, strict=False)`` (the training IR: ATen ops
such as ``aten.linear``, ``aten.conv2d``, ``aten.batch_norm``, ``aten.scaled_dot_product_attention``), unlifts it
into a GraphModule whose parameters and buffers are attributes at their original paths (the model's own tensors,
not copies), and :func:`adopt` normalizes it:

* the input guard call (``_guards_fn``) is removed: the report lists every dim export specialised instead;
* an ATen op that *is* a standard module's forward becomes a ``call_module`` of that module again: ``aten.linear``
  → ``nn.Linear``, ``aten.conv1d/2d/3d``/``convolution`` → ``nn.ConvNd``/``nn.ConvTransposeNd``,
  ``aten.batch_norm`` → ``nn.BatchNormNd``, ``aten.layer_norm``/``group_norm``/``rms_norm`` → ``nn.LayerNorm``/
  ``nn.GroupNorm``/``nn.RMSNorm``, ``aten.embedding`` → ``nn.Embedding``, ``aten.dropout`` and its variants →
  ``nn.Dropout``/``nn.Dropout{1,2,3}d``/``nn.AlphaDropout``/``nn.FeatureAlphaDropout``. The module is the model's
  own when its parameters are the op's (else one is built around the op's parameters, from its arguments), at the
  parameters' path. So every pass reads the same module calls as under fx, and the modes are right again:
  dropout and batch norm follow ``.train()``/``.eval()``, running statistics update in training mode;
* a functional ``aten.batch_norm`` left (its parameters are not one module's) reads ``training`` from a
  :class:`~growc.runtime.modes.ModeValue` node;
* a device baked into an op's arguments (``aten.arange(..., device=cpu)``, ``aten.to.device``) becomes the device
  of the first tensor input, read at run time: the graph moves to CUDA with its model.

The model is exported in eval mode (and put back in its mode): Python branches on ``self.training`` take their
eval side and are baked; the report says so. An attention dropout written as ``dropout_p=p if self.training else
0.0`` is baked to 0 that way (ops growc makes mode-aware are listed in the report). Every other ATen op stays as
it is: the op registry (:mod:`growc.fx.registry`) has rules for the common ones; any other takes fuse's exact
per-parent fallback and is listed by name (``unregistered_ops``).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn

from growc.errors import GrowcConfigError, GrowcTraceError
from growc.fx.graphs import graph_module
from growc.fx.registry import Opaque, rule_for
from growc.runtime.modes import InputGuard, ModeValue

__all__ = [
    "Dynamic",
    "adopt",
    "captured_by_export",
    "check_dynamic",
    "default_dynamic",
    "export_graph",
    "is_aten_graph",
    "one_line",
    "source_line",
]

_ATEN = torch.ops.aten
Dynamic = bool | Sequence[Sequence[int] | None]
"""``True`` (batch, and sequence for integer inputs), ``False`` (static) or per input the dims to make dynamic."""


def is_aten_graph(gm: fx.GraphModule) -> bool:
    """True when ``gm``'s graph calls ATen operator overloads (a graph from ``torch.export``)."""
    return any(n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) for n in gm.graph.nodes)


def captured_by_export(gm: nn.Module) -> bool:
    """True for a GraphModule :func:`growc.trace` captured with ``torch.export`` (or a pass made from one)."""
    meta = getattr(gm, "meta", None)
    return isinstance(meta, dict) and meta.get("growc", {}).get("trace", {}).get("capture") == "export"


def default_dynamic(example_inputs: Sequence[Any]) -> list[list[int] | None]:
    """The dims :func:`export_graph` marks dynamic by default: the batch dim of every tensor input, and the
    sequence dim (1) of integer inputs of rank >= 2 (token ids, attention masks)."""
    dims: list[list[int] | None] = []
    for x in example_inputs:
        if not isinstance(x, Tensor) or x.ndim == 0:
            dims.append(None)
        elif not x.is_floating_point() and not x.is_complex() and x.ndim >= 2:
            dims.append([0, 1])
        else:
            dims.append([0])
    return dims


def check_dynamic(dynamic: Any) -> Dynamic:
    """``dynamic`` when it is ``True``, ``False`` or a list with, per input, ``None`` or a list of dim indices;
    else :class:`~growc.errors.GrowcConfigError`."""
    if isinstance(dynamic, bool):
        return dynamic
    ok = isinstance(dynamic, (list, tuple)) and all(
        d is None or (isinstance(d, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in d))
        for d in dynamic
    )
    if not ok:
        raise GrowcConfigError(
            f"dynamic must be true, false or a list with, per input, null or a list of dims (e.g. [[0], [0, 1]]), "
            f"got {dynamic!r}"
        )
    return dynamic


def _dynamic_spec(example_inputs: Sequence[Any], dynamic: Dynamic) -> tuple[list[list[int] | None], Any]:
    dynamic = check_dynamic(dynamic)
    if dynamic is False:
        return [None] * len(example_inputs), None
    wanted = default_dynamic(example_inputs) if dynamic is True else [list(d) if d else None for d in dynamic]
    if len(wanted) != len(example_inputs):
        raise GrowcConfigError(f"dynamic names dims for {len(wanted)} inputs, the model takes {len(example_inputs)}")
    for i, (x, dims) in enumerate(zip(example_inputs, wanted, strict=True)):
        rank = x.ndim if isinstance(x, Tensor) else 0
        bad = [d for d in dims or () if not -rank <= d < rank]
        if bad:
            raise GrowcConfigError(f"dynamic: input {i} has {rank} dims, so it has no dim {bad[0]}")
    spec = []
    for x, dims in zip(example_inputs, wanted, strict=True):
        if dims and isinstance(x, Tensor):
            spec.append({d % x.ndim: torch.export.Dim.AUTO for d in dims})
        else:
            spec.append(None)
    return wanted, tuple(spec)


def export_graph(
    model: nn.Module, example_inputs: Sequence[Any], *, dynamic: Dynamic = True
) -> tuple[fx.GraphModule, dict[str, Any]]:
    """Capture ``model`` with ``torch.export`` (non-strict, in eval mode) and :func:`adopt` the graph.

    Args:
        model: any ``nn.Module``; left in its mode, not modified.
        example_inputs: positional inputs.
        dynamic: ``True`` (default: :func:`default_dynamic`), ``False`` (every dim static) or, per input, the dims
            to mark dynamic (``None`` for none).

    Returns:
        The GraphModule (in ``model``'s mode) and the capture report: ``seconds``, ``dynamic`` (per input, the dims
        that stayed dynamic), ``specialised`` (dims asked to be dynamic that export fixed, with their size),
        ``raised`` (ATen ops turned back into modules), ``mode_aware``, ``unregistered_ops`` and ``notes``.

    Raises:
        GrowcTraceError: ``torch.export`` failed; the message names the error and the model's source line.
    """
    start = time.perf_counter()
    wanted, spec = _dynamic_spec(example_inputs, dynamic)
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, tuple(example_inputs), dynamic_shapes=spec, strict=False)
    except Exception as error:  # torch.export raises many types: one located error, the cause chained
        where = source_line(error)
        raise GrowcTraceError(
            f"export: {one_line(error)}" + (f" at {where}" if where else "") + _hint(error), construct=one_line(error)
        ) from error
    finally:
        model.train(was_training)
    gm, report = adopt(program.module(), model, captured_mode=False)
    gm.train(was_training)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    kept, fixed = [], []
    for i, (node, dims) in enumerate(zip(placeholders, wanted, strict=False)):
        val = node.meta.get("val")
        shape = tuple(getattr(val, "shape", ()))
        dynamic_dims = [d for d, s in enumerate(shape) if _symbolic(s)]
        kept.append(dynamic_dims or None)
        for d in dims or ():
            if d % max(len(shape), 1) not in dynamic_dims and shape:
                fixed.append({"input": i, "name": node.name, "dim": d % len(shape), "size": int(shape[d % len(shape)])})
    report = {
        "seconds": round(time.perf_counter() - start, 3),
        "dynamic": kept,
        "specialised": fixed,
        **report,
        "notes": [
            "captured in eval mode: Python branches on self.training took their eval side (dropout and batch norm "
            "ops were made mode-aware; see 'raised' and 'mode_aware')",
            *(
                [
                    "dims export specialised (the model runs only at these sizes): "
                    + ", ".join(f"input {f['input']} dim {f['dim']} = {f['size']}" for f in fixed)
                ]
                if fixed
                else []
            ),
        ],
    }
    return gm, report


def _hint(error: BaseException) -> str:
    text = str(error)
    if "Cache" in text and ("not a known type" in text or "pytree" in text.lower()):
        return (
            ". Hint: the output holds a cache object (a Hugging Face encoder-decoder's past key values): build the "
            "model with use_cache=False"
        )
    if "not a known type" in text or "register it as a pytree" in text.lower():
        return (
            ". Hint: return tensors, tuples, lists, dicts or a class registered as a pytree "
            "(torch.utils._pytree.register_dataclass)"
        )
    return ""


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 400 characters)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:400]


_OWN_CODE = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))


def source_line(error: BaseException) -> str | None:
    """``file:line: code`` of the innermost frame of ``error``'s traceback (or of an error it chains) outside
    torch and growc: the model's code that failed; None when there is none."""
    found = None
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        for frame in traceback.extract_tb(error.__traceback__):
            own = frame.filename.startswith(_OWN_CODE) or frame.filename.startswith("<")  # exec'd/generated code
            if not own and "importlib" not in frame.filename:
                found = frame
        if found is not None:
            break
        error = error.__cause__ or error.__context__
    if found is None:
        return None
    return f"{found.filename}:{found.lineno}: {(found.line or '').strip()}"


def _symbolic(size: Any) -> bool:
    """A dim that stayed symbolic (a SymInt export specialised has a constant value)."""
    return isinstance(size, torch.SymInt) and size.node.maybe_as_int() is None


# ---- adoption: an unlifted export graph -> growc's module-level form ---------------------------------------------


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _rank(node: Any) -> int | None:
    val = _val(node)
    return val.ndim if isinstance(val, Tensor) else None


def _tensor_attr(gm: nn.Module, node: Any) -> Tensor | None:
    """The tensor a ``get_attr`` node reads (None for any other argument; a missing optional is ``None`` too)."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    owner, _, attr = str(node.target).rpartition(".")
    value = getattr(gm.get_submodule(owner), attr, None)
    return value if isinstance(value, Tensor) else None


def _ints(value: Any, n: int) -> tuple[int, ...] | None:
    if isinstance(value, int):
        return (value,) * n
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return tuple(value) if len(value) == n else (tuple(value) * n if len(value) == 1 else None)
    return None


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _conv(node: fx.Node, w: Tensor, b: Tensor | None, transposed: bool, order: str) -> nn.Module | None:
    """A conv module for ``node``'s arguments; ``order`` names the positions after the bias."""
    d = w.ndim - 2
    names = {"s": "stride", "p": "padding", "o": "output_padding", "d": "dilation", "g": "groups", "t": "transposed"}
    defaults = {"s": 1, "p": 0, "o": 0, "d": 1, "g": 1, "t": False}
    got = dict(defaults, t=transposed)  # the conv_transpose ops have no `transposed` argument
    got.update({key: _arg(node, 3 + i, names[key], defaults[key]) for i, key in enumerate(order)})
    groups = got["g"]
    stride, dilation, output_padding = _ints(got["s"], d), _ints(got["d"], d), _ints(got["o"], d)
    padding = got["p"] if isinstance(got["p"], str) else _ints(got["p"], d)
    if not isinstance(groups, int) or None in (stride, dilation, output_padding, padding) or got["t"] != transposed:
        return None
    kernel = tuple(w.shape[2:])
    with torch.device("meta"):
        if transposed:
            module = _CONV_T[d](
                w.shape[0], w.shape[1] * groups, kernel, stride, padding, output_padding, groups, b is not None,
                dilation,
            )  # fmt: skip
        else:
            module = _CONV[d](w.shape[1] * groups, w.shape[0], kernel, stride, padding, dilation, groups, b is not None)
    return module


_Built = tuple[nn.Module, dict[str, Tensor | None]] | None


def _linear(node: fx.Node, attrs: list[Tensor | None]) -> _Built:
    w, b = attrs[1], attrs[2]
    with torch.device("meta"):
        return nn.Linear(w.shape[1], w.shape[0], bias=b is not None), {"weight": w, "bias": b}


def _conv_builder(transposed: bool, order: str) -> Callable[[fx.Node, list[Tensor | None]], _Built]:
    def build(node: fx.Node, attrs: list[Tensor | None]) -> _Built:
        flag = bool(_arg(node, 6, "transposed", False)) if "t" in order else transposed
        module = _conv(node, attrs[1], attrs[2], flag, order)
        return None if module is None else (module, {"weight": attrs[1], "bias": attrs[2]})

    return build


def _layer_norm(node: fx.Node, attrs: list[Tensor | None]) -> _Built:
    shape, eps = _arg(node, 1, "normalized_shape", None), _arg(node, 4, "eps", 1e-5)
    w, b = attrs[2], attrs[3]
    if not isinstance(eps, float) or _ints(shape, len(shape or ())) is None or (w is None and b is not None):
        return None
    with torch.device("meta"):
        module = nn.LayerNorm(tuple(shape), eps, elementwise_affine=w is not None, bias=b is not None)
    return module, {"weight": w, "bias": b}


def _group_norm(node: fx.Node, attrs: list[Tensor | None]) -> _Built:
    groups, eps, w, b = _arg(node, 1, "num_groups", None), _arg(node, 4, "eps", 1e-5), attrs[2], attrs[3]
    channels = _val(node.args[0]).shape[1] if _rank(node.args[0]) else None
    if not isinstance(groups, int) or not isinstance(eps, float) or (w is None) != (b is None):
        return None
    if not isinstance(channels, int):
        return None
    with torch.device("meta"):
        module = nn.GroupNorm(groups, channels, eps, affine=w is not None)
    return module, {"weight": w, "bias": b}


def _rms_norm(node: fx.Node, attrs: list[Tensor | None]) -> _Built:
    shape, eps, w = _arg(node, 1, "normalized_shape", None), _arg(node, 3, "eps", None), attrs[2]
    if _ints(shape, len(shape or ())) is None or not (eps is None or isinstance(eps, float)):
        return None
    with torch.device("meta"):
        module = nn.RMSNorm(tuple(shape), eps, elementwise_affine=w is not None)
    return module, {"weight": w}


def _embedding(node: fx.Node, attrs: list[Tensor | None]) -> _Built:
    w = attrs[0]
    padding_idx = _arg(node, 2, "padding_idx", -1)
    scale, sparse = _arg(node, 3, "scale_grad_by_freq", False), _arg(node, 4, "sparse", False)
    if w is None or len(node.args) < 2:
        return None
    if not isinstance(padding_idx, int) or not isinstance(scale, bool) or not isinstance(sparse, bool):
        return None
    with torch.device("meta"):
        module = nn.Embedding(
            w.shape[0], w.shape[1], padding_idx if padding_idx >= 0 else None, scale_grad_by_freq=scale, sparse=sparse
        )
    return module, {"weight": w}


def _batch_norm_builder(node: fx.Node, attrs: list[Tensor | None]) -> _Built:
    return _batch_norm(node, attrs[1], attrs[2], attrs[3], attrs[4])


#: op -> (builder, positions that must be get_attr tensors, positions that may also be absent or None)
_BUILDERS: dict[Any, tuple[Callable[[fx.Node, list[Tensor | None]], _Built], tuple[int, ...], tuple[int, ...]]] = {
    _ATEN.linear.default: (_linear, (1,), (2,)),
    **{op: (_conv_builder(False, "spdg"), (1,), (2,)) for op in (
        _ATEN.conv1d.default, _ATEN.conv2d.default, _ATEN.conv3d.default, _ATEN.conv1d.padding,
        _ATEN.conv2d.padding, _ATEN.conv3d.padding,
    )},
    **{op: (_conv_builder(True, "spogd"), (1,), (2,)) for op in (
        _ATEN.conv_transpose1d.default, _ATEN.conv_transpose2d.input, _ATEN.conv_transpose3d.input,
    )},
    _ATEN.convolution.default: (_conv_builder(False, "spdtog"), (1,), (2,)),
    _ATEN.batch_norm.default: (_batch_norm_builder, (), (1, 2, 3, 4)),
    _ATEN.layer_norm.default: (_layer_norm, (), (2, 3)),
    _ATEN.group_norm.default: (_group_norm, (), (2, 3)),
    _ATEN.rms_norm.default: (_rms_norm, (), (2,)),
    _ATEN.embedding.default: (_embedding, (0,), ()),
}  # fmt: skip


def _build(node: fx.Node, gm: nn.Module) -> _Built:
    """The standard module ``node`` is the forward of, built around its parameters, and those parameters by
    name; None when ``node`` is not such an op (or its parameters are not attributes)."""
    entry = _BUILDERS.get(node.target)
    if entry is None:
        return None
    build, required, optional = entry
    attrs = [_tensor_attr(gm, a) for a in node.args] + [None] * 8
    if any(attrs[i] is None for i in required):
        return None
    for i in optional:  # an optional tensor is an attribute, or absent
        if len(node.args) > i and node.args[i] is not None and attrs[i] is None:
            return None
    return build(node, attrs)


def _batch_norm(
    node: fx.Node, w: Tensor | None, b: Tensor | None, mean: Tensor | None, var: Tensor | None
) -> tuple[nn.Module, dict[str, Tensor | None]] | None:
    training, momentum, eps = _arg(node, 5, "training", None), _arg(node, 6, "momentum", 0.1), _arg(node, 7, "eps", 0)
    rank = _rank(node.args[0])
    track = mean is not None and var is not None
    if (
        rank not in _BATCH_NORM
        or (w is None) != (b is None)
        or (mean is None) != (var is None)
        or not isinstance(eps, float)
        or not isinstance(momentum, float)
        or training is not (not track)  # eval capture: batch statistics only without running ones
    ):
        return None
    features = next(t for t in (w, mean) if t is not None).shape[0] if (w is not None or track) else None
    if features is None:
        return None
    with torch.device("meta"):
        module = _BATCH_NORM[rank](features, eps, momentum, affine=w is not None, track_running_stats=track)
    return module, {"weight": w, "bias": b, "running_mean": mean, "running_var": var}


def _feature_dropout(rank: int, p: float, inplace: bool) -> nn.Module:
    return (nn.Dropout1d if rank in (2, 3) else nn.Dropout2d if rank == 4 else nn.Dropout3d)(p, inplace)


_DROPOUT: dict[Any, Callable[[int, float], nn.Module]] = {}
for _inplace, _suffix in ((False, ""), (True, "_")):
    _DROPOUT.update(
        {
            getattr(_ATEN, f"dropout{_suffix}").default: lambda rank, p, i=_inplace: nn.Dropout(p, i),
            getattr(_ATEN, f"alpha_dropout{_suffix}").default: lambda rank, p, i=_inplace: nn.AlphaDropout(p, i),
            getattr(_ATEN, f"feature_alpha_dropout{_suffix}").default: (
                lambda rank, p, i=_inplace: nn.FeatureAlphaDropout(p, i)
            ),
            getattr(_ATEN, f"feature_dropout{_suffix}").default: (
                lambda rank, p, i=_inplace: _feature_dropout(rank, p, i)
            ),
        }
    )
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _original(model: nn.Module | None, path: str, built: nn.Module, params: dict[str, Tensor | None]) -> nn.Module:
    """The model's own module at ``path`` when it is the op (same type, same configuration, the op's tensors),
    else ``built``."""
    own = _submodule(model, path) if model is not None else None
    if own is None:
        return built
    if type(own) is not type(built) or any(getattr(own, h, None) for h in _HOOKS):
        return built
    if any(getattr(own, name, None) is not tensor for name, tensor in params.items()):
        return built
    if isinstance(own, nn.modules.batchnorm._BatchNorm):  # momentum None (cumulative) reads as 0.0 in eval
        return (
            own
            if (own.eps, own.affine, own.track_running_stats) == (built.eps, built.affine, built.track_running_stats)
            else built
        )
    return own if own.extra_repr() == built.extra_repr() else built


def _container_path(node: fx.Node) -> str | None:
    """The common owner of the op's parameter attributes (``a.b.weight`` and ``a.b.bias`` -> ``a.b``)."""
    owners = set()
    for arg in node.all_input_nodes:
        if arg.op == "get_attr":
            owners.add(str(arg.target).rpartition(".")[0])
    return owners.pop() if len(owners) == 1 else None


def _install(root: nn.Module, path: str, module: nn.Module) -> None:
    owner_path, _, name = path.rpartition(".")
    owner = root.get_submodule(owner_path)
    owner._modules[name] = module  # replaces the unlifted container (same tensors, now a real module)


def _unique_path(root: nn.Module, base: str) -> str:
    container = root.get_submodule("growc_modes") if hasattr(root, "growc_modes") else None
    if container is None:
        container = nn.Module()
        root.add_module("growc_modes", container)
    name, i = base, 1
    while hasattr(container, name):
        name, i = f"{base}_{i}", i + 1
    return f"growc_modes.{name}"


def _submodule(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _stack_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, _ = list(stack.values())[-1]
    return path or None


class _Adopter:
    def __init__(self, gm: fx.GraphModule, model: nn.Module | None, captured_mode: bool | None) -> None:
        self.gm = gm
        self.model = model
        self.captured_mode = captured_mode
        self.always_on: list[str] = []
        self.static: dict[str, Any] = {}
        self.graph = gm.graph
        self.raised: list[dict[str, str]] = []
        self.mode_aware: list[str] = []
        self.containers: dict[str, str] = {}  # container path -> the signature of the module raised there
        self.baked: set[bool] = set()  # the training flags export baked into mode-dependent ops
        self.devices = 0  # ops whose baked device now follows the inputs

    def run(self) -> None:
        for node in list(self.graph.nodes):
            if node.op == "call_module" and str(node.target) == "_guards_fn":
                self.graph.erase_node(node)
            elif node.op == "call_function" and node.target in _DROPOUT:
                self.dropout(node)
            elif node.op == "call_function":
                self.module_op(node)
        if hasattr(self.gm, "_guards_fn"):
            delattr(self.gm, "_guards_fn")
        for node in list(self.graph.nodes):
            if node.op == "get_attr" and not node.users:
                self.graph.erase_node(node)
        for node in self.graph.nodes:
            if node.op == "call_function" and node.target in (_ATEN.batch_norm.default, _ATEN.instance_norm.default):
                self.functional_batch_norm(node)
        self.portable_devices()
        self.input_guard()

    def replace(self, node: fx.Node, target: str, inputs: tuple[Any, ...], label: str) -> None:
        with self.graph.inserting_before(node):
            new = self.graph.call_module(target, inputs)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)
        new.name = node.name if node.name not in {n.name for n in self.graph.nodes} else new.name
        self.raised.append({"node": new.name, "op": str(node.target), "module": label, "target": target})

    def dropout(self, node: fx.Node) -> None:
        p, train = _arg(node, 1, "p", 0.5), _arg(node, 2, "train", False)
        if not isinstance(p, float) or not isinstance(train, bool) or _rank(node.args[0]) is None:
            return
        if train and self.captured_mode is False:  # on in an eval-mode capture: always on (Monte Carlo dropout)
            self.always_on.append(node.name)
            return
        self.baked.add(train)
        module = _DROPOUT[node.target](_rank(node.args[0]), p)
        path = _stack_path(node)
        own = _submodule(self.model, path) if self.model is not None and path else None
        standard = own is not None and type(own) is type(module) and (own.p, own.inplace) == (p, module.inplace)
        if standard and not any(getattr(own, h) for h in _HOOKS) and _submodule(self.gm, path) in (None, own):
            if _submodule(self.gm, path) is None:
                self.gm.add_submodule(path, own)
            self.replace(node, path, (node.args[0],), type(own).__name__)
            return
        stack_type = str(list(node.meta.get("nn_module_stack", {}).values())[-1][1]) if path else ""
        if path and _submodule(self.gm, path) is None and stack_type.endswith(type(module).__name__):
            self.gm.add_submodule(path, module)  # the dropout module's own path (a built one, same config)
            self.replace(node, path, (node.args[0],), type(module).__name__)
            return
        target = _unique_path(self.gm, node.name)
        self.gm.get_submodule("growc_modes").add_module(target.rpartition(".")[2], module)
        self.replace(node, target, (node.args[0],), type(module).__name__)

    def own_at_stack(self, node: fx.Node, module: nn.Module, wanted: dict[str, Tensor]) -> bool:
        """Raise ``node`` to the model's own module at the path its call came from (``nn_module_stack``). With tied
        weights the unlifted graph names a tensor by one of its paths only (an embedding's table under the LM
        head's name): the call's own path keeps the module where the model has it."""
        stack = _stack_path(node)
        if self.model is None or not stack:
            return False
        own = _original(self.model, stack, module, wanted)
        if own is module:
            return False
        present = _submodule(self.gm, stack)
        if present is None:
            self.gm.add_submodule(stack, own)
        elif present is not own:
            held = {**present._parameters, **present._buffers}
            if type(present) is not nn.Module or present._modules:
                return False
            if any(v is not None and getattr(own, k, None) is not v for k, v in held.items()):
                return False
            _install(self.gm, stack, own)
        self.containers[stack] = repr(module)
        self.replace(node, stack, (self.input_of(node),), type(own).__name__)
        return True

    def module_op(self, node: fx.Node) -> None:
        built = _build(node, self.gm)
        if built is None:
            return
        module, params = built
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            self.baked.add(False)  # raised only when export baked eval mode (running statistics used)
        if self.own_at_stack(node, module, {k: v for k, v in params.items() if v is not None}):
            return
        path = _container_path(node)
        if not path:
            return
        container = self.gm.get_submodule(path)
        held = {**container._parameters, **container._buffers}
        wanted = {k: v for k, v in params.items() if v is not None}
        extra = {k for k, v in held.items() if v is not None and k not in wanted and k != "num_batches_tracked"}
        if any(held.get(k) is not v for k, v in wanted.items()) or extra or container._modules:
            return
        if type(container) is not nn.Module:  # raised already (a module called twice): the same module only
            if self.containers.get(path) != repr(module):
                return
            self.replace(node, path, (self.input_of(node),), type(container).__name__)
            return
        module = _original(self.model, path, module, wanted)
        if module is built[0]:
            for name, tensor in wanted.items():
                if isinstance(tensor, nn.Parameter):
                    module._parameters[name] = tensor
                else:
                    module._buffers[name] = tensor
            if "num_batches_tracked" in held and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module._buffers["num_batches_tracked"] = held["num_batches_tracked"]
            own = _submodule(self.model, _stack_path(node) or path) if self.model is not None else None
            if isinstance(own, nn.modules.batchnorm._BatchNorm) and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = own.momentum  # None (a cumulative average) reads as 0.0 in an eval graph
        self.containers[path] = repr(built[0])
        _install(self.gm, path, module)
        self.replace(node, path, (self.input_of(node),), type(module).__name__)

    @staticmethod
    def input_of(node: fx.Node) -> Any:
        return node.args[1] if node.target is _ATEN.embedding.default else node.args[0]

    def input_guard(self) -> None:
        """Replace export's guard call with a :class:`~growc.runtime.modes.InputGuard` of the static dims and baked
        scalars (a call at other sizes raises instead of computing something else)."""
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        expected: list[Any] = []
        for node in placeholders:
            val = node.meta.get("val")
            if isinstance(val, Tensor):
                fixed = {d: int(s) for d, s in enumerate(val.shape) if not _symbolic(s)}
                expected.append(fixed or None)
            elif isinstance(val, (bool, int, float, str)) or (val is None and "val" in node.meta):
                expected.append(("value", val))
            else:
                expected.append(None)
        self.static = {
            node.name: e for node, e in zip(placeholders, expected, strict=True) if isinstance(e, tuple)
        }  # baked scalars, for the report
        if not placeholders or all(e is None for e in expected):
            return
        self.gm.add_module("growc_input_guard", InputGuard([n.name for n in placeholders], expected))
        with self.graph.inserting_after(placeholders[-1]):
            self.graph.call_module("growc_input_guard", tuple(placeholders))

    def portable_devices(self) -> None:
        """Devices export baked into ops (``aten.arange(..., device=cpu)``, ``aten.to.device``) become the device of
        the first tensor input, read at run time, so the graph follows the model to another device."""
        first = next(
            (n for n in self.graph.nodes if n.op == "placeholder" and isinstance(n.meta.get("val"), Tensor)), None
        )
        users = [
            n
            for n in self.graph.nodes
            if n.op == "call_function" and any(isinstance(a, torch.device) for a in (*n.args, *n.kwargs.values()))
        ]
        if first is None or not users:
            return
        last_input = [n for n in self.graph.nodes if n.op == "placeholder"][-1]
        with self.graph.inserting_after(last_input):
            device = self.graph.call_function(getattr, (first, "device"))
        for node in users:
            node.args = tuple(device if isinstance(a, torch.device) else a for a in node.args)
            node.kwargs = {k: device if isinstance(v, torch.device) else v for k, v in node.kwargs.items()}
        self.devices = len(users)

    def functional_batch_norm(self, node: fx.Node) -> None:
        """A batch or instance norm with running statistics left functional (its attributes are not one module's,
        or ``aten.instance_norm``): its ``training``/``use_input_stats`` flag follows the mode (a graph exported in
        training mode keeps its ``num_batches_tracked`` increment)."""
        training = _arg(node, 5, "training", None)
        if not isinstance(training, bool) or len(node.args) < 5 or node.args[3] is None:
            return
        self.baked.add(training)
        target = _unique_path(self.gm, f"{node.name}_training")
        self.gm.get_submodule("growc_modes").add_module(target.rpartition(".")[2], ModeValue(True, False))
        with self.graph.inserting_before(node):
            flag = self.graph.call_module(target, ())
        args = list(node.args)
        args[5] = flag
        node.args = tuple(args)
        self.mode_aware.append(node.name)


def adopt(
    gm: fx.GraphModule, model: nn.Module | None = None, *, captured_mode: bool | None = None
) -> tuple[fx.GraphModule, dict[str, Any]]:
    """Normalize an unlifted ``torch.export`` GraphModule (``ExportedProgram.module()``) in place and return it
    as a plain GraphModule (see the module docstring), with its report.

    ``model``, the exported module, lets standard modules be its own (hooks-free, same configuration and tensors);
    without it, they are built around the graph's tensors from the op's arguments. The result starts in the mode
    export baked into its dropout and batch norm ops (an unlifted module's ``training`` flag does not say it).
    ``captured_mode`` is the mode the model was exported in, when known (``False``: eval): a dropout that stayed
    on in an eval-mode capture is on whatever the mode (``F.dropout(x, p, training=True)``) and is left so.
    """
    adopter = _Adopter(gm, model, captured_mode)
    adopter.run()
    adopter.graph.lint()
    out = graph_module(gm, adopter.graph, type(model).__name__ if model is not None else "Exported")
    if len(adopter.baked) == 1:  # the mode the graph computed in: the adopted module starts in it
        out.train(adopter.baked.pop())
    unregistered = sorted(
        {
            str(n.target)
            for n in out.graph.nodes
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and _unknown(n)
        }
    )
    report = {
        "raised": adopter.raised,
        "mode_aware": adopter.mode_aware,
        "device_portable_ops": adopter.devices,
        "always_on_dropout": adopter.always_on,
        "baked_inputs": {name: value for name, (_, value) in adopter.static.items()},
        "unregistered_ops": unregistered,
    }
    return out, report


def _unknown(node: fx.Node) -> bool:
    """An op without a rule that computes tensors (``aten.sym_size`` and other size reads are not listed)."""
    values = node.meta.get("val")
    values = values if isinstance(values, (list, tuple)) else [values]
    return isinstance(rule_for(node), Opaque) and any(isinstance(v, Tensor) for v in values)
