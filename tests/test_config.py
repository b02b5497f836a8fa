"""growc.passes.config: one frozen, validated config per pass, and one home for every default.

The Python API's keyword defaults, the growth spec's defaults and the command line's must all be the configs';
specs are resolved into new objects, never filled in place; widen drives fusion through a FusionConfig.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import get_args

import pytest

import growc
from growc.cli import build_parser
from growc.errors import GrowcConfigError
from growc.passes.config import (
    FuseConfig,
    FusionConfig,
    Init,
    Sharing,
    TemplatizeConfig,
    WidenConfig,
)
from growc.passes.widen import fusion_config
from growc.spec.document import parse_yaml
from growc.spec.growth import GrowthSpec, ResolvedStep, StepSpec, TemplateSpec, check_steps, load_spec, resolve_spec

FUSE_SPEC = """\
growc: 1
parents:
  - {model: cnn1d-4, kwargs: {num_classes: 3}}
  - {model: cnn1d-4, kwargs: {num_classes: 3}}
input: {shape: [2, 1, 40]}
growth:
  - {}
  - {factor: 2, method: net2net}
"""


def _defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def _fields(config) -> dict:
    return {f.name: f.default for f in dataclasses.fields(config) if f.name != "given"}


# ---- one home for every default --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "config"),
    [(growc.fuse, FuseConfig), (growc.widen, WidenConfig), (growc.templatize, TemplatizeConfig)],
)
def test_the_python_api_defaults_are_the_configs(function, config) -> None:
    defaults = _defaults(function)
    for name, default in _fields(config).items():
        assert defaults[name] == default, (function.__name__, name)


def test_the_spec_defaults_are_the_configs() -> None:
    template = TemplateSpec()
    config = TemplatizeConfig()
    assert (template.sharing, template.per_bank, template.init, template.window) == (
        config.sharing,
        config.templates,
        config.init,
        config.window,
    )
    assert StepSpec().method == WidenConfig.method
    spec = load_spec("spec.yaml", text=FUSE_SPEC)
    fusion = spec.growth[0]
    assert {key: getattr(fusion, key) for key in _fields(FuseConfig)} == dataclasses.asdict(FuseConfig())
    assert spec.steps()[0].fuse == FuseConfig()
    assert spec.steps()[1].widen == WidenConfig(factor=2, method="net2net")
    # the schema says so too
    properties = GrowthSpec.model_json_schema()["$defs"]["StepSpec"]["properties"]
    assert properties["method"]["default"] == WidenConfig.method
    for key, value in dataclasses.asdict(FuseConfig()).items():
        assert f"default {value}" in properties[key]["description"], key
    template_schema = GrowthSpec.model_json_schema()["$defs"]["TemplateSpec"]["properties"]
    assert template_schema["per_bank"]["default"] == TemplatizeConfig.templates


def test_the_command_line_defaults_are_the_configs() -> None:
    args = build_parser().parse_args(["templatize", "cnn1d-4"])
    config = TemplatizeConfig()
    assert (args.sharing, args.templates, args.init, args.window) == (
        config.sharing,
        config.templates,
        config.init,
        config.window,
    )
    for option, kind in (("--sharing", Sharing), ("--init", Init)):  # the choices are the config's types'
        for value in get_args(kind):
            assert getattr(build_parser().parse_args(["templatize", "cnn1d-4", option, value]), option[2:]) == value
        with pytest.raises(SystemExit):
            build_parser().parse_args(["templatize", "cnn1d-4", option, "other"])


# ---- validation: the passes' messages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FuseConfig(cross_init="ortho"), r"cross_init must be 'orthogonal', 'zero', 'random' or 'copy', got"),
        (lambda: FuseConfig(cross_templates="all"), r"cross_templates must be 'own' or 'union', got 'all'"),
        (lambda: FuseConfig(head="first"), r"head must be 'sum' or 'mean', got 'first'"),
        (lambda: FuseConfig(cross_scale=True), r"cross_scale must be a finite number, got True"),
        (lambda: FuseConfig(cross_scale=float("nan")), r"cross_scale must be a finite number, got nan"),
        (lambda: WidenConfig(method="grow"), r"method must be 'mixture', 'net2net', 'random' or 'zero', got 'grow'"),
        (lambda: WidenConfig(factor=1), r"factor must be an integer >= 2, got 1"),
        (lambda: WidenConfig(factor=2.0), r"factor must be an integer >= 2, got 2\.0"),
        (lambda: TemplatizeConfig(sharing="all"), r"sharing must be 'layer', 'shape' or 'shape_window', got 'all'"),
        (lambda: TemplatizeConfig(init="svd2"), r"init must be 'exact', 'svd' or 'fresh', got 'svd2'"),
        (lambda: TemplatizeConfig(templates=0), r"templates must be a positive integer, got 0"),
        (lambda: TemplatizeConfig(window=True), r"window must be a positive integer, got True"),
        (lambda: FusionConfig(head="max"), r"head must be 'sum', 'mean' or 'first', got 'max'"),
        (lambda: FusionConfig(copy_noise=float("inf")), r"copy_noise must be a finite number, got inf"),
        (lambda: FusionConfig(block_inits=(((0, 1), "ones"),)), r"block_inits' init must be 'orthogonal', "),
    ],
)
def test_configs_validate_with_the_passes_messages(build, message) -> None:
    with pytest.raises(GrowcConfigError, match="^" + message):
        build()


def test_configs_are_frozen_values() -> None:
    config = FuseConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.head = "mean"  # type: ignore[misc]
    assert FuseConfig() == FuseConfig(cross_init="orthogonal") and hash(FuseConfig()) == hash(FuseConfig())
    assert WidenConfig(factor=3).as_dict() == {"factor": 3, "method": "mixture"}


def test_templatize_options_become_a_config() -> None:
    config = TemplatizeConfig.from_options("fuse", {"layers": ["features.*"], "sharing": "shape"})
    assert config.sharing == "shape" and config.layers == ["features.*"] and config.templates == 2
    assert config.report() == {"sharing": "shape", "templates": 2, "init": "exact", "layers": ["features.*"]}
    assert config.kwargs()["window"] == TemplatizeConfig.window
    assert TemplatizeConfig.from_options("widen", None) == TemplatizeConfig()
    for options, message in [
        ({"seed": 1}, r"templatize_options may not set 'seed' \(widen's own option\)"),
        ({"foo": 1, "bar": 2}, r"templatize_options has unknown option\(s\) 'foo', 'bar'; known: sharing, templates"),
        ([("sharing", "layer")], r"templatize_options must be a dict of templatize options, got list"),
    ]:
        with pytest.raises(GrowcConfigError, match="^" + message):
            TemplatizeConfig.from_options("widen", options)


# ---- the fusion engine's configuration -------------------------------------------------------------------------


def test_fuse_config_becomes_the_fusion_config() -> None:
    fusion = FuseConfig(cross_init="copy", cross_scale=2, head="mean").fusion(seed=5)
    assert fusion == FusionConfig(cross_init="copy", cross_scale=2.0, head="mean", seed=5)
    assert isinstance(fusion.cross_scale, float)
    assert fusion.init_of(0, 1) == "copy"


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("net2net", FusionConfig(cross_init="copy", head="mean", seed=3, copy_noise=0.0, interior_scale=1 / 3)),
        ("mixture", FusionConfig(cross_init="orthogonal", head="sum", seed=3)),
        ("random", FusionConfig(cross_init="random", head="sum", seed=3)),
        (
            "zero",
            FusionConfig(cross_init="random", head="first", seed=3, block_inits=(((0, 1), "zero"), ((0, 2), "zero"))),
        ),
    ],
)
def test_widen_drives_fusion_through_an_explicit_config(method: str, expected: FusionConfig) -> None:
    fusion = fusion_config(WidenConfig(factor=3, method=method), seed=3)
    assert fusion == expected
    if method == "zero":
        assert (fusion.init_of(0, 2), fusion.init_of(2, 0), fusion.init_of(1, 2)) == ("zero", "random", "random")


# ---- specs are resolved into new objects -----------------------------------------------------------------------


def test_check_steps_returns_resolved_steps_and_leaves_the_spec_alone() -> None:
    doc = parse_yaml(FUSE_SPEC, "spec.yaml")
    raw = GrowthSpec.model_validate(doc.data)
    before = raw.model_dump()
    steps = check_steps(raw, doc)
    assert raw.model_dump() == before  # nothing filled in place
    assert raw.growth[0].factor is None and raw.growth[0].cross_init is None
    assert steps == (
        ResolvedStep(0, 2, fuse=FuseConfig()),
        ResolvedStep(1, 2, widen=WidenConfig(factor=2, method="net2net")),
    )
    assert [(s.kind, s.method) for s in steps] == [("fuse", "mixture"), ("widen", "net2net")]
    assert steps[0].options() == dataclasses.asdict(FuseConfig())
    resolved = resolve_spec(raw, doc)
    assert resolved is not raw and resolved.growth[0] is not raw.growth[0]
    assert resolved.growth[0].factor == 2 and resolved.growth[0].cross_init == FuseConfig.cross_init
    assert raw.model_dump() == before
    assert resolved.factors() == [2, 2] and resolved.doc.file == "spec.yaml"
