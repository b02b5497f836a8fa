"""Hugging Face transformers models as parents: ``transformers:ClassName`` references built from a config (or a
local folder, never downloaded), token-id example inputs in growth specs, and a tiny BERT grown end to end through
the command line, written as an artifact and loaded back without unpickling or downloading."""

from __future__ import annotations

import os
import pickle
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import growc
from growc.cli import main
from growc.compile.build import build_parent, example_inputs
from growc.errors import GrowcConfigError, GrowcIOError
from growc.fx.analysis import max_abs_rel_error
from growc.models import resolve_model
from growc.spec.document import GrowcSpecError

transformers = pytest.importorskip("transformers")

BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 100}
BERT_YAML = "{" + ", ".join(f"{k}: {v}" for k, v in BERT.items()) + "}"
SPEC = f"""\
growc: 1
name: tiny-bert
parents:
  - {{model: "transformers:BertModel", kwargs: {{config: {BERT_YAML}}}}}
  - {{model: "transformers:BertModel", kwargs: {{config: {BERT_YAML}}}}}
input:
  - {{shape: [2, 8], dtype: int64, vocab: 100}}
  - {{shape: [2, 8], dtype: int64, fill: 1}}
trace: {{mode: eval}}
growth:
  - {{cross_init: zero}}
"""


def _write(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# -- the resolver


def test_resolver_builds_from_the_class_config_seeded_in_eval_mode() -> None:
    torch.manual_seed(0)
    a = resolve_model("transformers:BertModel", config=BERT, add_pooling_layer=False)
    torch.manual_seed(0)
    b = resolve_model("transformers:BertModel", config=BERT, add_pooling_layer=False)
    assert type(a) is transformers.BertModel and not a.training
    assert isinstance(a.config, transformers.BertModel.config_class) and a.config.hidden_size == 32
    assert a.pooler is None  # the other keywords go to the model class
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_bad_class_name_lists_close_matches() -> None:
    with pytest.raises(GrowcConfigError, match=r"no model class 'BertModle'.*close matches: BertModel"):
        resolve_model("transformers:BertModle")
    with pytest.raises(GrowcConfigError, match=r"not a transformers\.PreTrainedModel subclass"):
        resolve_model("transformers:BertConfig")
    with pytest.raises(GrowcConfigError, match=r"BertConfig has no option 'hiden_size' \(did you mean hidden_size"):
        resolve_model("transformers:BertModel", config={"hiden_size": 32})


def test_transformers_missing_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    with pytest.raises(GrowcConfigError) as info:
        resolve_model("transformers:BertModel", config=BERT)
    assert "pip install 'growc[hf]'" in str(info.value) and "\n" not in str(info.value)


def test_pretrained_loads_a_local_folder_only_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    saved = transformers.BertModel(transformers.BertConfig(**BERT))
    saved.save_pretrained(tmp_path / "bert")
    seen: dict[str, Any] = {}
    original = transformers.BertModel.from_pretrained.__func__

    def spy(cls: type, *args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs, offline=os.environ.get("HF_HUB_OFFLINE"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.BertModel, "from_pretrained", classmethod(spy))
    before = os.environ.get("HF_HUB_OFFLINE")
    model = resolve_model("transformers:BertModel", pretrained=str(tmp_path / "bert"))
    assert seen["local_files_only"] is True and seen["use_safetensors"] is True and seen["offline"] == "1"
    assert all(torch.equal(x, y) for x, y in zip(saved.state_dict().values(), model.state_dict().values(), strict=True))
    assert os.environ.get("HF_HUB_OFFLINE") == before  # offline for the build only
    # a folder with pickled weights only is refused before anything is read
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text((tmp_path / "bert" / "config.json").read_text())
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(GrowcIOError, match="never unpickles"):
        resolve_model("transformers:BertModel", pretrained=str(tmp_path / "pickled"))


def test_a_missing_folder_or_hub_name_is_never_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in (str(tmp_path / "nowhere"), "google-bert/bert-base-uncased"):
        with pytest.raises(GrowcIOError, match="does not exist") as info:
            resolve_model("transformers:BertModel", pretrained=name)
        assert info.value.path == name and name in str(info.value)
    assert attempts == []


# -- specs


def test_token_id_inputs_are_drawn_from_the_seed(tmp_path: Path) -> None:
    spec = growc.load_spec(_write(tmp_path, SPEC))
    ids, mask = example_inputs(spec)
    again = example_inputs(growc.load_spec(_write(tmp_path, SPEC, "again.yaml")))
    assert torch.equal(ids, again[0]) and ids.dtype == torch.int64 and ids.shape == (2, 8)
    assert 0 <= int(ids.min()) and int(ids.max()) < 100
    assert torch.equal(mask, torch.ones(2, 8, dtype=torch.int64))
    assert torch.equal(ids, torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(spec.seed)))
    assert spec.model_dtype == "float32"
    # the single-input form still works and draws what it always did
    single = growc.load_spec(
        _write(tmp_path, SPEC.split("input:")[0] + "input: {shape: [2, 8]}\ngrowth: [{}]\n", "s.yaml")
    )
    (x,) = example_inputs(single)
    assert torch.equal(x, torch.randn(2, 8, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(
    ("edit", "located"),
    [
        (
            ("- {shape: [2, 8], dtype: int64, vocab: 100}", "- {shape: [2, 8], dtype: int64}"),
            "spec.yaml:7:28: input[0].dtype: an int64 input needs vocab",
        ),
        (("vocab: 100}", "vocab: 100, colour: 1}"), "spec.yaml:7:47: input[0].colour: unknown key"),
        (("trace: {mode: eval}", "trace: {capture: jit}"), "spec.yaml:9:18: trace.capture"),
    ],
)
def test_input_and_trace_errors_are_located(tmp_path: Path, edit: tuple[str, str], located: str) -> None:
    with pytest.raises(GrowcSpecError) as info:
        growc.load_spec(_write(tmp_path, SPEC.replace(*edit)))
    assert str(info.value).startswith(f"{tmp_path / located}"), str(info.value)


def test_reference_errors_point_at_the_spec_line(tmp_path: Path) -> None:
    bad_class = SPEC.replace('"transformers:BertModel", kwargs', '"transformers:BertModle", kwargs', 1)
    with pytest.raises(GrowcSpecError, match=r"spec.yaml:4:\d+: parents\[0\].model: transformers has no model class"):
        growc.check_spec(_write(tmp_path, bad_class))
    folder = SPEC.replace(f"config: {BERT_YAML}", "pretrained: no-such-folder", 1)
    with pytest.raises(GrowcSpecError, match=r"spec.yaml:4:\d+: parents\[0\].kwargs.pretrained: the pretrained folder"):
        growc.check_spec(_write(tmp_path, folder))


# -- a tiny BERT grown end to end, through the command line


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny BERT spec and the artifact ``growc grow`` wrote from it."""
    root = tmp_path_factory.mktemp("bert")
    spec = _write(root, SPEC)
    assert main(["grow", str(spec), "--out", str(root / "out")]) == 0
    return spec, root / "out"


def test_grow_writes_structured_outputs_to_the_probe(grown: tuple[Path, Path]) -> None:
    from safetensors import safe_open

    _, folder = grown
    with safe_open(folder / "probe.safetensors", "pt") as probe:
        keys = set(probe.keys())
    assert keys == {"input.0", "input.1", "output.last_hidden_state", "output.pooler_output"}
    report = growc.io.read_json(folder / "report.json", "report")
    assert report["probe"]["shapes"] == [[2, 8], [2, 8]]
    assert report["steps"][0]["output"]["max_rel"] <= report["steps"][0]["output"]["tolerance"]


def test_the_loaded_artifact_is_the_parents_sum_and_never_unpickles(
    grown: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_path, folder = grown

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("growc.load unpickled or reached the network")

    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (socket.socket, "connect")):
        monkeypatch.setattr(owner, name, refuse)
    model = growc.load(folder)  # trust_code=False: transformers references build transformers' own code only
    monkeypatch.undo()
    spec = growc.load_spec(spec_path)
    inputs = example_inputs(spec)
    with torch.no_grad():
        out = model.eval()(*inputs)
        parents = [build_parent(spec, i).eval()(*inputs) for i in range(2)]
    assert isinstance(out, transformers.modeling_outputs.ModelOutput)
    tolerance = model.meta["growc"]["artifact"]["steps"][0]["output"]["tolerance"]
    for key in ("last_hidden_state", "pooler_output"):
        _, rel = max_abs_rel_error(out[key], parents[0][key] + parents[1][key])
        assert rel <= tolerance, (key, rel)


def test_cli_errors_exit_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, SPEC.replace('"transformers:BertModel", kwargs', '"transformers:BertModle", kwargs'))
    assert main(["check", str(bad)]) == 1
    assert main(["templatize", "transformers:BertModel", "--model-kwargs", '{"pretrained": "nowhere"}']) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("growc check: error: ") and "close matches: BertModel" in err[0]
    assert err[1].startswith("growc templatize: error: ") and "'nowhere' does not exist" in err[1]


def test_a_tiny_vit_classifier_fuses_to_the_parents_sum(tmp_path: Path) -> None:
    config = "{hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, image_size: 16, "
    config += "patch_size: 8, num_labels: 5}"
    parent = f'  - {{model: "transformers:ViTForImageClassification", kwargs: {{config: {config}}}}}\n'
    text = f"growc: 1\nparents:\n{parent}{parent}input: {{shape: [2, 3, 16, 16]}}\ngrowth:\n  - {{cross_init: zero}}\n"
    result = growc.compile_spec(_write(tmp_path, text))
    check = result.report["steps"][0]["output"]
    assert check["against"] == "parents' sum" and check["max_rel"] <= check["tolerance"]
    assert result.model.meta["growc"]["fuse"]["output"] == check
    assert result.model.eval()(*result.inputs).logits.shape == (2, 5)
