"""The growc command line: help, templatize, outputs written atomically, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import growc
from growc.cli import main


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["templatize", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--input-shape",
        "--dtype",
        "--sharing",
        "--templates",
        "--init",
        "--window",
        "--seed",
        "--leaf",
        "--model-kwargs",
        "--out",
        "--overwrite",
        "--json",
    ):
        assert option in text


def test_templatize_builtin_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templatize", "wrn-10-1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("growc templatize wrn-10-1 (input [2, 3, 32, 32])\nsharing=layer  templates=2  init=exact")
    assert "output vs original (train mode): max abs 0.000e+00, max rel 0.000e+00" in out  # a fresh model trains
    assert "banks: 10   layers: 10" in out  # stem, 3 blocks x 2 convs, 2 shortcuts, fc


def test_templatize_writes_weights_report_and_code(tmp_path: Path) -> None:
    out = tmp_path / "art"
    args = ["templatize", "cnn1d-8", "--sharing", "shape", "--init", "svd", "--templates", "1", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["code.py", "model.safetensors", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "cnn1d-8" and report["init"] == "svd" and report["input_shape"] == [2, 1, 40]
    weights = load_file(out / "model.safetensors")
    assert "growc_banks.bank0.templates" in weights
    assert "def forward" in (out / "code.py").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # an existing folder is not replaced without --overwrite, and stays intact
    assert main(args) == 1
    assert sorted(p.name for p in out.iterdir()) == ["code.py", "model.safetensors", "report.json"]
    assert main([*args, "--overwrite", "--templates", "2"]) == 0
    assert json.loads((out / "report.json").read_text())["templates"] == 2


def test_torchvision_reference_and_kwargs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torchvision")
    code = main(
        [
            "templatize",
            "torchvision:squeezenet1_1",
            "--input-shape",
            "1,3,64,64",
            "--model-kwargs",
            '{"num_classes": 7}',
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"]["max_rel"] == 0.0 and report["layers"][-1]["shape"] == [7, 512, 1, 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["templatize", "nosuch"], "growc templatize: error: unknown model 'nosuch': use a built-in"),
        (
            ["templatize", "torchvision:nosuch", "--input-shape", "1,3,8,8"],
            "growc templatize: error: torchvision has no model named 'nosuch'",
        ),
        (
            ["templatize", "growc.models:CNN1d"],
            "growc templatize: error: model 'growc.models:CNN1d' has no default "
            "input shape: pass --input-shape, e.g. 1,3,224,224",
        ),
    ],
)
def test_bad_models_get_specific_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 1
    assert capsys.readouterr().err.startswith(message)


def test_factory_must_return_a_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templatize", "builtins:dict", "--input-shape", "1"]) == 1
    assert capsys.readouterr().err == (
        "growc templatize: error: 'builtins:dict' returned dict, not a torch.nn.Module\n"
    )


def test_bad_input_shape_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["templatize", "wrn-10-1", "--input-shape", "1,x"])
    assert info.value.code == 2
    assert "expected comma-separated integers like 1,3,224,224, got '1,x'" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "growc.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"growc {growc.__version__}"


def test_input_shape_that_does_not_fit_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templatize", "wrn-10-1", "--input-shape", "2,5,32,32"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("growc templatize: error: shape analysis: node 'conv1' (call_module conv1) fails on inputs")
    assert "Do the example inputs fit the model?" in err


@pytest.mark.parametrize("option", ["--templates", "--window"])
def test_non_positive_counts_are_usage_errors(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["templatize", "wrn-10-1", option, "0"])
    assert info.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


def test_artifact_folder_has_ordinary_permissions(tmp_path: Path) -> None:
    import os

    assert main(["templatize", "cnn1d-4", "--out", str(tmp_path / "art")]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "art").stat().st_mode & 0o777 == 0o777 & ~umask


def test_channels_prints_groups_and_writes_dot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dot = tmp_path / "groups.dot"
    assert main(["channels", "wrn-10-1", "--dot", str(dot)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("growc channels wrn-10-1 (input [2, 3, 32, 32])\nstems: conv1\nheads: fc\n")
    assert "(permutable)" in out and "blocked: graph output" in out
    assert dot.read_text().startswith("graph channels {")


# ------------------------------------------------------------------------------------ specs: grow/check/show/schema

SPEC = """\
growc: 1
name: cli
parents:
  - {model: cnn1d-4, kwargs: {num_classes: 3}}
  - {model: cnn1d-4, kwargs: {num_classes: 3}}
input: {shape: [4, 1, 40]}
growth:
  - {cross_init: orthogonal}
output: {folder: out}
"""


@pytest.fixture
def spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "grow.yaml"
    path.write_text(SPEC)
    return path


def test_check_validates_and_says_what_it_checked(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(spec_file)]) == 0
    assert capsys.readouterr().out == (
        f"{spec_file}: ok: 2 parent(s) of cnn1d-4, 1 step(s), 2x wider, 4 weight(s) templatized\n"
    )


def test_check_reports_a_bad_spec_with_its_location_and_exit_code_1(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file.write_text(SPEC.replace("{cross_init: orthogonal}", "{cross_init: orthogonl}"))
    assert main(["check", str(spec_file), "--schema-only"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"growc check: error: {spec_file}:8:18: growth[0].cross_init: input should be 'orthogonal',")


def test_grow_dry_run_prints_the_plan_and_writes_nothing(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grow", str(spec_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "step 0: fuse 2 parents (x2): cross_init=orthogonal cross_scale=1.0 cross_templates=own head=sum" in out
    assert out.rstrip().endswith("total: 2x the parents' width -> out")
    assert sorted(os.listdir(spec_file.parent)) == ["grow.yaml"]


def test_grow_writes_the_artifact_and_show_prints_and_draws_it(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["grow", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert "step 0: fuse x2 (cross_init=orthogonal)" in out
    assert sorted(os.listdir("out")) == sorted(growc.build.ARTIFACT_FILES)
    assert main(["grow", str(spec_file)]) == 1
    assert "already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert main(["grow", str(spec_file), "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "growc-artifact"

    args = ["show", "out", "--graph", "g.dot", "--channels", "c.gv", "--heatmap", "h.png"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("growc grow (cli): growc ")
    assert Path("g.dot").read_text().startswith('digraph "out" {')
    assert "GridConv1d 2x2" in Path("g.dot").read_text()
    assert Path("c.gv").read_text().startswith("graph channels {")
    assert Path("h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_of_a_spec_prints_the_plan_and_can_draw_the_model_it_compiles_to(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(spec_file), "--graph", "plan.dot"]) == 0
    assert capsys.readouterr().out.startswith(f"growc plan for {spec_file} (cli)")
    assert "GridConv1d" in Path("plan.dot").read_text()
    assert not Path("out").exists()


def test_show_refuses_a_format_it_cannot_draw(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(spec_file), "--graph", "plan.txt"]) == 1
    assert "use a .dot, .gv, .svg, .png or .pdf file name" in capsys.readouterr().err


def test_schema_prints_the_json_schema_and_writes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["title"] == "GrowthSpec"
    assert main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text() == printed
