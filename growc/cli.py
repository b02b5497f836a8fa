"""The ``growc`` command line.

``growc grow SPEC`` compiles a growth spec into an artifact folder; ``growc check SPEC`` validates one;
``growc show SPEC|FOLDER`` prints a plan or report and draws the graph, channel groups and coefficients;
``growc schema`` prints the specs' JSON Schema (docs/cli.md has every option).

``growc templatize MODEL [options]`` traces MODEL, converts its weights to template banks and prints the compile
report; with ``--out DIR`` it also writes ``DIR/model.safetensors``, ``DIR/report.json`` and ``DIR/code.py``
(the generated forward, for reading), atomically.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import torch

from growc.compile.build import ARTIFACT_FILES, DTYPES, probe_inputs
from growc.errors import GrowcConfigError, GrowcDataError, GrowcError, GrowcIOError
from growc.fx.trace import CAPTURES
from growc.models.zoo import BUILTIN_NAMES, default_input_shape, is_safe_reference, resolve_model
from growc.passes.config import SEED, Init, Sharing, TemplatizeConfig

__all__ = ["format_templatize_report", "main"]


MAX_INPUT_ELEMENTS = 2**28  # the growth specs' bound on the example input
MAX_TEMPLATES = 1024  # the growth specs' bound on templates per bank and windows
MAX_SEED = 2**63 - 1
MAX_MODEL_ELEMENTS = 2**31  # parameters and buffers of a model built from the command line (8 GiB of float32)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 1,3,224,224, got {_shown(text)}"
        ) from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"every dimension must be a positive integer, got {_shown(text)}")
    if len(shape) > 8:
        raise argparse.ArgumentTypeError(f"at most 8 dimensions, got {len(shape)}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise argparse.ArgumentTypeError(f"at most {MAX_INPUT_ELEMENTS} elements (2**28), got {math.prod(shape)}"[:200])
    return shape


def _bounded(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {_shown(text)}")
        return value

    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {_shown(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {_shown(text)}")
    return value


def _path(text: str) -> str:
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"expected a path, got {_shown(text)}")
    return text


def _kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except RecursionError:
        raise argparse.ArgumentTypeError("--model-kwargs must be a JSON object: it nests too deeply") from None
    except ValueError as error:  # JSONDecodeError, and integers of more digits than Python converts
        raise argparse.ArgumentTypeError(f"--model-kwargs must be a JSON object: {_one_line(str(error))}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--model-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    return value


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="growc",
        description="growc: a growth compiler for neural networks (MixtureGrowth over torch.fx graphs).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = commands.add_parser(
        "templatize",
        help="convert a model's weights to template banks and print the compile report",
        description="Trace MODEL with torch.fx, rewrite every Conv/Linear weight as a mix of shared templates, "
        "check the result against the model on a random input and print the report.",
    )
    _model_arguments(t)
    t.add_argument(
        "--sharing",
        choices=list(get_args(Sharing)),
        default=TemplatizeConfig.sharing,
        help="which weights share a bank: each its own (layer), all of one kind/shape/groups (shape), or "
        f"consecutive ones of a shape in windows of --window (shape_window). Default: {TemplatizeConfig.sharing}",
    )
    t.add_argument(
        "--templates",
        type=_bounded(1, MAX_TEMPLATES),
        default=TemplatizeConfig.templates,
        metavar="K",
        help=f"templates per bank, 1 to {MAX_TEMPLATES} (default {TemplatizeConfig.templates})",
    )
    t.add_argument(
        "--init",
        choices=list(get_args(Init)),
        default=TemplatizeConfig.init,
        help="exact: function-preserving identity basis (K raised when needed); svd: rank-K fit with "
        "predicted/measured error; fresh: Kaiming templates + orthogonal coefficients. "
        f"Default: {TemplatizeConfig.init}",
    )
    t.add_argument(
        "--window",
        type=_bounded(1, MAX_TEMPLATES),
        default=TemplatizeConfig.window,
        help=f"bank size for --sharing shape_window, 1 to {MAX_TEMPLATES} (default {TemplatizeConfig.window})",
    )
    t.add_argument(
        "--out", type=_path, default=None, metavar="DIR", help="write model.safetensors, report.json and code.py here"
    )
    t.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    t.add_argument("--json", action="store_true", help="print the report as JSON instead of a summary")
    t.set_defaults(func=_templatize)

    c = commands.add_parser(
        "channels",
        help="print (and draw) the channel analysis: axes, stems, heads, coupled channel groups",
        description="Trace MODEL and print which channel groups are coupled, what produces and reads them, and "
        "why a group is blocked; --dot writes the coupling graph as Graphviz DOT.",
    )
    _model_arguments(c)
    c.add_argument(
        "--dot", type=_path, default=None, metavar="FILE", help="write the channel-group graph as Graphviz DOT"
    )
    c.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    c.set_defaults(func=_channels)

    g = commands.add_parser(
        "grow",
        help="compile a growth spec and write the artifact folder",
        description="Validate SPEC, build the parents, run the growth steps and write an artifact folder atomically: "
        "model.safetensors, spec.yaml (resolved), report.json, report.txt, code.py, probe.safetensors.",
    )
    g.add_argument("spec", type=_path, metavar="SPEC", help="growth spec (YAML)")
    g.add_argument("--out", type=_path, default=None, metavar="DIR", help="artifact folder (overrides output.folder)")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace the folder if it exists")
    g.add_argument("--dry-run", action="store_true", help="validate and print the plan; write nothing")
    g.add_argument("--json", action="store_true", help="print the plan or report as JSON")
    g.set_defaults(func=_grow)

    k = commands.add_parser(
        "check",
        help="validate a growth spec (schema, then against the traced parents)",
        description="Validate SPEC: the schema (every error with file:line:column), then against the traced "
        "parents (leaf paths, layers patterns, one architecture, the example input, weights files).",
    )
    k.add_argument("spec", type=_path, metavar="SPEC", help="growth spec (YAML)")
    k.add_argument("--schema-only", action="store_true", help="validate the document only; build no model")
    k.set_defaults(func=_check)

    s = commands.add_parser(
        "show",
        help="print a spec's plan or an artifact's report; draw its graph, channel groups, coefficients",
        description="For a SPEC, print the plan (and draw the model it compiles to); for an artifact FOLDER, "
        "print its report (and draw the loaded model).",
    )
    s.add_argument("target", type=_path, metavar="SPEC|FOLDER", help="growth spec (YAML) or artifact folder")
    s.add_argument(
        "--graph", type=_path, default=None, metavar="FILE", help="draw the grown fx graph (.dot/.gv; .svg/.png/.pdf)"
    )
    s.add_argument(
        "--channels",
        type=_path,
        default=None,
        metavar="FILE",
        help="draw the channel-coupling groups (.dot/.gv; .svg/.png/.pdf)",
    )
    s.add_argument(
        "--heatmap", type=_path, default=None, metavar="FILE", help="draw the coefficients per layer (.png/.svg/.pdf)"
    )
    s.add_argument("--json", action="store_true", help="print the plan or report as JSON")
    s.add_argument(
        "--trust-code",
        action="store_true",
        help="load an artifact whose parents are package.module:factory references (imports and runs that code)",
    )
    s.add_argument("--overwrite", action="store_true", help="replace the drawing FILEs if they exist")
    s.set_defaults(func=_show)

    r = commands.add_parser(
        "train",
        help="run a training recipe: train the parents, grow, keep training (resumes when rerun)",
        description="Run RECIPE's phases with a progress bar per epoch, metrics, atomic checkpoints and plots. "
        "Rerunning the same command continues from the last checkpoint. Under torchrun it trains with DDP.",
    )
    r.add_argument("recipe", type=_path, metavar="RECIPE", help="training recipe (YAML)")
    r.add_argument("--out", type=_path, default=None, metavar="DIR", help="run folder (overrides output.folder)")
    r.add_argument(
        "--stop-after", type=_positive, default=None, metavar="N", help="stop after N epochs (resume by rerunning)"
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines still print)")
    r.add_argument("--json", action="store_true", help="print the results as JSON")
    r.set_defaults(func=_train)

    j = commands.add_parser(
        "schema",
        help="print the JSON Schema of growth specs (or of recipes)",
        description="Print (or write) the JSON Schema of growth specs (--recipe: of training recipes), for editors' "
        "YAML validation.",
    )
    j.add_argument("--out", type=_path, default=None, metavar="FILE", help="write it to FILE instead of printing it")
    j.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    j.add_argument("--recipe", action="store_true", help="the schema of training recipes instead")
    j.set_defaults(func=_schema)
    for command in commands.choices.values():  # also accepted after the command; SUPPRESS keeps the global one
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


_DEBUG_HELP = "on an error, print the traceback too (or set GROWC_DEBUG=1)"


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help=f"a built-in ({'; '.join(BUILTIN_NAMES)}), torchvision:NAME (weights=None), transformers:ClassName "
        '(--model-kwargs \'{"config": {...}}\', or a local folder as "pretrained") or package.module:factory',
    )
    p.add_argument(
        "--input-shape",
        type=_shape,
        default=None,
        help="example input shape, e.g. 1,3,224,224 (built-in models have a default)",
    )
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the model and input (default float32)"
    )
    p.add_argument(
        "--seed",
        type=_bounded(0, MAX_SEED),
        default=SEED,
        help=f"seed of every random draw, the example input too (default {SEED})",
    )
    p.add_argument(
        "--leaf",
        action="append",
        default=[],
        metavar="PATH",
        help="dotted path of a submodule not to trace into (repeatable)",
    )
    p.add_argument("--model-kwargs", type=_kwargs, default={}, help="JSON object of keyword arguments for MODEL")
    p.add_argument(
        "--vocab",
        type=_bounded(1, 2**31 - 1),
        default=None,
        metavar="N",
        help="the example input is int64 token ids in [0, N) (e.g. for transformers:BertModel), not standard normal",
    )
    p.add_argument(
        "--capture",
        choices=CAPTURES,
        default=TemplatizeConfig.capture,
        help=f"how MODEL is captured: fx, export (torch.export) or auto (fx, else export; default "
        f"{TemplatizeConfig.capture})",
    )


def _model_and_input(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, tuple[int, ...]]:
    torch.manual_seed(args.seed)
    dtype = DTYPES[args.dtype]
    _check_model_size(args.model, args.model_kwargs)
    try:
        model = resolve_model(args.model, **args.model_kwargs).to(dtype)
    except GrowcError:
        raise
    except Exception as error:  # noqa: BLE001 - a factory can raise anything: say which model and its kwargs
        raise GrowcConfigError(
            f"building '{args.model}' with --model-kwargs {json.dumps(args.model_kwargs)[:200]} failed: "
            f"{type(error).__name__}: {error}"
        ) from None
    shape = args.input_shape or default_input_shape(args.model)
    if shape is None:
        raise GrowcError(f"model '{args.model}' has no default input shape: pass --input-shape, e.g. 1,3,224,224")
    generator = torch.Generator().manual_seed(args.seed)
    if args.vocab is not None:
        example = torch.randint(0, args.vocab, shape, generator=generator, dtype=torch.int64)
    else:
        example = torch.randn(shape, generator=generator).to(dtype)
    return model, example, shape


def _check_model_size(ref: str, kwargs: dict[str, Any]) -> None:
    """Refuse a model beyond :data:`MAX_MODEL_ELEMENTS` before it is allocated: built on the meta device (shapes
    only). Only growc's own and torchvision's models are built twice; a factory that cannot build on the meta device
    is left to the real build."""
    if not is_safe_reference(ref):
        return
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            probe = resolve_model(ref, **kwargs)
        count = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    except Exception:  # noqa: BLE001 - the real build raises the error with its message
        return
    if count > MAX_MODEL_ELEMENTS:
        raise GrowcDataError(
            f"model '{ref}' has {count:,} parameters and buffers: more than growc's bound of {MAX_MODEL_ELEMENTS:,} "
            "(nothing was allocated); choose a smaller model or --model-kwargs"
        )


def _channels(args: argparse.Namespace) -> int:
    from growc.fx.trace import trace
    from growc.io import atomic_write_text
    from growc.passes import analyze_channels

    if args.dot:
        _output_file(args.dot, overwrite=args.overwrite)
    model, example, shape = _model_and_input(args)
    analysis = analyze_channels(trace(model, (example,), capture=args.capture, leaf_modules=args.leaf), (example,))
    print(f"growc channels {args.model} (input {list(shape)})")
    print(analysis.summary())
    if args.dot:
        atomic_write_text(args.dot, analysis.to_dot(), overwrite=args.overwrite)
        print(f"wrote {args.dot}")
    return 0


def _version() -> str:
    from growc.version import __version__

    return __version__


def _fmt_error(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def format_templatize_report(report: dict[str, Any], title: str = "") -> str:
    """A human summary of a templatize report: one line per bank, totals, skipped weights, output check."""
    lines = [title] if title else []
    lines.append(
        f"sharing={report['sharing']}  templates={report['templates']}  init={report['init']}  seed={report['seed']}"
    )
    header = (
        f"{'bank':<8} {'kind':<7} {'weight shape':<20} {'groups':>6} {'layers':>6} {'K':>4} "
        f"{'pred err':>9} {'meas err':>9}"
    )
    lines += [header, "-" * len(header)]
    for bank in report["banks"]:
        shape = "x".join(str(s) for s in bank["weight_shape"])
        lines.append(
            f"{bank['name']:<8} {bank['kind']:<7} {shape:<20} {bank['groups']:>6} {len(bank['layers']):>6} "
            f"{bank['templates']:>4} {_fmt_error(bank.get('predicted_error')):>9} "
            f"{_fmt_error(bank.get('measured_error')):>9}"
        )
    params = report["params"]
    lines.append(
        f"banks: {len(report['banks'])}   layers: {len(report['layers'])}   "
        f"parameters: {params['before']:,} -> {params['after']:,} ({params['after'] / max(params['before'], 1):.2f}x)"
    )
    lines += [f"note: {note}" for note in report.get("notes", [])]
    for item in report.get("trace", {}).get("fallback_leaves", []):
        lines.append(f"trace fallback: '{item['module']}' ({item['type']}) kept as a leaf: {item['construct']}")
    for item in report["skipped"]:
        lines.append(f"skipped: {item['target']}: {item['reason']}")
    real = report.get("shapes", {}).get("real_compute_nodes", [])
    if real:
        lines.append(f"shape analysis ran {len(real)} node(s) on zeros: {', '.join(real)}")
    if "output" in report:
        out = report["output"]
        lines.append(
            f"output vs original ({out['mode']} mode): max abs {out['max_abs']:.3e}, max rel {out['max_rel']:.3e}"
        )
    return "\n".join(lines)


def _templatize(args: argparse.Namespace) -> int:
    from growc.io import artifact_format, atomic_directory, check_destination, save_state_dict, write_json
    from growc.passes import templatize

    def replaceable(folder: Path) -> bool:
        return artifact_format(folder) == "growc-templatize"

    what = "a folder growc templatize wrote (its report.json says so)"
    if args.out:  # refused before the work, and checked again when the folder is published
        _output_folder(args.out)
        check_destination(args.out, overwrite=args.overwrite, replaceable=replaceable, what=what)
    model, example, shape = _model_and_input(args)
    gm = templatize(
        model,
        (example,),
        sharing=args.sharing,
        templates=args.templates,
        init=args.init,
        seed=args.seed,
        window=args.window,
        leaf_modules=args.leaf,
        capture=args.capture,
    )
    report = gm.meta["growc"]["templatize"]
    if args.out:
        with atomic_directory(args.out, overwrite=args.overwrite, replaceable=replaceable, what=what) as tmp:
            save_state_dict(gm, tmp / "model.safetensors", metadata={"growc": _version(), "model": args.model})
            meta = {"format": "growc-templatize", "growc": _version(), "model": args.model}
            write_json(tmp / "report.json", {**meta, "input_shape": list(shape), **report})
            (tmp / "code.py").write_text(gm.code)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_templatize_report(report, title=f"growc templatize {args.model} (input {list(shape)})"))
        if args.out:
            print(f"wrote {args.out}/model.safetensors, report.json, code.py")
    return 0


def _grow(args: argparse.Namespace) -> int:
    from growc.compile.build import check_spec, format_plan, format_report, grow

    if args.dry_run:
        plan = check_spec(args.spec)
        if args.out:
            plan["output"] = args.out
        print(_json(plan) if args.json else format_plan(plan))
        return 0
    if args.out:
        _output_folder(args.out)
    dest, result = grow(args.spec, args.out, overwrite=args.overwrite)
    if args.json:
        print(_json(result.report))
    else:
        print(format_report(result.report))
        print(f"wrote {dest}/ ({', '.join(ARTIFACT_FILES)})")
    return 0


def _check(args: argparse.Namespace) -> int:
    from growc.compile.build import check_spec
    from growc.spec.growth import load_spec

    spec = load_spec(args.spec)
    if args.schema_only:
        print(f"{args.spec}: ok (schema): {len(spec.parents)} parent(s), {len(spec.growth)} step(s)")
        return 0
    plan = check_spec(spec)
    print(
        f"{args.spec}: ok: {len(spec.parents)} parent(s) of {spec.parents[0].model}, {len(spec.growth)} step(s), "
        f"{plan['width_factor']}x wider, {plan['templates']['selected']} weight(s) templatized"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from growc.compile.build import check_spec, compile_spec, format_plan, format_report, load
    from growc.fx.draw import coefficient_heatmap, graph_dot, write_graphic

    target = Path(args.target)
    drawing = args.graph or args.channels or args.heatmap
    named: dict[Path, str] = {}
    for option, path in (("--graph", args.graph), ("--channels", args.channels), ("--heatmap", args.heatmap)):
        if path:
            resolved = _output_file(path, overwrite=args.overwrite)
            if resolved in named:
                raise GrowcConfigError(
                    f"{named[resolved]} and {option} both name '{resolved}': give each drawing its own file"
                )
            named[resolved] = option
    if target.is_dir():
        model = load(target, trust_code=args.trust_code)
        report = model.meta["growc"]["artifact"]
        print(_json(report) if args.json else format_report(report))
        from growc.io import load_state_dict

        probe = target / "probe.safetensors"
        example = probe_inputs(load_state_dict(probe)) if probe.is_file() else None
    else:
        plan = check_spec(target)
        print(_json(plan) if args.json else format_plan(plan))
        if not drawing:
            return 0
        result = compile_spec(target)
        model, example = result.model, result.inputs
    if args.graph:
        print(f"wrote {write_graphic(graph_dot(model, title=target.name), args.graph, overwrite=args.overwrite)}")
    if args.channels:
        from growc.passes import analyze_channels

        if example is None:
            raise GrowcError(f"'{target}' has no probe.safetensors: the channel analysis needs an example input")
        dot = analyze_channels(model, example).to_dot()
        print(f"wrote {write_graphic(dot, args.channels, overwrite=args.overwrite)}")
    if args.heatmap:
        title = f"coefficients of {target.name}"
        print(f"wrote {coefficient_heatmap(model, args.heatmap, title=title, overwrite=args.overwrite)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from growc.train.loop import StoppedEarly, format_results, train

    if args.out:
        _output_folder(args.out)
    try:
        results = train(args.recipe, args.out, stop_after=args.stop_after, progress=not args.no_progress)
    except StoppedEarly as stop:
        print(f"growc train: {stop}")
        return 0
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results, indent=2, default=str) if args.json else format_results(results))
    return 0


def _schema(args: argparse.Namespace) -> int:
    from growc.io import atomic_write_text
    from growc.spec.growth import spec_json_schema_text
    from growc.spec.recipe import recipe_json_schema_text

    text = recipe_json_schema_text() if args.recipe else spec_json_schema_text()
    if args.out:
        _output_file(args.out, overwrite=args.overwrite)
        atomic_write_text(args.out, text, overwrite=args.overwrite)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds like an exception: atomic writers remove their temporary files


# -------------------------------------------------------------------------------------- outputs, checked up front


def _parent_is_a_folder(target: Path, given: str) -> None:
    for parent in target.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise GrowcIOError(
                    f"'{parent}' is a file, not a folder: '{given}' cannot be written there; choose another path",
                    path=str(parent),
                )
            return


def _output_file(given: str, *, overwrite: bool) -> Path:
    """Refuse a FILE output before any work: under a file, a folder, or (without ``--overwrite``) an existing file."""
    target = Path(given).resolve()
    _parent_is_a_folder(target, given)
    if target.is_dir():
        raise GrowcIOError(f"'{target}' is a folder; give a file name", path=str(target))
    if not overwrite and os.path.lexists(target):
        raise GrowcIOError(f"'{target}' already exists (pass --overwrite to replace it)", path=str(target))
    return target


def _output_folder(given: str) -> None:
    """Refuse a DIR output under a file before any work (whether it may be replaced is the writer's to check)."""
    _parent_is_a_folder(Path(given).resolve(), given)


def _json(data: Any) -> str:
    try:
        return json.dumps(data, indent=2, default=str)
    except (RecursionError, ValueError) as error:
        raise GrowcError(
            f"cannot print it as JSON: {'nested too deeply' if isinstance(error, RecursionError) else error}"
        ) from None


# ------------------------------------------------------------------------------------------ errors: one line each

_HINTS = {
    errno.ENOSPC: ": free some space and rerun",
    errno.EDQUOT: ": free some space and rerun",
    errno.EACCES: ": check the folder's permissions",
    errno.EPERM: ": check the folder's permissions",
    errno.EROFS: ": the file system is read-only; choose another output",
}
_MAX_LINE = 2000


def _one_line(text: str) -> str:
    """Line breaks joined with '; ', other unprintable characters escaped (no terminal control codes)."""
    text = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."


def _os_message(error: OSError) -> str:
    if error.strerror is None:  # raised with a message of its own
        return str(error) or type(error).__name__
    where = "".join(f"'{os.fsdecode(name)}': " for name in (error.filename, error.filename2) if name is not None)
    return f"{where}{error.strerror}{_HINTS.get(error.errno or -1, '')}"


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error))


def _print_warnings(command: str, caught: list[warnings.WarningMessage]) -> None:
    shown = dict.fromkeys(f"{w.category.__name__}: {_one_line(str(w.message))}" for w in caught)
    for text in shown:
        print(f"growc {command}: warning: {text}", file=sys.stderr)


def _fail(command: str, kind: str, message: str, debug: bool, caught: list[warnings.WarningMessage]) -> int:
    """Print the error's one line (after the warnings and the traceback with ``--debug``); return 1."""
    if debug:
        _print_warnings(command, caught)
        traceback.print_exc(file=sys.stderr)
    print(f"growc {command}: {kind}: {_one_line(message)}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``growc`` command. Returns the exit status: 0 ok; 1 a bad input or environment (one line
    on stderr, ``growc COMMAND: error: ...``); 130 interrupted. Usage errors exit with status 2 (argparse's
    ``SystemExit``). ``--debug`` (or ``GROWC_DEBUG=1``) adds the traceback to an error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("GROWC_DEBUG", "") not in ("", "0")
    command = args.command
    previous = signal.getsignal(signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        signal.signal(signal.SIGTERM, _terminate)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:  # one line each after a success; none after an error
            code = int(args.func(args))
        _print_warnings(command, caught)
        return code
    except KeyboardInterrupt:
        after = "rerun the command to resume" if command == "train" else "nothing was written"
        print(f"growc {command}: interrupted; {after}", file=sys.stderr)
        return 130
    except GrowcError as error:
        return _fail(command, "error", str(error) or type(error).__name__, debug, caught)
    except OSError as error:
        return _fail(command, "error", _os_message(error), debug, caught)
    except Exception as error:  # noqa: BLE001 - the last resort: one line, never a traceback unless --debug
        if _out_of_memory(error):
            message = f"out of memory: {error}: use a smaller model, input or growth"
            return _fail(command, "error", message, debug, caught)
        message = f"{type(error).__name__}: {error} (this is a bug in growc; rerun with --debug for the traceback)"
        return _fail(command, "internal error", message, debug, caught)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
