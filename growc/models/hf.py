"""Hugging Face ``transformers`` models as parents: ``transformers:ClassName`` references, built offline.

``transformers:BertModel`` with ``kwargs: {config: {hidden_size: 32, ...}}`` builds ``BertModel`` from its own
configuration class (``cls.config_class(**config)``, every key checked against it) with random weights;
``kwargs: {pretrained: FOLDER}`` loads ``cls.from_pretrained(FOLDER)`` from a local folder only
(``local_files_only=True``, safetensors only: nothing is unpickled, no remote code runs), with ``config`` as overrides
of the folder's ``config.json``. Any other keyword goes to the model class (e.g. ``add_pooling_layer: false``).

Nothing is ever downloaded: the build runs with ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` and under
:func:`growc.models.zoo.no_downloads` (the caller's guard). Under :func:`structure_only` (and on the meta device) a
``pretrained`` folder contributes its ``config.json`` only: the structure, no weights read.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from growc.errors import GrowcConfigError, GrowcIOError

__all__ = ["PREFIX", "build_hf_model", "hf_offline", "is_hf_reference", "structure_only"]

PREFIX = "transformers:"
_INSTALL = "pip install 'growc[hf]'"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# keyword arguments every PretrainedConfig accepts without naming them in its signature
_CONFIG_EXTRAS = frozenset({"num_labels", "attn_implementation", "dtype", "name_or_path"})
_STRUCTURE_ONLY: list[bool] = []


def is_hf_reference(ref: str) -> bool:
    """Whether ``ref`` names a Hugging Face ``transformers`` model class (``transformers:ClassName``)."""
    return ref.startswith(PREFIX)


@contextlib.contextmanager
def structure_only() -> Iterator[None]:
    """While active, a ``pretrained`` folder gives its ``config.json`` only: the model is built with random weights
    (what rebuilding an artifact needs: its weights come from the artifact)."""
    _STRUCTURE_ONLY.append(True)
    try:
        yield
    finally:
        _STRUCTURE_ONLY.pop()


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` for the duration (environment and huggingface_hub's
    constant, which it reads once at import), restored afterwards."""
    saved = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({name: "1" for name in saved})
    constants = None
    try:
        import huggingface_hub.constants as constants
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        pass
    previous = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = previous
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _transformers(ref: str) -> Any:
    with hf_offline():
        try:
            import transformers
        except ImportError:
            raise GrowcConfigError(f"model '{ref}' needs transformers: {_INSTALL}") from None
    return transformers


def _model_class(ref: str, transformers: Any) -> type[nn.Module]:
    name = ref[len(PREFIX) :]
    base = transformers.PreTrainedModel
    if not _NAME.fullmatch(name):
        raise GrowcConfigError(f"model '{ref}': name one transformers model class, e.g. transformers:BertModel")
    try:
        found = getattr(transformers, name, None)
    except Exception:  # noqa: BLE001 - transformers imports lazily: a broken optional dependency raises anything
        found = None
    if isinstance(found, type) and issubclass(found, base):
        return found
    if found is not None:
        what = found.__name__ if isinstance(found, type) else type(found).__name__
        raise GrowcConfigError(
            f"model '{ref}': transformers.{name} is not a model class (a {what}, not a transformers.PreTrainedModel "
            "subclass); name a model class such as BertModel or ViTForImageClassification"
        )
    close = []
    for candidate in difflib.get_close_matches(name, dir(transformers), n=12, cutoff=0.6):
        try:
            value = getattr(transformers, candidate)
        except Exception:  # noqa: BLE001 - as above
            continue
        if isinstance(value, type) and issubclass(value, base) and value is not base:
            close.append(candidate)
    hint = f"; close matches: {', '.join(close[:5])}" if close else ""
    raise GrowcConfigError(f"transformers has no model class '{name}' (model '{ref}'){hint}")


def _check_config_keys(ref: str, config_class: type, config: Mapping[str, Any]) -> None:
    try:
        known = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    except (TypeError, ValueError):  # pragma: no cover - every PretrainedConfig has a signature
        return
    default = config_class()
    unknown = [k for k in config if k not in known and k not in _CONFIG_EXTRAS and not hasattr(default, k)]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(known | _CONFIG_EXTRAS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise GrowcConfigError(f"model '{ref}': {config_class.__name__} has no option '{key}'{hint}")


def _folder(ref: str, pretrained: Any) -> Path:
    if not isinstance(pretrained, (str, os.PathLike)) or not str(pretrained):
        raise GrowcConfigError(
            f"model '{ref}': pretrained must be the path of a local folder (config.json and model.safetensors), "
            f"got {pretrained!r}"
        )
    folder = Path(pretrained)
    if not folder.is_dir():
        raise GrowcIOError(
            f"model '{ref}': the pretrained folder '{folder}' does not exist (or is not a folder): growc loads "
            "transformers models from a local folder only and never downloads",
            path=str(folder),
        )
    if not (folder / "config.json").is_file():
        raise GrowcIOError(f"model '{ref}': the pretrained folder '{folder}' has no config.json", path=str(folder))
    return folder


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars while loading weights (growc's output is its own)."""
    logging = transformers.utils.logging
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def _on_meta() -> bool:
    return torch.empty(0).device.type == "meta"


def build_hf_model(ref: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Build the ``transformers`` model ``ref`` names (see the module docstring), in eval mode, offline.

    Raises :class:`~growc.errors.GrowcConfigError` for a missing transformers, an unknown class (with close
    matches), a class that is no ``PreTrainedModel``, an unknown config key; :class:`~growc.errors.GrowcIOError`
    for a missing ``pretrained`` folder. Errors the model class raises propagate (the caller names the reference).
    """
    transformers = _transformers(ref)
    cls = _model_class(ref, transformers)
    rest = dict(kwargs)
    config = rest.pop("config", None) or {}
    pretrained = rest.pop("pretrained", None)
    if not isinstance(config, Mapping):
        raise GrowcConfigError(f"model '{ref}': config must be a mapping of {cls.__name__}'s config options")
    config_class = cls.config_class
    _check_config_keys(ref, config_class, config)
    with hf_offline():
        if pretrained is None:
            model = cls(config_class(**config), **rest)
        else:
            folder = _folder(ref, pretrained)
            loaded = config_class.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, **config)
            if _STRUCTURE_ONLY or _on_meta():
                model = cls(loaded, **rest)
            else:
                if (
                    not (folder / "model.safetensors").is_file()
                    and not (folder / "model.safetensors.index.json").is_file()
                ):
                    raise GrowcIOError(
                        f"model '{ref}': the pretrained folder '{folder}' has no model.safetensors: growc reads "
                        "safetensors weights only (it never unpickles a pytorch_model.bin)",
                        path=str(folder),
                    )
                with _quiet(transformers):
                    model = cls.from_pretrained(
                        str(folder),
                        config=loaded,
                        local_files_only=True,
                        use_safetensors=True,
                        trust_remote_code=False,
                        **rest,
                    )
    return model.eval()
