"""growc's built-in models and model references.

A model reference is one of:

* a built-in name: ``wrn-D-K`` (pre-activation Wide ResNet for 32x32 inputs, depth D = 6n+4, width factor K, as
  in the MixtureGrowth reference code; e.g. ``wrn-28-10``, ``wrn-16-4``) or ``cnn1d-W`` (a small 1-D CNN of width
  W for length-40 sequences);
* ``resnet-D-W``: ImageNet ResNet-D (18, 34, 50, 101, 152) with every channel count scaled by W (e.g.
  ``resnet-50-0.5``, the half-width parent of the paper's ImageNet experiment);
* ``torchvision:NAME`` (``torchvision.models.get_model(NAME, weights=None)``);
* ``package.module:factory`` (any importable callable returning an ``nn.Module``).

Every built-in knows a default input shape (:func:`default_input_shape`), so ``growc templatize wrn-16-4`` needs
no ``--input-shape``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from growc.errors import GrowcConfigError, GrowcError

__all__ = ["CNN1d", "ModelBuildError", "ResNet", "WideResNet", "default_input_shape", "no_downloads", "resolve_model"]


class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) if stride != 1 or in_planes != planes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class WideResNet(nn.Module):
    """Pre-activation WRN-depth-width for 32x32 images (Zagoruyko & Komodakis), the reference's CIFAR network.

    ``width`` may be fractional (the half-width parents of WRN-28-10 are WRN-28-5); channel counts are
    ``round(16 * width)``, ``round(32 * width)``, ``round(64 * width)`` after a 16-channel stem.
    """

    def __init__(
        self, depth: int = 28, width: float = 10, num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise GrowcConfigError(f"WRN depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, round(16 * width), round(32 * width), round(64 * width)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for stage, planes in enumerate(widths[1:]):
            layers = []
            for i in range(n):
                layers.append(_PreActBlock(in_planes, planes, 2 if (stage > 0 and i == 0) else 1, dropout))
                in_planes = planes
            blocks.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3 = blocks
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1 or in_planes != out
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


_RESNET_STAGES = {18: (_Basic, (2, 2, 2, 2)), 34: (_Basic, (3, 4, 6, 3)), 50: (_Bottleneck, (3, 4, 6, 3)),
                  101: (_Bottleneck, (3, 4, 23, 3)), 152: (_Bottleneck, (3, 8, 36, 3))}  # fmt: skip


class ResNet(nn.Module):
    """ImageNet ResNet-depth (He et al.; torchvision's layout) with every channel count scaled by ``width``.

    ``width=0.5`` is the half-width parent of the paper's ImageNet experiment: two ``resnet-50-0.5`` fuse into a
    network of ``resnet-50-1`` 's channel counts (stem included). Channel counts are ``round(c * width)``.
    """

    def __init__(self, depth: int = 50, width: float = 1.0, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in _RESNET_STAGES:
            raise GrowcConfigError(f"ResNet depth must be one of {sorted(_RESNET_STAGES)}, got {depth}")
        if not width > 0:
            raise GrowcConfigError(f"ResNet width must be positive, got {width}")
        block, counts = _RESNET_STAGES[depth]
        stem = round(64 * width)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = stem
        stages = []
        for i, (base, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            planes = round(base * width)
            layers = []
            for j in range(count):
                layers.append(block(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class CNN1d(nn.Module):
    """A small 1-D CNN (3 conv-BN-ReLU layers of ``width`` channels, global pooling, linear head)."""

    def __init__(self, width: int = 32, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, width, 5, padding=2, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=2))


_BUILTINS: list[tuple[re.Pattern[str], Callable[..., nn.Module], tuple[int, ...]]] = [
    (
        re.compile(r"wrn-(?P<depth>\d+)-(?P<width>\d+(?:\.\d+)?)"),
        lambda depth, width, **kw: WideResNet(int(depth), float(width), **kw),
        (2, 3, 32, 32),
    ),
    (re.compile(r"cnn1d-(?P<width>\d+)"), lambda width, **kw: CNN1d(int(width), **kw), (2, 1, 40)),
    (
        re.compile(r"resnet-(?P<depth>\d+)-(?P<width>\d+(?:\.\d+)?)"),
        lambda depth, width, **kw: ResNet(int(depth), float(width), **kw),
        (2, 3, 224, 224),
    ),
]
# references that name growc's own model classes: safe to rebuild from an untrusted file (growc.load)
SAFE_FACTORIES = frozenset({"growc.models:WideResNet", "growc.models:CNN1d", "growc.models:ResNet"})
BUILTIN_NAMES = (
    "wrn-D-K (e.g. wrn-16-4, wrn-28-10)",
    "cnn1d-W (e.g. cnn1d-32)",
    "resnet-D-W (e.g. resnet-50-0.5, resnet-18-1)",
)


def _builtin(name: str) -> tuple[Callable[..., nn.Module], dict[str, str], tuple[int, ...]] | None:
    for pattern, factory, shape in _BUILTINS:
        match = pattern.fullmatch(name)
        if match:
            return factory, match.groupdict(), shape
    return None


def is_safe_reference(ref: str) -> bool:
    """Whether building ``ref`` runs only growc's or torchvision's own model code (no import of a named module)."""
    return ref in SAFE_FACTORIES or ref.startswith("torchvision:") or _builtin(ref) is not None


def default_input_shape(ref: str) -> tuple[int, ...] | None:
    """The default example-input shape of a built-in model, or None for other references."""
    found = _builtin(ref)
    return found[2] if found else None


class ModelBuildError(GrowcConfigError):
    """A model's factory raised (e.g. it does not take a keyword argument it was given)."""


_NETWORK_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "urllib.Request",
    }
)
_GUARDS: list[_NoDownload] = []  # the active guards, innermost last
_HOOKED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """A ``sys.addaudithook`` hook: while a guard is active, any network event (Python's or a C extension's socket
    calls included, in any thread) raises and is recorded, so a factory that swallows the error is refused too."""
    if not _GUARDS or event not in _NETWORK_EVENTS:
        return
    target = next((a for a in args if isinstance(a, str) and a), None)
    if target is None:
        address = next((a for a in args if isinstance(a, tuple) and a and isinstance(a[0], str)), None)
        target = ":".join(str(part) for part in address[:2]) if address else event
    guard = _GUARDS[-1]
    guard.attempts.append(target)
    raise guard.refusal(f"reach the network at '{target}'")


class _NoDownload:
    """While active: torch.hub's downloads (and cache loads) raise, and so does every network call of the process
    (an audit hook sees sockets, DNS lookups and urllib requests, C-level ones included). The first attempt is the
    error when the guarded code swallowed it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.saved: list[tuple[Any, str, Any]] = []
        self.attempts: list[str] = []

    def refusal(self, action: str) -> GrowcConfigError:
        return GrowcConfigError(
            f"building {self.what} tried to {action}: growc never downloads weights or code; give trained weights as "
            "a local safetensors file (torchvision's weights arguments are set to None)"
        )

    def _hub(self, name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            url = next((a for a in args if isinstance(a, str)), f"torch.hub.{name}")
            self.attempts.append(url)
            raise self.refusal(f"download '{url}'")

        return refuse

    def __enter__(self) -> _NoDownload:
        global _HOOKED
        import torch.hub

        if not _HOOKED:
            sys.addaudithook(_audit)  # cannot be removed: it does nothing while no guard is active
            _HOOKED = True
        for name in ("download_url_to_file", "load_state_dict_from_url", "load", "_get_cache_or_reload"):
            if hasattr(torch.hub, name):
                self.saved.append((torch.hub, name, getattr(torch.hub, name)))
                setattr(torch.hub, name, self._hub(name))
        _GUARDS.append(self)
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        _GUARDS.remove(self)
        for owner, name, value in reversed(self.saved):
            setattr(owner, name, value)
        self.saved.clear()
        if kind is None and self.attempts:  # the guarded code caught the refusal and went on
            first = self.attempts[0]
            action = f"download '{first}'" if "://" in first else f"reach the network at '{first}'"
            raise self.refusal(action)


def no_downloads(what: str = "the model") -> _NoDownload:
    """A context manager under which nothing can be downloaded: torch.hub's download functions and any socket
    connection raise :class:`~growc.errors.GrowcConfigError` naming ``what`` (every model growc builds is built so)."""
    return _NoDownload(what)


def _torchvision_weights_kwargs(ref: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    """Every ``weights*`` argument of a torchvision builder is None: a given one is refused, a default forced."""
    given = [k for k, v in kwargs.items() if k.startswith("weights") and v is not None]
    if given or kwargs.get("pretrained") or kwargs.get("pretrained_backbone"):
        key = given[0] if given else ("pretrained" if kwargs.get("pretrained") else "pretrained_backbone")
        raise GrowcConfigError(
            f"model '{ref}': growc never downloads pretrained weights: leave kwargs.{key} out (every torchvision "
            "weights argument is set to None) and give trained weights as a local safetensors file"
        )
    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        parameters = {}
    for name in parameters:
        if name.startswith("weights"):
            kwargs[name] = None
    kwargs.setdefault("weights", None)


def resolve_model(ref: str, **kwargs: Any) -> nn.Module:
    """Build the model a reference names (see the module docstring); ``kwargs`` go to its factory.

    Building never reaches the network: torchvision's ``weights*`` arguments are all None (a given one is an error)
    and the factory runs under :func:`no_downloads`. A factory that rejects its arguments or fails is a
    :class:`~growc.errors.GrowcConfigError` naming the reference.
    """
    found = _builtin(ref)
    if found is not None:
        factory, groups, _ = found
        return _call(ref, lambda: factory(**groups, **kwargs))
    if ref.startswith("torchvision:"):
        try:
            import torchvision
        except ImportError as error:
            raise GrowcConfigError(f"model '{ref}' needs torchvision: pip install 'growc[vision]'") from error
        name = ref.split(":", 1)[1]
        if name not in torchvision.models.list_models():
            raise GrowcConfigError(f"torchvision has no model named '{name}' (see torchvision.models.list_models())")
        builder = torchvision.models.get_model_builder(name)
        _torchvision_weights_kwargs(ref, builder, kwargs)
        return _call(ref, lambda: builder(**kwargs))
    if ":" in ref:
        module_name, _, attr = ref.partition(":")
        try:
            with no_downloads(f"model '{ref}'"):
                module = importlib.import_module(module_name)
        except GrowcError:
            raise
        except (ImportError, ValueError, TypeError) as error:  # '' and '.x' are not importable names
            raise GrowcConfigError(f"cannot import '{module_name}' for model '{ref}': {error}") from None
        except Exception as error:  # noqa: BLE001 - importing runs the module's code: say which and what
            raise ModelBuildError(
                f"importing '{module_name}' for model '{ref}' failed: {type(error).__name__}: {error}"[:500]
            ) from None
        factory = module
        for part in attr.split("."):
            if not hasattr(factory, part):
                raise GrowcConfigError(f"'{module_name}' has no attribute '{attr}' (model '{ref}')")
            factory = getattr(factory, part)
        if not callable(factory):
            raise GrowcConfigError(f"'{ref}' is not callable")
        model = _call(ref, lambda: factory(**kwargs))
        if not isinstance(model, nn.Module):
            raise GrowcConfigError(f"'{ref}' returned {type(model).__name__}, not a torch.nn.Module")
        return model
    raise GrowcConfigError(
        f"unknown model '{ref}': use a built-in ({', '.join(BUILTIN_NAMES)}), 'torchvision:NAME' "
        "or 'package.module:factory'"
    )


def _call(ref: str, build: Callable[[], Any]) -> Any:
    try:
        with no_downloads(f"model '{ref}'"):
            return build()
    except GrowcError:
        raise
    except Exception as error:  # noqa: BLE001 - a factory can raise anything; say which and what
        raise ModelBuildError(f"building '{ref}' failed: {type(error).__name__}: {error}"[:500]) from None
