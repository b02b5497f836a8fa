"""Test-suite settings: a hypothesis profile per environment (derandomized in CI), GPU marker handling."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

import growc.testing.plugin  # noqa: F401  (registers the growc-ci and growc-dev profiles)

# derandomized in CI; GROWC_HYPOTHESIS_PROFILE picks another (e.g. growc-dev for broader local exploration)
settings.load_profile(os.environ.get("GROWC_HYPOTHESIS_PROFILE", "growc-ci" if os.environ.get("CI") else "growc-dev"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
