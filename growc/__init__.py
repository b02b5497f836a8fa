"""growc: a growth compiler for neural networks (MixtureGrowth over torch.fx graphs).

Public API:

* :func:`trace` - torch.fx tracing with leaf fallbacks; :func:`propagate_shapes` - fake-tensor shape analysis.
* :func:`templatize`, :func:`materialize` - the passes (also in :mod:`growc.passes`); :class:`Pipeline`.
* :class:`TemplateBank` and the mixed layers; :func:`param_groups`, :func:`param_roles`.
"""

from .analysis import TensorInfo, max_abs_rel_error, propagate_shapes
from .errors import GrowcConfigError, GrowcError, GrowcPassError, GrowcTraceError
from .ops import (
    MixedConv1d,
    MixedConv2d,
    MixedConv3d,
    MixedLinear,
    MixedWeight,
    TemplateBank,
    param_groups,
    param_roles,
)
from .passes import analyze_channels, fuse, materialize, templatize, widen
from .pipeline import Pipeline
from .trace import trace

__version__ = "0.1.0"

__all__ = [
    "GrowcConfigError",
    "GrowcError",
    "GrowcPassError",
    "GrowcTraceError",
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
    "fuse",
    "materialize",
    "max_abs_rel_error",
    "param_groups",
    "param_roles",
    "propagate_shapes",
    "templatize",
    "trace",
    "widen",
]
