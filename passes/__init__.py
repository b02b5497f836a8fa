"""growc's graph passes. Each is a pure function: a GraphModule (or model) in, a new GraphModule out.

* :func:`templatize` - weighted ops -> template-mixed ops over shared banks.
* :func:`materialize` - template-mixed ops -> plain ``nn.Conv*``/``nn.Linear`` with the generated weights.
* :func:`fuse` - n parents of one architecture -> one wider network (MixtureGrowth).
"""

from .fuse import fuse
from .materialize import materialize
from .templatize import templatize

__all__ = ["fuse", "materialize", "templatize"]
