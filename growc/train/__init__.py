"""The train layer: a recipe's phases (train, grow, train) with checkpoints, resume and reports.

Its modules, each importing only those listed before it: :mod:`~growc.train.distributed` (the ranks under
torchrun), :mod:`~growc.train.flops` (training FLOPs), :mod:`~growc.train.files` (reading and writing run files
safely), :mod:`~growc.train.checkpoint` (the optimizer-state codec and verified checkpoint folders),
:mod:`~growc.train.report` (metrics, results, table, plots), :mod:`~growc.train.runfolder` (the run-folder
protocol: the claim, done.json, grow.json, the final artifact) and :mod:`~growc.train.loop` (the epoch loop, a
recipe's phases, :func:`fit` and :func:`train`).
"""

from growc.train.flops import count_training_flops
from growc.train.loop import StoppedEarly, fit, train
from growc.train.report import format_results

__all__ = ["StoppedEarly", "count_training_flops", "fit", "format_results", "train"]
