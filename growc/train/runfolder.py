"""The run-folder protocol of ``growc train``: which folder a run may use, and the records that let it resume.

The run folder (``output.folder`` or ``--out``, resolved once) holds everything::

    run.json              "format": "growc-run" and the recipe's fingerprint (a folder only resumes its recipe)
    recipe.yaml           the resolved recipe
    parent0/ parent1/     model.safetensors (the trained templatized parent), done.json (its SHA-256, the history);
                          checkpoints/epoch-NNNN/ while running (the newest two)
    grown-artifact/       the growth's artifact (growc.load reads it), grow.json (accuracy right after growth, the
                          SHA-256 of every artifact file)
    grown/                the continued training's checkpoints, then model.safetensors and done.json
    final/                the trained grown network as an artifact (growc.load reads it)
    metrics.jsonl, metrics.csv, results.json, results.md, curves.png

A run folder is new, empty, or a run folder of the same recipe; anything else is refused before any work.

Owns: the recipe's :func:`fingerprint`; :func:`inspect_run_folder` and :func:`write_run_json` (the claim, exactly
one of two runs claiming one folder at once gets it); :class:`PhaseFolder` (a phase's checkpoints, then its weights
and done.json, verified before reuse); :class:`RunFolder` (the claim with recipe.yaml, grow.json, the final
artifact's check).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from growc.compile.build import load
from growc.errors import GrowcError, GrowcIOError
from growc.io import atomic_file, atomic_write_text, load_into, rename_no_replace, save_tensors, sha256_file
from growc.spec.growth import GrowthSpec
from growc.spec.recipe import RecipeSpec
from growc.train.checkpoint import Checkpoints
from growc.train.distributed import Distributed
from growc.train.files import Fields, discard, read_json, read_tensors, read_verified, writing

__all__ = [
    "GROWTH_FORMAT",
    "PHASE_FORMAT",
    "RUN_FORMAT",
    "PhaseFolder",
    "RunFolder",
    "fingerprint",
    "inspect_run_folder",
    "write_run_json",
]

RUN_FORMAT = "growc-run"
PHASE_FORMAT = "growc-phase"
GROWTH_FORMAT = "growc-growth"
# what growc writes at the top of a run folder: a folder holding any of these (but no run.json) is a damaged run
_RUN_ENTRY = re.compile(
    r"recipe\.yaml|parent\d+|grown|grown-artifact|final|metrics\.(jsonl|csv)|results\.(json|md)|curves\.png"
)
_RUN_JSON_TMP = ".run.json.tmp-"
_FLOPS_NUMBERS = ("per_sample", "per_step", "steps", "samples", "ranks", "total")
_PHASE_KEYS = ("phase", "epochs", "history", "params", "flops", "test_acc")


def fingerprint(recipe: RecipeSpec, spec: GrowthSpec) -> str:
    """What a run folder belongs to: the recipe (but where it writes) and the growth spec it uses, resolved."""
    data = {"recipe": recipe.model_dump(mode="json", exclude={"output"}), "growth": spec.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def write_run_json(out: Path, data: dict[str, Any]) -> None:
    """run.json, through a temporary file (``.run.json.tmp-PID``, which a new run folder may hold) and a rename."""
    run = out / "run.json"
    tmp = out / f"{_RUN_JSON_TMP}{os.getpid()}"
    with writing(run):
        with open(tmp, "w") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            rename_no_replace(tmp, run)  # of two runs claiming one folder at once, exactly one gets it
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            raise GrowcError(
                f"refusing to use '{out}' as the run folder: another growc train claimed it while this one started; "
                "pass another --out"
            ) from None
    for stale in out.glob(f"{_RUN_JSON_TMP}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _read_run_json(run: Path, refuse: str) -> dict[str, Any]:
    data = read_json(run, "delete the run folder to start over, or pass another --out")
    if data.get("format") != RUN_FORMAT or not isinstance(data.get("recipe_sha256"), str):
        raise GrowcError(
            f"{refuse}: '{run}' is not a growc run file (no " + f'"format": "{RUN_FORMAT}"' + " with a recipe_sha256); "
            "pass a new or empty folder (--out or output.folder)"
        )
    return data


def inspect_run_folder(out: Path) -> dict[str, Any] | None:
    """``out``'s run.json when it is a growc run folder; None when it is new or empty; otherwise a GrowcError."""
    refuse = f"refusing to use '{out}' as the run folder"
    if not os.path.lexists(out):
        return None
    if not out.is_dir():
        raise GrowcError(f"{refuse}: it is a file, not a folder; pass a new or empty folder (--out or output.folder)")
    try:
        entries = [e.name for e in out.iterdir()]
    except OSError as error:
        raise GrowcIOError(f"cannot read the run folder '{out}': {error.strerror or error}", path=str(out)) from None
    if "run.json" in entries:
        return _read_run_json(out / "run.json", refuse)
    entries = [name for name in entries if not name.startswith(_RUN_JSON_TMP)]
    if not entries:
        return None
    ours = sorted(name for name in entries if _RUN_ENTRY.fullmatch(name))
    if ours:
        raise GrowcError(
            f"{refuse}: it holds growc run files ({', '.join(repr(n) for n in ours)}) but no run.json (deleted?), so "
            "nothing says which recipe they belong to; delete the folder to start over, or pass another --out"
        )
    raise GrowcError(
        f"{refuse}: it is not empty and is not a growc run folder (no run.json); pass a new or empty folder (--out "
        "or output.folder)"
    )


class PhaseFolder:
    """One phase's folder: ``checkpoints/`` while it runs, then ``model.safetensors`` and ``done.json`` (which
    records their SHA-256 and the recipe's ``fingerprint``)."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint

    @property
    def done(self) -> bool:
        """Whether the phase finished (its done.json exists; :meth:`reuse` verifies it)."""
        return os.path.lexists(self.folder / "done.json")

    def checkpoints(self, device: torch.device, log: Callable[[str], None]) -> Checkpoints:
        """The phase's checkpoint folder (``log`` says what a resume uses)."""
        return Checkpoints(self.folder / "checkpoints", self.fingerprint, device, log)

    def finish(self, model: nn.Module, record: dict[str, Any]) -> None:
        """The phase's weights and done.json (which records their SHA-256 and the fingerprint); then its checkpoints
        go."""
        weights = self.folder / "model.safetensors"
        with writing(weights):
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_file(weights) as tmp:
                save_tensors(dict(model.state_dict()), tmp)
                digest = sha256_file(tmp)
        done = self.folder / "done.json"
        payload = {"format": PHASE_FORMAT, "fingerprint": self.fingerprint, **record,
                   "files": {"model.safetensors": digest}}  # fmt: skip
        with writing(done):
            atomic_write_text(done, json.dumps(payload, indent=2) + "\n")
        if os.path.lexists(self.folder / "checkpoints"):
            with contextlib.suppress(OSError):
                discard(self.folder / "checkpoints")

    def reuse(self, name: str, epochs: int, model: nn.Module) -> dict[str, Any]:
        """A finished phase's record, its weights verified against done.json and loaded into ``model``."""
        done = self.folder / "done.json"
        hint = f"delete '{self.folder}' to train this phase again"
        data = read_json(done, hint)
        f = Fields(done, hint)
        f.equal(data, "format", "str", PHASE_FORMAT)
        f.equal(data, "fingerprint", "str", self.fingerprint,
                "this phase belongs to another recipe (or to this one before an edit)")  # fmt: skip
        f.equal(data, "phase", "str", name)
        f.equal(data, "epochs", "int", epochs)
        f.history(data, name, epochs, f"{{n}} entries for {epochs} epochs")
        if f.get(data, "params", "int") < 0:
            raise f.error("params", f"{data['params']} is negative")
        flops = f.get(data, "flops", "object")
        for key in _FLOPS_NUMBERS:
            f.get(flops, key, "number", "flops.")
        f.get(data, "test_acc", "number")
        digest = f.get(f.get(data, "files", "object"), "model.safetensors", "sha256", "files.")
        weights = self.folder / "model.safetensors"
        raw = read_verified(weights, digest, done, hint)
        load_into(model, read_tensors(weights, raw, hint), f"'{weights}'")
        return {k: data[k] for k in _PHASE_KEYS}

    def discard_leftovers(self) -> None:
        """Delete what a run killed after the phase finished left: its checkpoints, or any of their trash."""
        with contextlib.suppress(OSError):
            for entry in list(self.folder.iterdir()):
                if entry.name == "checkpoints" or entry.name.startswith(".trash-"):
                    discard(entry)


class RunFolder:
    """A recipe's run folder ``out`` (resolved), of the recipe with ``fingerprint`` and ``parents`` parents."""

    def __init__(self, out: Path, fingerprint: str, parents: int) -> None:
        self.out = out
        self.fingerprint = fingerprint
        self.parents = parents

    @property
    def artifact(self) -> Path:
        """The growth's artifact folder."""
        return self.out / "grown-artifact"

    @property
    def final(self) -> Path:
        """The trained grown network's artifact folder."""
        return self.out / "final"

    def phase_names(self) -> list[str]:
        """The phases in the order they run: ``parent0``, ``parent1``, ..., ``grown``."""
        return [f"parent{i}" for i in range(self.parents)] + ["grown"]

    def phase(self, name: str) -> PhaseFolder:
        """The folder of phase ``name``."""
        return PhaseFolder(self.out / name, self.fingerprint)

    def check(self) -> bool:
        """Whether ``out`` is already this recipe's run folder (False: new or empty); anything else is refused."""
        recorded = inspect_run_folder(self.out)
        if recorded is not None and recorded["recipe_sha256"] != self.fingerprint:
            raise GrowcError(
                f"refusing to use '{self.out}' as the run folder: it holds a run of a different recipe (or of this "
                "one, or its growth spec, before an edit): pass another --out, or delete the folder to start over"
            )
        return recorded is not None

    def claim(self, recipe: RecipeSpec, dist: Distributed) -> None:
        """Start a run folder, or check that it holds this recipe's run. Every rank reads before rank 0 writes (no
        rank can see a half-claimed folder), and all of them agree on the outcome."""
        dist.barrier()
        claimed = self.check()
        dist.barrier()
        if dist.main:
            from growc.version import __version__

            if not claimed:  # run.json first: from then on the folder is this recipe's
                run = {"format": RUN_FORMAT, "recipe_sha256": self.fingerprint, "growc": __version__,
                       "recipe": str(recipe.doc.file)}  # fmt: skip
                write_run_json(self.out, run)
            if not (self.out / "recipe.yaml").is_file():
                with writing(self.out / "recipe.yaml"):
                    atomic_write_text(
                        self.out / "recipe.yaml",
                        yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, default_flow_style=None),
                    )
        dist.barrier()

    # -- the growth: grown-artifact/grow.json
    @property
    def growth_recorded(self) -> bool:
        """Whether the growth was recorded (its grow.json exists; :meth:`reuse_growth` verifies it)."""
        return os.path.lexists(self.artifact / "grow.json")

    def _growth_files(self) -> dict[str, str]:
        artifact = self.artifact
        return {p.name: sha256_file(p) for p in sorted(artifact.iterdir()) if p.is_file() and p.name != "grow.json"}

    def _parent_digests(self) -> list[str]:
        return [sha256_file(self.out / f"parent{i}" / "model.safetensors") for i in range(self.parents)]

    def record_growth(self, growth: dict[str, Any]) -> None:
        """grow.json: the accuracy right after growth, the fingerprint, the parents' and every artifact file's
        SHA-256."""
        path = self.artifact / "grow.json"
        payload = {"format": GROWTH_FORMAT, "fingerprint": self.fingerprint, **growth,
                   "parents": self._parent_digests(), "files": self._growth_files()}  # fmt: skip
        with writing(path):
            atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

    def reuse_growth(self) -> dict[str, Any]:
        """The growth's record, after checking that grow.json is this recipe's, made from these parents, and that
        every artifact file is the one it records."""
        artifact = self.artifact
        path = artifact / "grow.json"
        hint = f"delete '{artifact}' to grow again"
        data = read_json(path, hint)
        f = Fields(path, hint)
        f.equal(data, "format", "str", GROWTH_FORMAT)
        f.equal(data, "fingerprint", "str", self.fingerprint,
                "this growth belongs to another recipe (or to this one before an edit)")  # fmt: skip
        f.get(data, "test_loss", "number")
        f.get(data, "test_acc", "number")
        f.get(data, "params", "int")
        parents = f.get(data, "parents", "list")
        if parents != self._parent_digests():
            raise f.error("parents", "the growth was made from other parent weights than the run's")
        files = f.get(data, "files", "object")
        for name in files:
            digest = f.get(files, name, "sha256", "files.")
            if "/" in name or name in ("", ".", ".."):
                raise f.error(f"files.{name}", "not a file of the artifact")
            read_verified(artifact / name, digest, path, hint)
        return {k: data[k] for k in ("test_loss", "test_acc", "params")}

    def artifact_report(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The final artifact's report: the growth artifact's (parents, steps, params, inputs, seconds) and
        ``extra``."""
        report = read_json(self.artifact / "report.json", f"delete '{self.artifact}' to grow again")
        keep = {k: report[k] for k in ("parents", "steps", "params", "inputs", "seconds") if k in report}
        return {**keep, **extra}

    # -- the final artifact
    @property
    def finalized(self) -> bool:
        """Whether the final artifact was written (a finished run's final artifact stays)."""
        return (self.final / "report.json").is_file()

    def check_final(self, model: nn.Module) -> None:
        """A kept final artifact must hold exactly the weights the grown phase ended with (``model``'s)."""
        final = self.final
        kept = load(final, trust_code=True).state_dict()
        mine = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if set(kept) != set(mine) or any(not torch.equal(kept[k], mine[k]) for k in mine):
            raise GrowcError(
                f"'{final}' does not hold the weights this run's grown phase ended with ('{self.out / 'grown'}'): "
                "it was replaced or edited; delete it and rerun to write it again"
            )
