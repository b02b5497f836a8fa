"""Fault injection for ``growc train``: SIGKILL at random points of a whole tiny run (inside checkpoint writes,
renames, syncs, deletions, the growth step, and after random delays), several times in a row, then resume: the final
weights and results equal an uninterrupted run's, tensor for tensor.

The runs are forked from one server process that imported torch and growc once (importing takes seconds; a tiny
run, a fraction of one). Each child arms a counter on the functions every write goes through and kills itself at the
N-th call; no test hook lives in production code. The kill points come from a seeded random generator: seed 0 in CI
(``CI`` set), a fresh one otherwise (``GROWC_FAULT_SEED`` replays one; a failure prints it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

RECIPE = """\
growc: 1
name: faults
seed: 3
data: {name: synthetic, samples: 96, shape: [1, 16], classes: 3}
parents: {epochs: 3, batch_size: 32, optimizer: {lr: 0.05}}
grow:
  parents:
    - {model: growc.models:CNN1d, kwargs: {width: 2, num_classes: 3}}
    - {model: growc.models:CNN1d, kwargs: {width: 2, num_classes: 3}}
  templates: {sharing: shape, init: fresh}
  growth:
    - {cross_init: orthogonal}
grown: {epochs: 3, batch_size: 32, optimizer: {name: adamw, lr: 0.003}}
checkpoint: {every: 1}
output: {folder: run}
"""

# Forks one child per request (a JSON line on stdin), answers with its fate (a JSON line on stdout).
SERVER = r"""
import json, os, pathlib, shutil, signal, sys, time, traceback

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: F401  (what a run imports lazily, imported once here)
import torch
import torch._dynamo  # noqa: F401
import torch.utils.flop_counter  # noqa: F401
import tqdm  # noqa: F401

import growc.cli, growc.compile.build, growc.io, growc.passes  # noqa: E401
import growc.train.checkpoint, growc.train.loop, growc.train.runfolder  # noqa: E401

TARGETS = [
    (os, "replace", "replace"), (os, "rename", "rename"), (os, "fsync", "fsync"), (shutil, "rmtree", "rmtree"),
    (pathlib.Path, "write_text", "write_text"), (growc.io, "save_file", "save_file"),
    (growc.io, "rename_no_replace", "rename_no_replace"),
    # every save_tensors of a run: a checkpoint's (checkpoint), a finished phase's weights (runfolder)
    (growc.train.checkpoint, "save_tensors", "save_tensors"), (growc.train.runfolder, "save_tensors", "save_tensors"),
    (growc.train.runfolder, "rename_no_replace", "rename_no_replace"),  # the run.json claim
    (growc.train.loop, "grow", "grow"), (growc.compile.build, "compile_spec", "compile_spec"),
    (growc.compile.build, "save_state_dict", "save_state_dict"),
]


def child(request):
    count = [0]
    kill_at, only, after = request.get("kill_at"), request.get("only"), request.get("after", False)

    def arm(owner, name, label):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if only is not None and label != only:
                return real(*args, **kwargs)
            count[0] += 1
            if count[0] == kill_at and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if count[0] == kill_at and after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, wrapper)

    for owner, name, label in TARGETS:
        if hasattr(owner, name):
            arm(owner, name, label)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    torch.set_num_threads(1)
    rc = growc.cli.main(["train", request["recipe"], "--out", request["out"], "--no-progress"])
    sys.stdout.flush()
    sys.stderr.flush()
    with open(request["log"] + ".count", "w") as handle:
        handle.write(str(count[0]))
    return rc


for line in sys.stdin:
    request = json.loads(line)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            code = child(request)
        except BaseException:
            traceback.print_exc()
            code = 99
        os._exit(code)
    if request.get("delay") is not None:
        time.sleep(request["delay"])
        os.kill(pid, signal.SIGKILL)  # a child that already ended is a zombie until waited for: harmless
    _, status = os.waitpid(pid, 0)
    fate = {"seconds": time.monotonic() - started}
    fate.update({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"rc": os.WEXITSTATUS(status)})
    print(json.dumps(fate), flush=True)
"""


class _Server:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            cwd=folder,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.runs = 0

    def run(self, out: str, **request: Any) -> dict[str, Any]:
        self.runs += 1
        log = self.folder / f"run{self.runs}.log"
        request.update(recipe=str(self.folder / "faults.yaml"), out=str(self.folder / out), log=str(log))
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, f"the fork server died (exit {self.process.poll()})"
        fate = json.loads(answer)
        fate["log"] = log.read_text() if log.exists() else ""
        count = Path(f"{log}.count")
        fate["count"] = int(count.read_text()) if count.exists() else None
        fate["request"] = request
        return fate

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def _results(run: Path) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text())
    for entry in results["history"]:
        entry.pop("seconds")  # wall time: the one thing a resumed run may not reproduce
    return results


def _seed() -> int:
    if "GROWC_FAULT_SEED" in os.environ:
        return int(os.environ["GROWC_FAULT_SEED"])
    return 0 if os.environ.get("CI") else random.randrange(2**32)


def test_sigkill_anywhere_again_and_again_then_resume_ends_with_the_uninterrupted_run(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    (tmp_path / "faults.yaml").write_text(RECIPE)
    server = _Server(tmp_path)
    try:
        reference = server.run("reference")
        assert reference.get("rc") == 0, reference["log"][-3000:]
        total, wall = reference["count"], reference["seconds"]
        assert total > 50  # the writes of a whole run: many kill points
        plan: list[dict[str, Any]] = [
            {"kill_at": rng.randint(1, total // 6), "after": rng.random() < 0.5},  # somewhere in the parents
            {"only": "save_tensors", "kill_at": rng.randint(1, 2)},  # in the middle of writing a checkpoint
            {"only": "save_state_dict", "kill_at": 1},  # in the middle of the growth (writing its artifact)
            {"only": "compile_spec", "kill_at": 1, "after": True},  # growth compiled, its artifact not yet written
            {"delay": rng.uniform(0.05, wall / 2)},
            *({"kill_at": rng.randint(1, total // 4), "after": rng.random() < 0.5} for _ in range(3)),
            {"only": rng.choice(["rename_no_replace", "replace", "rmtree", "fsync"]), "kill_at": rng.randint(1, 4)},
            {"delay": rng.uniform(0.05, wall / 2)},
        ]
        fates = [server.run("victim", **request) for request in plan]
        resumed = server.run("victim")
    finally:
        server.close()
    story = f"seed {seed} (GROWC_FAULT_SEED={seed} replays it): " + "; ".join(
        f"{f['request']} -> {'killed' if f.get('signal') == signal.SIGKILL else 'exit ' + str(f.get('rc'))}"
        for f in fates
    )
    for fate in [*fates, resumed]:
        assert fate.get("signal") == signal.SIGKILL or fate.get("rc") == 0, f"{story}\n{fate['log'][-3000:]}"
        assert "is damaged" not in fate["log"], f"{story}\n{fate['log'][-3000:]}"  # every write was atomic
    assert [f.get("signal") for f in fates[:4]] == [signal.SIGKILL] * 4, story  # those points lie ahead for sure
    assert resumed.get("rc") == 0, f"{story}\n{resumed['log'][-3000:]}"
    want = load_file(tmp_path / "reference" / "final" / "model.safetensors")
    got = load_file(tmp_path / "victim" / "final" / "model.safetensors")
    assert set(got) == set(want), story
    for key in want:
        assert torch.equal(got[key], want[key]), f"{key}: {story}"
    assert _results(tmp_path / "victim") == _results(tmp_path / "reference"), story
