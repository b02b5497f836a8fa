"""growc's graph passes. Each is a pure function: a GraphModule (or model) in, a new GraphModule out.

* :func:`templatize` - weighted ops -> template-mixed ops over shared banks.
* :func:`materialize` - template-mixed ops -> plain ``nn.Conv*``/``nn.Linear`` with the generated weights.
* :func:`fuse` - n parents of one architecture -> one wider network (MixtureGrowth).
* :func:`widen` - one model -> a wider one (MixtureGrowth or the Net2Net/zero/random baselines).
* :func:`analyze_channels` - channel axes, shared tensors, stems, heads and coupled channel groups (an analysis).
"""

from .channels import ChannelAnalysis, ChannelGroup, analyze_channels
from .fuse import fuse
from .materialize import materialize
from .templatize import layer_matches, templatable_weights, templatize
from .widen import widen

__all__ = [
    "ChannelAnalysis",
    "ChannelGroup",
    "analyze_channels",
    "fuse",
    "layer_matches",
    "materialize",
    "templatable_weights",
    "templatize",
    "widen",
]
