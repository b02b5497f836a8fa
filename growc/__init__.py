"""growc: a growth compiler for neural networks (MixtureGrowth over torch.fx graphs).

Public API:

* :func:`trace` - torch.fx tracing with leaf fallbacks; :func:`propagate_shapes` - fake-tensor shape analysis;
  :func:`exactness_tolerance` - the bound every function-preservation check allows for a dtype.
* :func:`templatize`, :func:`materialize` - the passes (also in :mod:`growc.passes`); :class:`Pipeline`.
* :class:`TemplateBank` and the mixed layers; :func:`param_groups`, :func:`param_roles`.
* Growth specs: :func:`load_spec` (YAML -> :class:`GrowthSpec`), :func:`check_spec`, :func:`compile_spec`,
  :func:`grow` (writes an artifact folder), :func:`load` (rebuilds it without unpickling), :func:`spec_json_schema`.
"""

from growc.compile.build import GrowResult, check_spec, compile_spec, grow, load
from growc.errors import (
    GrowcConfigError,
    GrowcDataError,
    GrowcError,
    GrowcExistsError,
    GrowcIOError,
    GrowcPassError,
    GrowcTraceError,
)
from growc.fx.analysis import TensorInfo, exactness_tolerance, max_abs_rel_error, propagate_shapes
from growc.fx.pipeline import Pipeline
from growc.fx.registry import op_rules, register_op
from growc.fx.trace import trace
from growc.passes import analyze_channels, fuse, materialize, templatize, widen
from growc.runtime.bank import TemplateBank
from growc.runtime.groups import param_groups, param_roles
from growc.runtime.layers import MixedConv1d, MixedConv2d, MixedConv3d, MixedLinear, MixedWeight
from growc.spec.document import GrowcSpecError
from growc.spec.growth import GrowthSpec, load_spec, spec_json_schema
from growc.version import __version__

__all__ = [
    "GrowResult",
    "GrowcConfigError",
    "GrowcDataError",
    "GrowcError",
    "GrowcExistsError",
    "GrowcIOError",
    "GrowcPassError",
    "GrowcSpecError",
    "GrowcTraceError",
    "GrowthSpec",
    "MixedConv1d",
    "MixedConv2d",
    "MixedConv3d",
    "MixedLinear",
    "MixedWeight",
    "Pipeline",
    "TemplateBank",
    "TensorInfo",
    "__version__",
    "analyze_channels",
    "check_spec",
    "compile_spec",
    "exactness_tolerance",
    "fuse",
    "grow",
    "load",
    "load_spec",
    "materialize",
    "max_abs_rel_error",
    "op_rules",
    "param_groups",
    "param_roles",
    "propagate_shapes",
    "register_op",
    "spec_json_schema",
    "templatize",
    "trace",
    "widen",
]
