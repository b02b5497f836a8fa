"""Testing utilities for growc: random traceable CNNs and numerical equivalence checks.

* :func:`cnn_models` / :func:`cnn_specs` -- hypothesis strategies generating small,
  ``torch.fx``-traceable CNNs (:class:`GeneratedModel`: a :class:`CNNSpec` plus example inputs);
  :func:`build_cnn` builds a module from a spec deterministically.
* :func:`assert_same_function` -- check that two modules compute the same function (eval and/or
  train mode) without mutating either; :func:`max_abs_rel_error` reports the error.

The pytest plugin (hypothesis profiles ``growc-ci`` / ``growc-dev`` and the
``growc_assert_same_function`` fixture) lives in :mod:`growc.testing.plugin` and is not imported
here, so this package does not depend on pytest.
"""

from growc.testing.assertions import assert_same_function, max_abs_rel_error
from growc.testing.strategies import (
    ACTIVATIONS,
    ALL_FEATURES,
    BlockSpec,
    CNNSpec,
    GeneratedCNN,
    GeneratedModel,
    block_output_shape,
    build_cnn,
    cnn_models,
    cnn_specs,
    make_inputs,
)

__all__ = [
    "ACTIVATIONS",
    "ALL_FEATURES",
    "BlockSpec",
    "CNNSpec",
    "GeneratedCNN",
    "GeneratedModel",
    "assert_same_function",
    "block_output_shape",
    "build_cnn",
    "cnn_models",
    "cnn_specs",
    "make_inputs",
    "max_abs_rel_error",
]
