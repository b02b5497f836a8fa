"""Model references: growc's built-in names, and the resolver that builds any reference without downloading.

A model reference is one of:

* a built-in name: ``wrn-D-K`` (pre-activation Wide ResNet for 32x32 inputs, depth D = 6n+4, width factor K, as
  in the MixtureGrowth reference code; e.g. ``wrn-28-10``, ``wrn-16-4``) or ``cnn1d-W`` (a small 1-D CNN of width
  W for length-40 sequences);
* ``resnet-D-W``: ImageNet ResNet-D (18, 34, 50, 101, 152) with every channel count scaled by W (e.g.
  ``resnet-50-0.5``, the half-width parent of the paper's ImageNet experiment);
* ``torchvision:NAME`` (``torchvision.models.get_model(NAME, weights=None)``);
* ``transformers:ClassName``: a Hugging Face ``transformers`` model class, built from ``kwargs.config`` (its own
  config class's options) or loaded from a local ``kwargs.pretrained`` folder, never downloaded
  (:mod:`growc.models.hf`);
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

from torch import nn

from growc.errors import GrowcConfigError, GrowcError
from growc.models.architectures import CNN1d, ResNet, WideResNet
from growc.models.hf import build_hf_model, is_hf_reference, structure_only

__all__ = [
    "BUILTIN_NAMES",
    "SAFE_FACTORIES",
    "ModelBuildError",
    "default_input_shape",
    "is_safe_reference",
    "no_downloads",
    "resolve_model",
    "structure_only",
]


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
    """Whether building ``ref`` runs only growc's, torchvision's or transformers' own model code (no import of a
    named module; transformers never runs remote code)."""
    return (
        ref in SAFE_FACTORIES
        or ref.startswith("torchvision:")
        or (is_hf_reference(ref) and ":" not in ref[len("transformers:") :])
        or _builtin(ref) is not None
    )


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

    Building never reaches the network: torchvision's ``weights*`` arguments are all None (a given one is an error),
    a ``transformers:`` model is built from its config or a local folder, offline, and the factory runs under
    :func:`no_downloads`. A factory that rejects its arguments or fails is a
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
    if is_hf_reference(ref):
        return _call(ref, lambda: build_hf_model(ref, kwargs))
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
        f"unknown model '{ref}': use a built-in ({', '.join(BUILTIN_NAMES)}), 'torchvision:NAME', "
        "'transformers:ClassName' or 'package.module:factory'"
    )


def _call(ref: str, build: Callable[[], Any]) -> Any:
    try:
        with no_downloads(f"model '{ref}'"):
            return build()
    except GrowcError:
        raise
    except Exception as error:  # noqa: BLE001 - a factory can raise anything; say which and what
        raise ModelBuildError(f"building '{ref}' failed: {type(error).__name__}: {error}"[:500]) from None
