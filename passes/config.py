"""Every option of the growth passes, with its one default: a frozen, validated config per pass.

:class:`TemplatizeConfig`, :class:`FuseConfig` and :class:`WidenConfig` hold what :func:`growc.templatize`,
:func:`growc.fuse` and :func:`growc.widen` take. Their defaults are the single source the Python API's keyword
defaults (``cross_init: CrossInit = FuseConfig.cross_init``), the growth spec's schema (``growc.spec.growth``) and
the command line (``growc.cli``) all read; ``tests/test_config.py`` checks that they agree. Each config validates
itself when built and raises :class:`~growc.errors.GrowcConfigError` with the message the pass always gave.

:class:`FusionConfig` is the complete configuration of the fusion engine (:func:`growc.passes.fuse.fuse_templated`):
``fuse`` builds one from a :class:`FuseConfig`, ``widen`` from its method (a Net2Net widening scales the interior
blocks, a zero widening reads out through parent 0 only, ...). Nothing configures the engine any other way.

This module is no pass: it rewrites no graph and imports no other pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from growc.errors import GrowcConfigError
from growc.fx.checks import check_seed, positive_int
from growc.fx.export import check_dynamic
from growc.fx.trace import Capture

__all__ = [
    "CROSS_INITS",
    "SEED",
    "VERIFY",
    "CrossInit",
    "CrossTemplates",
    "FuseConfig",
    "FusionConfig",
    "Head",
    "Init",
    "Method",
    "Readout",
    "Sharing",
    "TemplatizeConfig",
    "WidenConfig",
]

Sharing = Literal["layer", "shape", "shape_window"]
Init = Literal["exact", "svd", "fresh"]
CrossInit = Literal["orthogonal", "zero", "random", "copy"]
CrossTemplates = Literal["own", "union"]
Head = Literal["sum", "mean"]
#: how the fused graph's outputs combine the parents': ``fuse``'s heads, plus ``"first"`` (only parent 0 reads
#: out; the other parents' head columns are new zero rows), which a zero widening uses
Readout = Literal["sum", "mean", "first"]
Method = Literal["mixture", "net2net", "random", "zero"]

CROSS_INITS: tuple[str, ...] = get_args(CrossInit)


def _choices(values: tuple[str, ...]) -> str:
    """``'a', 'b' or 'c'``: the choices as the passes' messages list them."""
    quoted = [repr(v) for v in values]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _check_choice(name: str, value: Any, kind: Any) -> None:
    choices = get_args(kind)
    if value not in choices:
        raise GrowcConfigError(f"{name} must be {_choices(choices)}, got {value!r}")


def _check_finite(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GrowcConfigError(f"{name} must be a finite number, got {value!r}")


#: The default ``seed`` of every pass (templatize, fuse, widen) and of ``growc templatize --seed``.
SEED = 0
#: Whether a pass checks its output against its input by default (``verify``).
VERIFY = True


@dataclass(frozen=True)
class TemplatizeConfig:
    """How :func:`growc.templatize` turns weights into template banks (every option but ``seed`` and ``verify``).

    Also what a growth pass's ``templatize_options`` may hold: :meth:`from_options` builds it from that dict.
    """

    sharing: Sharing = "layer"
    templates: int = 2
    init: Init = "exact"
    window: int = 2
    leaf_modules: Sequence[Any] = ()
    autowrap_functions: Sequence[Callable[..., Any]] = ()
    concrete_args: dict[str, Any] | None = None
    layers: Sequence[str] | None = None
    #: how a plain model is captured (:func:`growc.trace`): ``"auto"``, ``"fx"`` or ``"export"``
    capture: Capture = "auto"
    #: export only: dims made dynamic (``True``: batch, and sequence for integer inputs; ``False``: none)
    dynamic: Any = True
    #: the options a caller gave explicitly (in order), for reports; not part of the config's value
    given: tuple[str, ...] = field(default=(), compare=False, repr=False)

    #: the options a growth pass's ``templatize_options`` may set
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "sharing",
        "templates",
        "init",
        "window",
        "leaf_modules",
        "autowrap_functions",
        "concrete_args",
        "layers",
        "capture",
        "dynamic",
    )
    #: the options every growth report lists, given or not
    REPORTED: ClassVar[tuple[str, ...]] = ("sharing", "templates", "init")

    def __post_init__(self) -> None:
        _check_choice("sharing", self.sharing, Sharing)
        _check_choice("init", self.init, Init)
        _check_choice("capture", self.capture, Capture)
        check_dynamic(self.dynamic)
        object.__setattr__(self, "templates", positive_int("templates", self.templates))
        object.__setattr__(self, "window", positive_int("window", self.window))

    @classmethod
    def from_options(cls, where: str, options: Any) -> TemplatizeConfig:
        """The config a growth pass (``where``: ``"fuse"``, ``"widen"``) templatizes plain models with, from its
        ``templatize_options`` (``None``: every default); ``seed`` and ``verify`` are the growth pass's own."""
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise GrowcConfigError(
                f"templatize_options must be a dict of templatize options, got {type(options).__name__}"
            )
        for key in options:
            if key in ("seed", "verify"):
                raise GrowcConfigError(f"templatize_options may not set {key!r} ({where}'s own option)")
        unknown = [key for key in options if key not in cls.OPTIONS]
        if unknown:
            raise GrowcConfigError(
                f"templatize_options has unknown option(s) {', '.join(repr(k) for k in unknown)}; known: "
                f"{', '.join(cls.OPTIONS)}"
            )
        return cls(**options, given=tuple(options))

    def kwargs(self) -> dict[str, Any]:
        """Every option as :func:`growc.templatize`'s keyword arguments."""
        return {name: getattr(self, name) for name in self.OPTIONS}

    def report(self) -> dict[str, Any]:
        """The options a growth report lists: sharing, templates and init, and every other one given."""
        names = [*self.REPORTED, *(k for k in self.given if k not in self.REPORTED)]
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class FuseConfig:
    """How :func:`growc.fuse` initialises the fused network's new blocks and combines the parents' outputs.

    Attributes:
        cross_init: the new off-diagonal blocks: ``"orthogonal"`` (the last right-singular vector of the bank's
            coefficients, times ``cross_scale``), ``"zero"`` (function-preserving), ``"random"`` (uniform in
            [-1, 1] times ``cross_scale``) or ``"copy"`` (the row parent's coefficients times ``cross_scale``,
            plus N(0, 0.01²) noise).
        cross_scale: the scale of the cross blocks' coefficients.
        cross_templates: ``"own"`` (a new row in the row parent's bank) or ``"union"`` (one in every parent's,
            summed).
        head: ``"sum"`` (the parents' logits add up) or ``"mean"`` (they average).
    """

    cross_init: CrossInit = "orthogonal"
    cross_scale: float = 1.0
    cross_templates: CrossTemplates = "own"
    head: Head = "sum"

    def __post_init__(self) -> None:
        _check_choice("cross_init", self.cross_init, CrossInit)
        _check_choice("cross_templates", self.cross_templates, CrossTemplates)
        _check_choice("head", self.head, Head)
        _check_finite("cross_scale", self.cross_scale)

    def fusion(self, seed: int) -> FusionConfig:
        """The fusion engine's configuration for this fuse, its random draws seeded by ``seed``."""
        return FusionConfig(
            cross_init=self.cross_init,
            cross_scale=float(self.cross_scale),
            cross_templates=self.cross_templates,
            head=self.head,
            seed=seed,
        )

    def as_dict(self) -> dict[str, Any]:
        """The options by name (:func:`growc.fuse`'s keyword arguments)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class WidenConfig:
    """How :func:`growc.widen` grows one model: ``factor`` times wider by ``method`` (``"mixture"``,
    ``"net2net"``, ``"random"`` or ``"zero"``; see :mod:`growc.passes.widen`)."""

    factor: int = 2
    method: Method = "mixture"

    def __post_init__(self) -> None:
        _check_choice("method", self.method, Method)
        factor = self.factor
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise GrowcConfigError(f"factor must be an integer >= 2, got {factor!r}")

    @property
    def preserving(self) -> bool:
        """Whether the method keeps the model's function (``net2net`` and ``zero``)."""
        return self.method in ("net2net", "zero")

    def as_dict(self) -> dict[str, Any]:
        """The options by name (:func:`growc.widen`'s keyword arguments)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FusionConfig:
    """Everything the fusion engine (:func:`growc.passes.fuse.fuse_templated`) is told, explicitly.

    Attributes:
        cross_init: the default init of the new off-diagonal blocks (see :class:`FuseConfig`).
        cross_scale: the scale of ``orthogonal``, ``random`` and ``copy`` cross blocks.
        cross_templates: ``"own"`` or ``"union"`` (see :class:`FuseConfig`).
        head: how the outputs combine: ``"sum"``, ``"mean"`` or ``"first"`` (parent 0 alone reads out: the other
            parents' head columns are new zero rows and the head's bias is parent 0's).
        seed: seeds the random cross inits.
        interior_scale: multiplies every interior (fused -> fused) grid's scale; a Net2Net widening by ``n``
            divides the replicated inputs' weights by ``n``.
        copy_noise: the standard deviation of the noise a ``copy`` cross block adds.
        block_inits: ``((row parent, column parent), init)`` pairs overriding ``cross_init`` for those blocks
            (a zero widening keeps every block from new channels into parent 0's at zero).
    """

    cross_init: CrossInit = FuseConfig.cross_init
    cross_scale: float = FuseConfig.cross_scale
    cross_templates: CrossTemplates = FuseConfig.cross_templates
    head: Readout = FuseConfig.head
    seed: int = SEED
    interior_scale: float = 1.0
    copy_noise: float = 0.01
    block_inits: tuple[tuple[tuple[int, int], CrossInit], ...] = ()

    def __post_init__(self) -> None:
        _check_choice("cross_init", self.cross_init, CrossInit)
        _check_choice("cross_templates", self.cross_templates, CrossTemplates)
        _check_choice("head", self.head, Readout)
        for name in ("cross_scale", "interior_scale", "copy_noise"):
            _check_finite(name, getattr(self, name))
        object.__setattr__(self, "seed", check_seed(self.seed))
        blocks = tuple(((int(i), int(j)), init) for (i, j), init in self.block_inits)
        for _, init in blocks:
            _check_choice("block_inits' init", init, CrossInit)
        object.__setattr__(self, "block_inits", blocks)

    def init_of(self, row: int, column: int) -> str:
        """The init of the cross block from parent ``column``'s channels into parent ``row``'s."""
        return dict(self.block_inits).get((row, column), self.cross_init)
