"""growc.train.runfolder: the run-folder rule (new, empty, or this recipe's run; anything else refused before any
work), the claim (run.json; of two runs at once exactly one gets it), and the records a resume trusts only once
verified (done.json, grow.json, the final artifact)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from train_helpers import (
    BAD_DATA,
    TINY,
    TINY_DATA,
    edit_json,
    finished_run,
    flip_last_byte,
    prepend,
    refused,
)

from growc.errors import GrowcError
from growc.spec.recipe import growth_spec, load_recipe
from growc.train import StoppedEarly, train
from growc.train.runfolder import fingerprint, inspect_run_folder


@pytest.fixture
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return finished_run(tmp_path_factory)


def test_a_run_folder_of_another_recipe_is_refused(finished: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = finished
    (tmp_path / "other.yaml").write_text(TINY.replace("seed: 1", "seed: 2"))
    with pytest.raises(GrowcError, match="holds a run of a different recipe"):
        train(tmp_path / "other.yaml", folder / "run", progress=False)


def test_a_damaged_run_file_is_a_clear_error(finished: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = finished
    shutil.copytree(folder / "run", tmp_path / "run")
    (tmp_path / "run" / "run.json").write_text("{")
    with pytest.raises(GrowcError, match=r"run.json' is damaged \(.*\): delete the run folder to start over, or "):
        train(folder / "tiny.yaml", tmp_path / "run", progress=False)


@pytest.mark.parametrize("case", ["slash", "other-files", "dotdot", "a-file", "run-json-deleted", "not-a-run-json"])
def test_a_run_folder_is_new_empty_or_this_recipes_run_and_anything_else_is_refused_before_any_work(
    finished: tuple[Path, dict], tmp_path: Path, case: str
) -> None:
    folder, _ = finished
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY.replace(TINY_DATA, BAD_DATA).replace("{folder: run}", "{folder: /}"))
    out: Path | None = tmp_path / "out"
    if case == "slash":
        out = None
        where = "/"
        reason = r"it is not empty and is not a growc run folder \(no run.json\)"
    elif case == "other-files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        where, reason = str(out), r"it is not empty and is not a growc run folder \(no run.json\)"
    elif case == "dotdot":
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "notes.txt").write_text("mine")
        out = tmp_path / "new" / ".." / "full"
        where, reason = str(tmp_path / "full"), "it is not empty"
    elif case == "a-file":
        out.write_text("mine")
        where, reason = str(out), "it is a file, not a folder"
    elif case == "run-json-deleted":
        shutil.copytree(folder / "run", out)
        (out / "run.json").unlink()
        where = str(out)
        reason = r"it holds growc run files \(.*'parent0'.*\) but no run.json"
    else:
        out.mkdir()
        (out / "run.json").write_text('{"recipe_sha256": "0"}')
        (out / "notes.txt").write_text("mine")
        where, reason = (
            str(out),
            r"'.*run.json' is not a growc run file \(no \"format\": \"growc-run\" with a recipe_sha256\)",
        )
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    refused(recipe, out, rf"refusing to use '{where}' as the run folder: {reason}")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing created, nothing loaded


def test_a_run_folder_says_what_it_is_and_an_empty_folder_becomes_one(finished: tuple[Path, dict], tmp_path: Path):
    folder, _ = finished
    run = json.loads((folder / "run" / "run.json").read_text())
    assert run["format"] == "growc-run" and len(run["recipe_sha256"]) == 64
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".run.json.tmp-1").write_text("{")  # left by a writer killed before its rename
    with pytest.raises(StoppedEarly):
        train(folder / "tiny.yaml", tmp_path / "empty", stop_after=0, progress=False)
    assert json.loads((tmp_path / "empty" / "run.json").read_text()) == run
    assert not (tmp_path / "empty" / ".run.json.tmp-1").exists()


def test_inspecting_a_folder_reads_run_json_and_treats_new_and_empty_alike(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = finished
    assert inspect_run_folder(tmp_path / "new") is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".run.json.tmp-7").write_text("{")
    assert inspect_run_folder(tmp_path / "empty") is None
    assert inspect_run_folder(folder / "run") == json.loads((folder / "run" / "run.json").read_text())


def test_the_fingerprint_is_the_recipe_but_where_it_writes(tmp_path: Path) -> None:
    def of(text: str) -> str:
        (tmp_path / "r.yaml").write_text(text)
        recipe = load_recipe(tmp_path / "r.yaml")
        return fingerprint(recipe, growth_spec(recipe))

    tiny = of(TINY)
    assert len(tiny) == 64 and tiny == of(TINY)
    assert of(TINY.replace("{folder: run}", "{folder: elsewhere}")) == tiny
    assert of(TINY.replace("seed: 1", "seed: 2")) != tiny
    assert of(TINY.replace("cross_init: orthogonal", "cross_init: zero")) != tiny


def test_another_recipes_checkpoints_and_phases_are_refused_even_under_a_forged_run_json(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(TINY)
    (tmp_path / "b.yaml").write_text(TINY.replace("seed: 1", "seed: 2"))
    with pytest.raises(StoppedEarly):
        train(tmp_path / "b.yaml", tmp_path / "b", stop_after=0, progress=False)  # b/run.json: recipe b's
    with pytest.raises(StoppedEarly):
        train(tmp_path / "a.yaml", tmp_path / "run", stop_after=1, progress=False)  # a checkpoint of parent0
    (tmp_path / "run" / "run.json").unlink()
    refused(tmp_path / "b.yaml", tmp_path / "run", r"it holds growc run files \(.*'parent0'.*\) but no run.json")
    shutil.copy(tmp_path / "b" / "run.json", tmp_path / "run" / "run.json")
    refused(
        tmp_path / "b.yaml",
        tmp_path / "run",
        r"'.*parent0/checkpoints/epoch-0001/manifest.json', key 'fingerprint': this checkpoint belongs to another "
        r"recipe",
    )
    with pytest.raises(StoppedEarly):
        train(tmp_path / "a.yaml", tmp_path / "run2", stop_after=2, progress=False)  # parent0 finished
    shutil.copy(tmp_path / "b" / "run.json", tmp_path / "run2" / "run.json")
    refused(tmp_path / "b.yaml", tmp_path / "run2",
            r"'.*parent0/done.json', key 'fingerprint': this phase belongs to another recipe")  # fmt: skip


FINISHED_DAMAGE = {
    "parent-weights": (
        lambda r: flip_last_byte(r / "parent0" / "model.safetensors"),
        r"'.*parent0/model.safetensors' does not match its SHA-256 in '.*parent0/done.json'",
    ),
    "history": (
        lambda r: edit_json(r / "parent0" / "done.json", lambda d: d.update(history=5)),
        r"'.*parent0/done.json', key 'history': expected a list, got 5",
    ),
    "flops": (
        lambda r: edit_json(r / "grown" / "done.json", lambda d: d.pop("flops")),
        r"'.*grown/done.json', key 'flops': missing",
    ),
    "flops-nested": (
        lambda r: edit_json(r / "parent1" / "done.json", lambda d: d["flops"].update(total=None)),
        r"'.*parent1/done.json', key 'flops.total': expected a number, got None",
    ),
    "growth-accuracy": (
        lambda r: edit_json(r / "grown-artifact" / "grow.json", lambda d: d.update(test_acc="x")),
        r"'.*grown-artifact/grow.json', key 'test_acc': expected a number, got 'x'",
    ),
    "artifact-file": (
        lambda r: prepend(r / "grown-artifact" / "spec.yaml", "# edited\n"),
        r"'.*grown-artifact/spec.yaml' does not match its SHA-256 in '.*grown-artifact/grow.json'",
    ),
    "done-not-json": (
        lambda r: (r / "grown" / "done.json").write_text("[1, 2]"),
        r"'.*grown/done.json' is damaged \(not a JSON object\)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FINISHED_DAMAGE))
def test_a_finished_phase_or_growth_is_verified_before_it_is_reused(
    finished: tuple[Path, dict], tmp_path: Path, case: str
) -> None:
    folder, _ = finished
    shutil.copytree(folder / "run", tmp_path / "run")
    harm, message = FINISHED_DAMAGE[case]
    harm(tmp_path / "run")
    refused(folder / "tiny.yaml", tmp_path / "run", message)


def test_of_two_recipes_claiming_one_folder_at_once_exactly_one_gets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.yaml").write_text(TINY)
    (tmp_path / "b.yaml").write_text(TINY.replace("seed: 1", "seed: 2"))
    out = tmp_path / "run"
    import growc.io

    publish = growc.io.rename_no_replace

    def rival_first(source: object, target: object) -> None:
        if Path(str(target)).name == "run.json" and not Path(str(target)).exists():
            Path(str(target)).write_text('{"format": "growc-run", "recipe_sha256": "the other recipe"}\n')
        publish(source, target)

    # b's claim lands between a's check and write
    monkeypatch.setattr("growc.train.runfolder.rename_no_replace", rival_first)
    with pytest.raises(GrowcError, match=r"another growc train claimed it while this one started"):
        train(tmp_path / "a.yaml", out, progress=False)
    assert json.loads((out / "run.json").read_text())["recipe_sha256"] == "the other recipe"


def test_a_final_artifact_swapped_for_another_runs_is_refused_on_rerun(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = finished
    mine = tmp_path / "mine"
    shutil.copytree(folder / "run", mine)
    (tmp_path / "other.yaml").write_text(TINY.replace("seed: 1", "seed: 2"))
    train(tmp_path / "other.yaml", tmp_path / "other", progress=False)
    shutil.rmtree(mine / "final")
    shutil.copytree(tmp_path / "other" / "final", mine / "final")
    with pytest.raises(GrowcError, match=r"final' does not hold the weights this run's grown phase ended with"):
        train(folder / "tiny.yaml", mine, progress=False)
