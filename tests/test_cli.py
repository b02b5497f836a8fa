"""The growc command line: help, templatize, outputs written atomically, clear errors."""

from __future__ import annotations

import errno
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
    assert "expected an integer from 1 to 1024, got '0'" in capsys.readouterr().err


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
    assert sorted(os.listdir("out")) == sorted(growc.compile.build.ARTIFACT_FILES)
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


# ------------------------------------------------------------------------------------ the error contract (issue 11)


def _one_error_line(err: str, command: str) -> str:
    """The whole of stderr: exactly one line, ``growc COMMAND: error: ...``."""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"growc {command}: error: "), err
    assert "Traceback" not in err
    return err[:-1]


def test_show_prints_an_artifact_whose_report_holds_only_what_load_needs(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["grow", str(spec_file)]) == 0
    report = json.loads(Path("out/report.json").read_text())
    minimal = {"format": "growc-artifact", "files": report["files"], "steps": [{"kind": "fuse", "factor": 2}]}
    minimal["probe"] = {"shape": report["probe"]["shape"]}  # load compares it with spec.yaml's before building
    Path("out/report.json").write_text(json.dumps(minimal))
    capsys.readouterr()
    assert main(["show", "out"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("growc grow: growc ?\nstep ?: fuse x2 (cross_init=?): ? parameters, ? fallback op(s)")


@pytest.mark.parametrize(
    "report",
    [
        {},
        {"name": ["a", "list"], "growc": 3, "parents": "two", "steps": {"kind": "fuse"}, "params": []},
        {"parents": [None, 3, {"model": ["x"], "params": "many", "weights": {"a": 1}}]},
        {"steps": [None, {"kind": "fuse"}, {"kind": "widen", "output": {"max_rel": "x"}}, {"output": 5}]},
        {"steps": [{"kind": 1, "factor": 2.5, "params": 1e300, "fallbacks": -1, "seconds": "x", "output": {}}]},
        {"params": {"parents": 3, "grown": "x", "materialized": 1.5}},
        {"params": {"parents": [1, "x", None, True], "grown": float("nan"), "materialized": float("inf")}},
        {"name": "line\nbreak\x1b[31m", "parents": [{"model": "m\r\n", "params": 2**80}]},
        {"steps": [{"kind": "fuse", "output": {"against": [[[[]]]], "max_rel": [0.1]}}]},
    ],
)
def test_format_report_prints_any_json_report_shape(report: dict) -> None:
    from growc.compile.build import format_report

    nested: list = []
    for _ in range(5000):  # deeper than Python's recursion limit: repr() of it would raise RecursionError
        nested = [nested]
    for value in (report, {**report, "name": nested, "parents": [{"model": nested}]}):
        text = format_report(value)
        assert text.startswith("growc grow")
        assert all(line.isprintable() for line in text.splitlines()), text


def test_a_factory_that_rejects_the_model_kwargs_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templatize", "cnn1d-4", "--model-kwargs", '{"nope": 1}']) == 1
    line = _one_error_line(capsys.readouterr().err, "templatize")
    assert line.startswith("growc templatize: error: building 'cnn1d-4' failed: TypeError: ")
    assert "unexpected keyword argument 'nope'" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--templates", "100000000"], "expected an integer from 1 to 1024, got '100000000'"),
        (["--window", "1025"], "expected an integer from 1 to 1024, got '1025'"),
        (["--input-shape", "65536,65536"], "at most 268435456 elements (2**28), got 4294967296"),
        (["--input-shape", "1,1,1,1,1,1,1,1,1"], "at most 8 dimensions, got 9"),
        (["--seed", "-1"], "expected an integer from 0 to 9223372036854775807, got '-1'"),
        (["--seed", "18446744073709551616"], "expected an integer from 0 to 9223372036854775807"),
        (["--model-kwargs", "[" * 100_000], "--model-kwargs must be a JSON object: it nests too deeply"),
        (["--model-kwargs", "1" * 5000], "--model-kwargs must be a JSON object: "),
        (["--out", ""], "expected a path, got ''"),
    ],
)
def test_sizes_beyond_bounds_and_bad_values_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["templatize", "cnn1d-4", "--init", "svd", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["channels", "cnn1d-4"], "--dot"),
        (["schema"], "--out"),
        (["templatize", "cnn1d-4"], "--out"),
        (["show", "grow.yaml"], "--graph"),
        (["show", "grow.yaml"], "--channels"),
        (["show", "grow.yaml"], "--heatmap"),
        (["train", "recipe.yaml"], "--out"),
        (["grow", "grow.yaml"], "--out"),
    ],
)
@pytest.mark.parametrize("where", ["under-a-file", "a-folder", "an-existing-file"])
def test_an_output_that_cannot_be_written_is_one_line_naming_it(
    command: list[str], option: str, where: str, spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("recipe.yaml").write_text(RECIPE)
    Path("afile.txt").write_text("mine")
    Path("afolder").mkdir()
    Path("afolder/keep.txt").write_text("mine too")
    suffix = ".png" if option == "--heatmap" else ".dot" if option in ("--dot", "--graph", "--channels") else ""
    path = {"under-a-file": f"afile.txt/x{suffix}", "a-folder": "afolder", "an-existing-file": "afile.txt"}[where]
    before = sorted(str(p) for p in Path().rglob("*"))
    assert main([*command, option, path]) == 1
    line = _one_error_line(capsys.readouterr().err, command[0])
    assert str(Path(path).resolve()) in line or f"'{path}'" in line, line
    if where == "under-a-file":
        assert f"'{Path('afile.txt').resolve()}' is a file, not a folder" in line
    assert sorted(str(p) for p in Path().rglob("*")) == before
    assert Path("afile.txt").read_text() == "mine" and Path("afolder/keep.txt").read_text() == "mine too"


def test_an_existing_file_is_replaced_only_with_overwrite(spec_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("s.json").write_text("mine")
    assert main(["schema", "--out", "s.json"]) == 1
    assert _one_error_line(capsys.readouterr().err, "schema") == (
        f"growc schema: error: '{Path('s.json').resolve()}' already exists (pass --overwrite to replace it)"
    )
    assert Path("s.json").read_text() == "mine"
    assert main(["schema", "--out", "s.json", "--overwrite"]) == 0
    assert json.loads(Path("s.json").read_text())["title"] == "GrowthSpec"
    assert main(["channels", "cnn1d-4", "--dot", "g.dot"]) == 0
    assert main(["channels", "cnn1d-4", "--dot", "g.dot"]) == 1
    assert "already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert main(["channels", "cnn1d-4", "--dot", "g.dot", "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("code", "reason", "hint"),
    [
        (errno.ENOSPC, "No space left on device", ": free some space and rerun"),
        (errno.EACCES, "Permission denied", ": check the folder's permissions"),
        (errno.EROFS, "Read-only file system", ": the file system is read-only; choose another output"),
    ],
)
@pytest.mark.parametrize(
    "command", [["schema", "--out"], ["channels", "cnn1d-4", "--dot"], ["templatize", "cnn1d-4", "--out"]]
)
def test_a_full_or_read_only_disk_is_one_line_naming_the_path(
    code: int,
    reason: str,
    hint: str,
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, reason)

    monkeypatch.setattr("os.replace", fail)
    monkeypatch.setattr("growc.io.rename_no_replace", fail)
    target = tmp_path / "out.dot"
    assert main([*command, str(target)]) == 1
    line = _one_error_line(capsys.readouterr().err, command[0])
    assert f"'{target}'" in line and line.endswith(f"{reason}{hint}"), line
    assert sorted(tmp_path.iterdir()) == []  # no temporary file left behind


def test_a_raw_os_error_is_one_line_with_the_path_and_its_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail() -> str:
        raise PermissionError(errno.EACCES, "Permission denied", "/some/where")

    monkeypatch.setattr("growc.spec.growth.spec_json_schema_text", fail)
    assert main(["schema"]) == 1
    assert capsys.readouterr().err == (
        "growc schema: error: '/some/where': Permission denied: check the folder's permissions\n"
    )


def test_a_growc_error_of_several_lines_is_printed_as_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail() -> str:
        raise growc.GrowcError("first problem\nsecond problem\x1b[2J\n")

    monkeypatch.setattr("growc.spec.growth.spec_json_schema_text", fail)
    assert main(["schema"]) == 1
    assert capsys.readouterr().err == "growc schema: error: first problem; second problem\\x1b[2J\n"


def test_any_other_exception_is_one_internal_error_line_and_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail() -> str:
        raise ValueError("boom\nagain")

    monkeypatch.setattr("growc.spec.growth.spec_json_schema_text", fail)
    line = (
        "growc schema: internal error: ValueError: boom; again (this is a bug in growc; rerun with --debug for the "
        "traceback)\n"
    )
    assert main(["schema"]) == 1
    assert capsys.readouterr().err == line
    for argv, env in ((["--debug", "schema"], None), (["schema", "--debug"], None), (["schema"], "1")):
        if env:
            monkeypatch.setenv("GROWC_DEBUG", env)
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("Traceback (most recent call last):\n") and err.endswith(line)
        assert 'raise ValueError("boom\\nagain")' in err


def test_debug_shows_the_traceback_of_a_growc_error_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "templatize", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert err.splitlines()[-1].startswith("growc templatize: error: unknown model 'nosuch'")
    assert main(["templatize", "nosuch"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_out_of_memory_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> str:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried")

    monkeypatch.setattr("growc.spec.growth.spec_json_schema_text", fail)
    assert main(["schema"]) == 1
    line = _one_error_line(capsys.readouterr().err, "schema")
    assert line.startswith("growc schema: error: out of memory: ")
    assert line.endswith(": use a smaller model, input or growth")


def test_ctrl_c_is_exit_130_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupt() -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("growc.spec.growth.spec_json_schema_text", interrupt)
    assert main(["schema"]) == 130
    assert capsys.readouterr().err == "growc schema: interrupted; nothing was written\n"


def test_debug_is_a_documented_global_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "--debug" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--debug"])
    assert info.value.code == 2


RECIPE = """\
growc: 1
name: tiny
data: {name: synthetic, samples: 40, shape: [1, 40], classes: 3}
parents: {epochs: 1, batch_size: 16}
grow:
  parents:
    - {model: cnn1d-4, kwargs: {num_classes: 3}}
    - {model: cnn1d-4, kwargs: {num_classes: 3}}
  growth:
    - {cross_init: orthogonal}
grown: {epochs: 1, batch_size: 16}
output: {folder: run}
"""


def test_templatize_overwrite_replaces_only_what_templatize_wrote(tmp_path: Path) -> None:
    precious = tmp_path / "userdata"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    for out in (precious, tmp_path / "nonexistent" / ".." / "userdata"):
        assert main(["templatize", "cnn1d-4", "--out", str(out), "--overwrite"]) == 1
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]
    assert (precious / "thesis.tex").read_text() == "years of work"
    out = tmp_path / "art"
    assert main(["templatize", "cnn1d-4", "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["format"] == "growc-templatize"
    assert main(["templatize", "cnn1d-4", "--out", str(out), "--overwrite", "--templates", "3"]) == 0
    assert json.loads((out / "report.json").read_text())["templates"] == 3


def test_a_model_beyond_the_size_bound_is_refused_before_anything_is_allocated(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("growc.cli.MAX_MODEL_ELEMENTS", 10_000)  # 2**31 really: cnn1d-30000 would fill the memory
    for command, count in (
        (["templatize", "cnn1d-64"], "26,317"),  # 3 convolutions, 3 batch norms, a linear head of 10 classes
        (["channels", "cnn1d-64", "--model-kwargs", '{"num_classes": 3}'], "25,862"),
    ):
        assert main(command) == 1
        assert _one_error_line(capsys.readouterr().err, command[0]) == (
            f"growc {command[0]}: error: model 'cnn1d-64' has {count} parameters and buffers: more than growc's "
            "bound of 10,000 (nothing was allocated); choose a smaller model or --model-kwargs"
        )
    assert main(["templatize", "cnn1d-4"]) == 0


def test_two_drawings_into_one_file_are_refused_before_any_work(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(spec_file), "--graph", "d.dot", "--channels", "./d.dot"]) == 1
    assert _one_error_line(capsys.readouterr().err, "show") == (
        f"growc show: error: --graph and --channels both name '{Path('d.dot').resolve()}': give each drawing its own "
        "file"
    )
    assert not Path("d.dot").exists()


def test_warnings_are_one_line_each_and_an_error_stays_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    def warn() -> str:
        warnings.warn("careful\nnow", UserWarning, stacklevel=1)
        warnings.warn("careful\nnow", UserWarning, stacklevel=1)  # the same warning twice: printed once
        return "{}\n"

    def warn_then_fail() -> str:
        warnings.warn("Initializing zero-element tensors is a no-op", UserWarning, stacklevel=1)
        raise growc.GrowcError("the model fails")

    monkeypatch.setattr("growc.spec.growth.spec_json_schema_text", warn)
    assert main(["schema"]) == 0
    assert capsys.readouterr().err == "growc schema: warning: UserWarning: careful; now\n"
    monkeypatch.setattr("growc.spec.growth.spec_json_schema_text", warn_then_fail)
    assert main(["schema"]) == 1
    assert capsys.readouterr().err == "growc schema: error: the model fails\n"
    assert main(["schema", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "growc schema: warning: UserWarning: Initializing zero-element tensors is a no-op\n" in err
    assert err.endswith("growc schema: error: the model fails\n")


def test_mixture_widening_with_no_templatized_layer_is_one_located_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "growc: 1\nparents: [{model: cnn1d-4, kwargs: {num_classes: 3}}]\ninput: {shape: [2, 1, 24]}\n"
        "templates: {init: fresh, layers: []}\ngrowth: [{factor: 2, method: mixture}]\n"
    )
    assert main(["grow", str(spec), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s.yaml:5:10: growth[0]: step 0 failed: widen: method 'mixture' mixes" in err
    assert not (tmp_path / "out").exists()
