"""Training recipes: schema, the growth inside them, the learning-rate schedule, located errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from growc.spec.document import GrowcSpecError
from growc.spec.recipe import PhaseSpec, growth_spec, load_recipe, lr_at, recipe_json_schema_text

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "specs" / "recipes").glob("*.yaml"))

TINY = """\
growc: 1
name: tiny
seed: 1
data: {name: synthetic, samples: 200, shape: [1, 24], classes: 3}
parents: {epochs: 2, batch_size: 32, optimizer: {lr: 0.05}}
grow:
  parents:
    - {model: growc.models:CNN1d, kwargs: {width: 4, num_classes: 3}}
    - {model: growc.models:CNN1d, kwargs: {width: 4, num_classes: 3}}
  templates: {sharing: shape, init: fresh}
  growth:
    - {cross_init: orthogonal}
grown: {epochs: 1, batch_size: 32, optimizer: {lr: 0.01}}
output: {folder: run}
"""


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(path: Path) -> None:
    recipe = load_recipe(path)
    spec = growth_spec(recipe)
    assert spec.input.shape[0] == 2 and len(spec.parents) == 2


def test_the_shipped_recipe_schema_is_the_generated_one() -> None:
    shipped = (ROOT / "specs" / "recipes" / "growc.recipe.schema.json").read_text()
    assert shipped == recipe_json_schema_text(), "run: growc schema --recipe --out specs/recipes/..."


def test_an_inline_growth_becomes_a_growth_spec_with_the_data_shape() -> None:
    recipe = load_recipe("r.yaml", text=TINY)
    spec = growth_spec(recipe)
    assert spec.input.shape == [2, 1, 24]
    assert spec.growth[0].factor == 2 and spec.seed == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("lr: 0.05", "lr: -1"), "r.yaml:5:54: parents.optimizer.lr: input should be greater than 0, got -1"),
        (
            ("{epochs: 2,", "{epochs: 2, warmup: 1,"),
            "r.yaml:5:22: parents.warmup: unknown key 'warmup' (allowed here: epochs, batch_size, optimizer, schedule)",
        ),
        (("name: synthetic", "name: mnist2d"), "r.yaml:4:14: data.name: input should be 'mnist1d', 'digits',"),
        (
            ("  - {cross_init: orthogonal}", "  - {cross_init: orthogonal, factor: 3}"),
            "r.yaml:12:40: grow.growth[0].factor: the first step fuses the 2 parents, so its factor is 2, not 3",
        ),
        (
            (
                "kwargs: {width: 4, num_classes: 3}}\n    - {model",
                "kwargs: {width: 4, num_classes: 3}, weights: a}\n    - {model",
            ),
            "r.yaml:8:80: grow.parents[0].weights: a recipe trains its parents: weights must be null",
        ),
        (
            ("grown: {epochs: 1,", "grown: {epochs: 1, schedule: {warmup_epochs: 2},"),
            "r.yaml:13:46: grown.schedule.warmup_epochs: warmup (2 epochs) is longer than the phase (1)",
        ),
        (("{epochs: 2,", "{epochs: 0,"), "r.yaml:5:19: parents.epochs: the parents must train for at least one"),
    ],
)
def test_bad_recipes_get_the_spec_error_with_file_line_column(edit: tuple[str, str], message: str) -> None:
    assert edit[0] in TINY
    with pytest.raises(GrowcSpecError) as info:
        load_recipe("r.yaml", text=TINY.replace(*edit))
    assert str(info.value).startswith(message)


def test_a_growth_spec_by_path_must_fit_the_data(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text(
        "growc: 1\nparents: [{model: cnn1d-4}, {model: cnn1d-4}]\ninput: {shape: [2, 1, 40]}\ngrowth: [{}]\n"
    )
    text = TINY[: TINY.index("grow:")] + "grow: {spec: g.yaml}\n" + TINY[TINY.index("grown:") :]
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(
        GrowcSpecError,
        match=r"r.yaml:6:14: grow.spec: the growth spec's input shape \[2, 1, 40\] "
        r"does not fit synthetic examples of shape \[1, 24\]",
    ):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text(text.replace("shape: [1, 24]", "shape: [1, 40]"))
    assert growth_spec(load_recipe(tmp_path / "r.yaml")).parents[0].model == "cnn1d-4"


def test_the_schedule_warms_up_linearly_then_follows_a_cosine() -> None:
    phase = PhaseSpec.model_validate({"epochs": 4, "optimizer": {"lr": 1.0}, "schedule": {"warmup_epochs": 1}})
    lrs = [lr_at(step, 40, 10, phase) for step in range(40)]
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))


def test_synthetic_data_beyond_the_bound_is_refused_at_its_line() -> None:
    big = TINY.replace("samples: 200, shape: [1, 24]", "samples: 10000000, shape: [4096, 4096]")
    with pytest.raises(GrowcSpecError, match=r"r.yaml:4:\d+: data.samples: synthetic data of 10000000 examples of "
                       r"shape \[4096, 4096\] needs 610\.4 TiB .*; growc generates at most 4 GiB"):  # fmt: skip
        load_recipe("r.yaml", text=big)
