"""The model zoo: growc's own architectures, the safe model resolver and the local data sets.

``growc.models:CNN1d``-style references in specs and recipes name the architectures exported here.
"""

from growc.models.architectures import CNN1d, ResNet, WideResNet
from growc.models.zoo import ModelBuildError, default_input_shape, no_downloads, resolve_model

__all__ = ["CNN1d", "ModelBuildError", "ResNet", "WideResNet", "default_input_shape", "no_downloads", "resolve_model"]
