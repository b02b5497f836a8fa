"""Compiling growth specs: checks against the graph, artifacts (atomic, round trip), and refusing tampered weights."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from growc.compile.build import (
    ARTIFACT_FILES,
    build_parent,
    check_spec,
    compile_spec,
    grow,
    load,
    probe_tolerance,
    write_artifact,
)
from growc.errors import GrowcDataError, GrowcError, GrowcExistsError
from growc.fx.analysis import exactness_tolerance
from growc.io import save_state_dict, sha256_file
from growc.models import resolve_model
from growc.passes import materialize, templatize
from growc.spec.document import GrowcSpecError
from growc.spec.growth import load_spec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "specs").glob("*.yaml"))

SMALL = """\
growc: 1
name: small
seed: 3
parents:
  - {model: growc.models:CNN1d, kwargs: {width: 4, num_classes: 3}, weights: p0.safetensors}
  - {model: growc.models:CNN1d, kwargs: {width: 4, num_classes: 3}, weights: p1.safetensors}
input: {shape: [4, 1, 40]}
templates: {sharing: shape, per_bank: 2, init: exact}
growth:
  - {cross_init: orthogonal, cross_scale: 0.5}
  - {factor: 2, method: net2net}
"""


def _write_parents(folder: Path, seed: int = 0) -> None:
    for i in range(2):
        torch.manual_seed(seed + 100 + i)
        model = resolve_model("growc.models:CNN1d", width=4, num_classes=3)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
            for name, b in model.named_buffers():
                if name.endswith("running_var"):
                    b.uniform_(0.5, 1.5)
        save_state_dict(model, folder / f"p{i}.safetensors")


@pytest.fixture
def small_spec(tmp_path: Path) -> Path:
    _write_parents(tmp_path)
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("artifact")
    _write_parents(folder)
    (folder / "small.yaml").write_text(SMALL)
    dest, _ = grow(folder / "small.yaml", folder / "out")
    return dest


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_spec_validates_and_compiles(path: Path, tmp_path: Path) -> None:
    spec = load_spec(path)
    plan = check_spec(spec)
    assert plan["templates"]["selected"] >= 1
    dest, result = grow(spec, tmp_path / "out")
    assert sorted(os.listdir(dest)) == sorted(ARTIFACT_FILES)
    width = 1
    for step in spec.growth:
        width *= step.factor
    assert plan["width_factor"] == width
    report = json.loads((dest / "report.json").read_text())
    assert report["params"]["grown"] == sum(p.numel() for p in result.model.parameters())
    out = result.model.eval()(result.example)
    assert torch.isfinite(out).all()
    loaded = load(dest).eval()  # the resolved spec rebuilds the same graph; the probe output reproduces
    assert loaded.code == result.model.code


def test_the_resnet50_family_spec_grows_to_resnet50s_shapes(tmp_path: Path) -> None:
    """Materialized, the grown model has torchvision ResNet-50's state dict: the same names with the same shapes."""
    torchvision = pytest.importorskip("torchvision")
    result = compile_spec(ROOT / "specs" / "resnet-50-0.5x2-to-resnet-50-imagenet.yaml")
    assert result.report["params"]["materialized"] == 25_557_032  # torchvision's ResNet-50
    grown = {k: tuple(v.shape) for k, v in materialize(result.model).state_dict().items()}
    plain = {k: tuple(v.shape) for k, v in torchvision.models.resnet50(weights=None).state_dict().items()}
    assert grown == plain


def test_load_of_grow_equals_the_in_memory_result(small_spec: Path, tmp_path: Path) -> None:
    dest, result = grow(small_spec, tmp_path / "art")
    loaded = load(dest)
    assert loaded.training is True  # traced and returned in the spec's mode (train)
    expected = result.model.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    x = torch.randn(5, 1, 40)
    loaded.eval()
    result.model.eval()
    torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    assert loaded.code == result.model.code


def test_the_artifact_holds_the_resolved_spec_and_both_reports(small_spec: Path, tmp_path: Path) -> None:
    dest, _ = grow(small_spec, tmp_path / "art")
    resolved = load_spec(dest / "spec.yaml")
    assert [s.factor for s in resolved.growth] == [2, 2]
    assert resolved.growth[0].cross_scale == 0.5 and resolved.templates.window == 2
    assert resolved.parents[0].weights == str(small_spec.parent / "p0.safetensors")
    report = json.loads((dest / "report.json").read_text())
    assert [s["kind"] for s in report["steps"]] == ["fuse", "widen"]
    assert report["steps"][1]["output"]["max_rel"] <= 1e-5  # net2net preserves the function
    assert len(report["inputs"][0]["sha256"]) == 64
    assert "step 1: widen x2 by net2net" in (dest / "report.txt").read_text()
    assert "def forward" in (dest / "code.py").read_text()


def test_parents_given_as_templatized_weights_are_loaded_into_templatized_parents(tmp_path: Path) -> None:
    _write_parents(tmp_path)
    for i in range(2):
        model = resolve_model("growc.models:CNN1d", width=4, num_classes=3)
        model.load_state_dict(load_file(tmp_path / f"p{i}.safetensors"))
        gm = templatize(model, (torch.randn(4, 1, 40),), sharing="shape", init="fresh", seed=i)
        save_state_dict(gm, tmp_path / f"t{i}.safetensors")
    spec_text = SMALL.replace("p0.safetensors", "t0.safetensors").replace("p1.safetensors", "t1.safetensors")
    spec_text = spec_text.replace("init: exact", "init: fresh")
    (tmp_path / "t.yaml").write_text(spec_text)
    spec = load_spec(tmp_path / "t.yaml")
    assert check_spec(spec)["parents"][0]["templatized"] is True
    result = compile_spec(spec)
    zero = compile_spec(load_spec(tmp_path / "t.yaml", text=spec_text.replace("orthogonal", "zero")))
    assert zero.report["steps"][0]["output"]["max_rel"] <= 1e-5
    assert result.report["steps"][0]["kind"] == "fuse"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("templates: {sharing: shape, per_bank: 2, init: exact}", "templates: {layers: [features.*, head*]}"),
            "small.yaml:8:34: templates.layers[1]: pattern 'head*' matches no templatable weight of "
            "growc.models:CNN1d (4: features.0.weight, features.3.weight, features.6.weight, fc.weight)",
        ),
        (
            ("seed: 3", "seed: 3\ntrace: {leaf_modules: [features.9]}"),
            "small.yaml:4:24: trace.leaf_modules[0]: parent 0 (growc.models:CNN1d) has no submodule 'features.9'",
        ),
        (
            ("{width: 4, num_classes: 3}, weights: p1.safetensors", "{width: 4, num_classes: 5}"),
            "small.yaml:6:5: parents[1]: parent 1 is not parent 0's architecture: 'fc.weight' has shape (5, 4), "
            "parent 0's (3, 4) (every parent must have the same layers and shapes)",
        ),
        (
            ("weights: p1.safetensors", "weights: nope.safetensors"),
            "small.yaml:6:78: parents[1].weights: weights file '{dir}/nope.safetensors' does not exist",
        ),
        (
            (
                "model: growc.models:CNN1d, kwargs: {width: 4, num_classes: 3}, weights: p0",
                "model: growc.models:Nope, kwargs: {width: 4, num_classes: 3}, weights: p0",
            ),
            "small.yaml:5:13: parents[0].model: 'growc.models' has no attribute 'Nope' (model 'growc.models:Nope')",
        ),
        (
            ("{width: 4, num_classes: 3}, weights: p0", "{width: 4, classes: 3}, weights: p0"),
            "small.yaml:5:41: parents[0].kwargs: building 'growc.models:CNN1d' failed: TypeError: CNN1d.__init__() "
            "got an unexpected keyword argument 'classes'",
        ),
        (
            ("[4, 1, 40]", "[4, 3, 40]"),
            "small.yaml:7:16: input.shape: parent 0 (growc.models:CNN1d) fails on an input of this shape: shape "
            "analysis: node 'features_0' (call_module features.0) fails on inputs of shapes [(4, 3, 40)]: "
            "RuntimeError: Given groups=1, weight of size [4, 1, 5], expected input[4, 3, 40] to have 1 channels, "
            "but got 3 channels instead. Do the example inputs fit the model?",
        ),
    ],
)
def test_checks_against_the_graph_point_at_the_spec_line(small_spec: Path, edit: tuple[str, str], message: str) -> None:
    assert edit[0] in SMALL
    small_spec.write_text(SMALL.replace(*edit))
    with pytest.raises(GrowcSpecError) as info:
        check_spec(small_spec)
    assert str(info.value) == f"{small_spec.parent}/{message}".replace("{dir}", str(small_spec.parent))


def test_a_parent_weights_file_that_does_not_fit_is_refused_with_the_key(small_spec: Path) -> None:
    tensors = load_file(small_spec.parent / "p1.safetensors")
    tensors["fc.weight"] = torch.zeros(3, 5)
    save_file(tensors, small_spec.parent / "p1.safetensors")
    with pytest.raises(
        GrowcSpecError,
        match=r"small.yaml:6:78: parents\[1\].weights: weights file '.*p1.safetensors' "
        r"does not match the model: 'fc.weight' has shape \[3, 5\], the model expects \[3, 4\]",
    ):
        compile_spec(small_spec)


def test_grow_refuses_an_existing_folder_and_writes_nothing_without_an_output(small_spec: Path) -> None:
    (small_spec.parent / "taken").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        grow(small_spec, small_spec.parent / "taken")
    with pytest.raises(GrowcSpecError, match=r"no output folder: set output\.folder in the spec or pass --out"):
        grow(small_spec)


def test_a_failure_while_writing_leaves_no_artifact_and_no_temporary_folder(
    small_spec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(os.listdir(small_spec.parent))

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("growc.compile.build.write_json", broken)  # fails after the weights and the probe are written
    with pytest.raises(OSError, match="No space left on device"):
        grow(small_spec, small_spec.parent / "out")
    assert set(os.listdir(small_spec.parent)) == before


def test_a_bad_parent_weights_file_is_a_located_error(small_spec: Path) -> None:
    (small_spec.parent / "p1.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(
        GrowcSpecError, match=r"small.yaml:6:78: parents\[1\].weights: weights file '.*' is not a valid"
    ):
        grow(small_spec, small_spec.parent / "out")
    assert not (small_spec.parent / "out").exists()


def test_grow_checks_the_spec_against_the_graph_first(small_spec: Path) -> None:
    small_spec.write_text(SMALL.replace("seed: 3", "seed: 3\ntrace: {leaf_modules: [features.9]}"))
    with pytest.raises(GrowcSpecError, match=r"small.yaml:4:24: trace.leaf_modules\[0\]: parent 0"):
        grow(small_spec, small_spec.parent / "out")


def test_compiling_leaves_the_callers_random_state_alone(small_spec: Path) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    compile_spec(small_spec)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------------------- tampered weights


def _tampered(artifact: Path, tmp_path: Path, change) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    tensors = load_file(copy / "model.safetensors")
    change(tensors)
    save_file(tensors, copy / "model.safetensors")
    return copy


def _first_key(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k in tensors if k.endswith("templates"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda t: t.__setitem__(_first_key(t), torch.zeros(1)),
            r"does not match the model: '{key}' has shape \[1\], the model expects \[2, 4, 1, 5\]$",
        ),
        (
            lambda t: t.pop(_first_key(t)),
            r"does not match the model: missing key\(s\) '{key}'$",
        ),
        (
            lambda t: t.__setitem__("backdoor.weight", torch.zeros(2)),
            r"does not match the model: unexpected key\(s\) 'backdoor.weight'$",
        ),
        (
            lambda t: t.__setitem__(_first_key(t), t[_first_key(t)].double()),
            r"does not match the model: '{key}' has dtype torch.float64, the model expects torch.float32$",
        ),
        (
            lambda t: t[_first_key(t)].add_(1e-3),
            r"was modified after growc grow wrote it: its SHA-256 differs from the one in report.json",
        ),
    ],
    ids=["wrong-shape", "missing-key", "extra-key", "wrong-dtype", "changed-values"],
)
def test_tampered_weights_are_refused_with_a_specific_message(
    artifact: Path,
    tmp_path: Path,
    change,
    message: str,
) -> None:
    key = _first_key(load_file(artifact / "model.safetensors"))
    copy = _tampered(artifact, tmp_path, change)
    with pytest.raises(GrowcError, match=message.replace("{key}", re.escape(key))):
        load(copy)


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Exploit()}, copy / "model.safetensors", _use_new_zipfile_serialization=True)
    with pytest.raises(GrowcError, match="is not a valid safetensors file"):
        load(copy)
    assert not marker.exists()


def test_an_incomplete_or_foreign_folder_is_refused(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(GrowcError, match="no such folder"):
        load(tmp_path / "missing")
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    (copy / "spec.yaml").unlink()
    with pytest.raises(GrowcError, match=r"is not a complete growc artifact: missing spec\.yaml"):
        load(copy)


def _rehash(folder: Path, name: str) -> None:
    report = json.loads((folder / "report.json").read_text())
    report["files"][name]["sha256"] = sha256_file(folder / name)
    (folder / "report.json").write_text(json.dumps(report))


def test_a_changed_probe_is_refused_and_one_that_does_not_reproduce_too(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    probe = load_file(copy / "probe.safetensors")
    probe["output"] = probe["output"] + 1.0
    save_file(probe, copy / "probe.safetensors")
    with pytest.raises(GrowcError, match=r"probe\.safetensors in '.*' was modified after growc grow wrote it"):
        load(copy)
    _rehash(copy, "probe.safetensors")  # a consistent artifact whose model does not give the saved output
    with pytest.raises(GrowcError, match="output on the probe input differs from the saved one"):
        load(copy)
    assert isinstance(load(copy, verify=False), torch.fx.GraphModule)
    probe["input"] = probe["input"][:1]
    save_file(probe, copy / "probe.safetensors")
    _rehash(copy, "probe.safetensors")
    with pytest.raises(GrowcError, match=r"holds an input of shape \[1, 1, 40\] and dtype torch.float32; the spec's"):
        load(copy)


def test_an_artifact_without_checksums_is_refused(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    report = json.loads((copy / "report.json").read_text())
    del report["files"]
    (copy / "report.json").write_text(json.dumps(report))
    with pytest.raises(GrowcError, match=r"has no SHA-256 for model\.safetensors: the artifact's integrity cannot be"):
        load(copy)


def test_loading_never_runs_code_an_artifact_names_unless_trusted(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    marker = tmp_path / "pwned"
    spec = (copy / "spec.yaml").read_text()
    (copy / "spec.yaml").write_text(
        spec.replace("model: growc.models:CNN1d", "model: os:system", 1).replace(
            "kwargs: {width: 4, num_classes: 3}", f"kwargs: {{command: 'touch {marker}'}}", 1
        )
    )
    with pytest.raises(GrowcSpecError, match=r"parents\[0\].model: 'os:system' imports and runs code named by"):
        load(copy)
    assert not marker.exists()


def test_overwrite_replaces_only_an_artifact_folder(small_spec: Path) -> None:
    precious = small_spec.parent / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(GrowcError, match=r"refusing to replace '.*precious': it is not a growc artifact folder"):
        grow(small_spec, precious, overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    dest, _ = grow(small_spec, small_spec.parent / "art")
    grow(small_spec, dest, overwrite=True)  # an artifact may be replaced
    assert sorted(os.listdir(dest)) == sorted(ARTIFACT_FILES)


# ------------------------------------------------------------------------------------------------ interrupts

_SLOW_GROW = """
import sys, time
import growc.compile.build as G
write = G.write_json
def slow(path, data):
    write(path, data)
    print("WRITING", flush=True)
    time.sleep(120)
G.write_json = slow
from growc.cli import main
sys.exit(main(["grow", sys.argv[1], "--out", sys.argv[2]]))
"""


def _interrupt(spec: Path, out: Path, sig: int) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_SLOW_GROW), str(spec), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", (line, proc.stderr.read() if proc.stderr else "")
        assert any(p.name.startswith(".out.tmp-") for p in out.parent.iterdir())  # mid-write: the temp folder exists
        proc.send_signal(sig)
        return proc.wait(timeout=180)  # a loaded 2-core machine may take a while to unwind (CI: > 60 s once)
    finally:
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupting_grow_mid_write_leaves_no_artifact_and_no_partial_file(small_spec: Path, sig: int) -> None:
    before = set(os.listdir(small_spec.parent))
    code = _interrupt(small_spec, small_spec.parent / "out", sig)
    assert code == (130 if sig == signal.SIGINT else 128 + signal.SIGTERM)
    assert set(os.listdir(small_spec.parent)) == before


def test_a_killed_grow_leaves_no_artifact_and_the_next_grow_clears_its_debris(small_spec: Path) -> None:
    out = small_spec.parent / "out"
    assert _interrupt(small_spec, out, signal.SIGKILL) == -signal.SIGKILL
    assert not out.exists()
    debris = [p for p in small_spec.parent.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(debris) == 1  # SIGKILL allows no cleanup: only the hidden temporary folder is left
    grow(small_spec, out)
    assert sorted(os.listdir(out)) == sorted(ARTIFACT_FILES)
    assert not any(p.name.startswith(".out.tmp-") for p in small_spec.parent.iterdir())


_numbers = st.one_of(st.integers(-3, 70), st.sampled_from([0, 10**400, 2**64]), st.floats(-1e3, 1e3))


@settings(max_examples=15)
@given(
    factor=_numbers,
    per_bank=st.one_of(st.integers(-1, 3000), st.sampled_from([10**6])),
    shape=st.lists(st.integers(0, 48), min_size=1, max_size=4),
    seed=st.one_of(st.integers(-5, 2**40), st.sampled_from([2**64])),
    width=st.one_of(st.integers(-2, 12), st.floats(0, 12)),
    value=_numbers,
    scale=_numbers,
)
def test_fuzzed_numbers_through_check_and_compile_raise_only_growc_errors(
    tmp_path_factory: pytest.TempPathFactory,
    factor,
    per_bank,
    shape,
    seed,
    width,
    value,
    scale,
) -> None:
    doc = {
        "growc": 1,
        "seed": seed,
        "parents": [{"model": "growc.models:CNN1d", "kwargs": {"width": width, "num_classes": 3}}] * 2,
        "input": {"shape": shape},
        "templates": {"per_bank": per_bank, "sharing": "shape"},
        "growth": [{"cross_scale": scale}, {"factor": factor}, {"target": {"kwarg": "width", "value": value}}],
    }
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "s.yaml").write_text(yaml.safe_dump(doc))
    try:
        spec = load_spec(folder / "s.yaml")
        check_spec(spec)
        compile_spec(spec)
    except GrowcError as error:
        assert str(error).startswith(str(folder / "s.yaml") + ":"), str(error)


# ---------------------------------------------------------------------------------------- hostile outputs


def test_grow_through_dotdot_never_replaces_a_user_folder_or_file(small_spec: Path) -> None:
    root = small_spec.parent
    (root / "userdata").mkdir()
    (root / "userdata" / "thesis.tex").write_text("years of work")
    (root / "keep.yaml").write_text("mine")
    with pytest.raises(GrowcExistsError, match=r"refusing to replace '.*userdata': it is not a growc artifact"):
        grow(small_spec, root / "nonexistent" / ".." / "userdata", overwrite=True)
    with pytest.raises(GrowcExistsError, match=r"refusing to replace '.*keep.yaml': it is not a folder"):
        grow(small_spec, root / "x" / ".." / "keep.yaml", overwrite=True)
    assert (root / "userdata" / "thesis.tex").read_text() == "years of work"
    assert (root / "keep.yaml").read_text() == "mine"
    assert not (root / "nonexistent").exists() and not (root / "x").exists()


def test_overwrite_never_takes_a_users_files_with_an_artifact_or_a_forged_report(small_spec: Path) -> None:
    root = small_spec.parent
    dest, _ = grow(small_spec, root / "art")
    (dest / "notes.md").write_text("the user's notes")
    with pytest.raises(GrowcExistsError, match=r"refusing to replace '.*art': it is not a growc artifact folder"):
        grow(small_spec, dest, overwrite=True)
    assert (dest / "notes.md").read_text() == "the user's notes"
    (root / "user").mkdir()
    (root / "user" / "thesis.tex").write_text("years of work")
    (root / "user" / "report.json").write_text('{"format": "growc-artifact"}')
    with pytest.raises(GrowcExistsError, match="refusing to replace"):
        grow(small_spec, root / "user", overwrite=True)
    assert (root / "user" / "thesis.tex").read_text() == "years of work"


# ------------------------------------------------------------------------------------------ bounded work


def _spec_text(parents: int = 2, steps: str = "  - {cross_init: orthogonal}\n", width: int = 4) -> str:
    parent = f"  - {{model: cnn1d-{width}, kwargs: {{num_classes: 3}}}}\n"
    return f"growc: 1\nparents:\n{parent * parents}input: {{shape: [2, 1, 40]}}\ngrowth:\n{steps}"


def test_factors_that_multiply_beyond_the_bound_are_refused_across_steps(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(_spec_text(steps="  - {cross_init: orthogonal}\n" + "  - {factor: 64}\n" * 30))
    with pytest.raises(
        GrowcSpecError,
        match=r"s.yaml:8:14: growth\[1\].factor: the steps so far make the model 128x wider than its parents: more "
        r"than 64x in all",
    ):
        load_spec(path)


def test_more_parents_than_the_largest_factor_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(_spec_text(parents=65))
    with pytest.raises(GrowcSpecError, match=r"s.yaml:3:3: parents: 65 parents is more than 64"):
        load_spec(path)


@pytest.mark.parametrize(
    ("width", "steps", "message"),
    [
        (200_000, "  - {cross_init: orthogonal}\n", r"parents\[0\].kwargs: parent 0 \(cnn1d-200000\) has [\d,]+ param"),
        (8000, "  - {cross_init: orthogonal}\n  - {factor: 4}\n", r"growth: the steps make the parents 8x wider: up"),
    ],
    ids=["parent", "grown"],
)
def test_sizes_the_spec_implies_are_bounded_before_anything_is_allocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, width: int, steps: str, message: str
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(_spec_text(steps=steps, width=width))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a parent was built for real")

    monkeypatch.setattr("growc.compile.build.build_parent", never)
    for run in (check_spec, compile_spec):
        with pytest.raises(GrowcSpecError, match=message):
            run(path)


def test_a_tampered_spec_with_an_extra_step_is_refused_before_building(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    text = (copy / "spec.yaml").read_text()
    steps = yaml.safe_load(text)["growth"]
    assert len(steps) == 2
    data = yaml.safe_load(text)
    data["growth"].append({"factor": 4, "method": "net2net"})
    (copy / "spec.yaml").write_text(yaml.safe_dump(data))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built")

    monkeypatch.setattr("growc.compile.build.compile_spec", never)
    with pytest.raises(
        GrowcError,
        match=r"spec.yaml' does not match '.*report.json': the spec's steps \(kind, factor\) are \[\('fuse', 2\), "
        r"\('widen', 2\), \('widen', 4\)\], the report recorded \[\('fuse', 2\), \('widen', 2\)\]",
    ):
        load(copy)
    data["growth"][-1]["factor"] = 64  # 2 x 2 x 64: beyond the bound, refused as the spec is read
    (copy / "spec.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(GrowcSpecError, match=r"256x wider than its parents: more than 64x in all"):
        load(copy)


def test_a_tampered_spec_with_bigger_parents_is_refused_before_building(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    data = yaml.safe_load((copy / "spec.yaml").read_text())
    for parent in data["parents"]:
        parent["kwargs"]["width"] = 64
    (copy / "spec.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr("growc.compile.build.compile_spec", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(GrowcError, match=r"the spec's parents have \[\d+, \d+\] parameters and buffers, the report"):
        load(copy)


@pytest.mark.parametrize("how", ["deleted", "folder"])
def test_a_missing_probe_is_refused_even_without_verification(artifact: Path, tmp_path: Path, how: str) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    (copy / "probe.safetensors").unlink()
    if how == "folder":
        (copy / "probe.safetensors").mkdir()
    for verify in (True, False):
        with pytest.raises(GrowcError, match=r"is not a complete growc artifact: missing probe\.safetensors"):
            load(copy, verify=verify)


def test_a_deeply_nested_report_is_a_growc_error(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    (copy / "report.json").write_text('{"a": ' * 200_000 + "1" + "}" * 200_000)
    with pytest.raises(GrowcError, match=r"artifact report '.*report.json' is not valid JSON: nested too deeply"):
        load(copy)


def test_a_grown_model_with_non_finite_output_writes_no_artifact(small_spec: Path) -> None:
    result = compile_spec(small_spec)
    with torch.no_grad():
        next(p for p in result.model.parameters() if p.is_floating_point()).fill_(float("nan"))
    with pytest.raises(GrowcDataError, match=r"output on the example input holds \d+ NaN or infinite value\(s\)"):
        write_artifact(small_spec.parent / "out", load_spec(small_spec), result.model, result.example, result.report)
    assert not (small_spec.parent / "out").exists()


# ---------------------------------------------------------------------------------------- nothing fetched


def test_a_detection_model_spec_builds_without_reaching_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torchvision")
    import torch.hub

    def network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"tried to download {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", network)
    path = tmp_path / "s.yaml"
    ref = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"
    path.write_text(
        f"growc: 1\nparents:\n  - {{model: '{ref}', kwargs: {{num_classes: 3}}}}\ninput: {{shape: [1, 3, 64, 64]}}\n"
        "growth:\n  - {factor: 2}\n"
    )
    model = build_parent(load_spec(path), 0)
    assert sum(p.numel() for p in model.parameters()) > 0
    path.write_text(path.read_text().replace("num_classes: 3", "num_classes: 3, weights_backbone: DEFAULT"))
    with pytest.raises(
        GrowcSpecError, match=r"s.yaml:3:109: parents\[0\].kwargs.weights_backbone: growc never downloads pretrained"
    ):
        load_spec(path)


def test_a_factory_that_downloads_is_stopped_with_the_spec_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fetching.py").write_text(
        textwrap.dedent(
            """
            import urllib.request

            import torch.hub
            from torch import nn


            def hub():
                torch.hub.load_state_dict_from_url("https://example.invalid/weights.pth")
                return nn.Linear(2, 2)


            def raw():
                urllib.request.urlopen("http://127.0.0.1:9/weights")
                return nn.Linear(2, 2)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for factory, what in (
        ("hub", "download 'https://example.invalid/weights.pth'"),
        ("raw", "reach the network at 'http://127.0.0.1:9/weights'"),
    ):
        path = tmp_path / f"{factory}.yaml"
        path.write_text(
            f"growc: 1\nparents:\n  - {{model: 'fetching:{factory}'}}\ninput: {{shape: [1, 2]}}\n"
            "growth:\n  - {factor: 2}\n"
        )
        with pytest.raises(
            GrowcSpecError,
            match=rf"{factory}.yaml:3:13: parents\[0\].model: building model 'fetching:{factory}' tried to "
            rf"{re.escape(what)}: growc never downloads",
        ):
            compile_spec(path)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_parents_grow_exactly_and_load_within_their_dtypes_tolerance(tmp_path: Path, dtype: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        _spec_text(steps="  - {cross_init: zero}\n").replace("[2, 1, 40]}", f"[2, 1, 40], dtype: {dtype}}}")
    )
    dest, result = grow(path, tmp_path / "art")
    check = result.report["steps"][0]["output"]
    assert check["max_rel"] <= exactness_tolerance(getattr(torch, dtype))
    model = load(dest)
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    assert json.loads((dest / "report.json").read_text())["probe"]["tolerance"] == probe_tolerance(
        getattr(torch, dtype)
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["templates"].__setitem__("per_bank", 1024),
            r"the spec bounds the grown network at [\d,]+ elements",
        ),
        (
            lambda d: d["input"].__setitem__("shape", [4, 1, 4000]),
            r"the spec's input shape is \[4, 1, 4000\], the report",
        ),
    ],
    ids=["per-bank", "input-shape"],
)
def test_tampered_templates_or_input_are_refused_before_building(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit, message: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    data = yaml.safe_load((copy / "spec.yaml").read_text())
    edit(data)
    (copy / "spec.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr("growc.compile.build.compile_spec", lambda *a, **k: pytest.fail("the model was built"))
    with pytest.raises(GrowcError, match=message):
        load(copy)
