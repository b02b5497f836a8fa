"""The train layer: a recipe's phases (train, grow, train) with checkpoints, resume and reports."""

from growc.train.loop import StoppedEarly, count_training_flops, fit, format_results, train

__all__ = ["StoppedEarly", "count_training_flops", "fit", "format_results", "train"]
