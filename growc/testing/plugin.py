"""pytest plugin for growc (entry point ``pytest11: growc = "growc.testing.plugin"``).

On import it registers two hypothesis settings profiles, without loading either (choose one
with hypothesis's own ``--hypothesis-profile`` option):

``growc-ci``
    ``deadline=None, derandomize=True, max_examples=25, print_blob=True``, suppressing the
    ``too_slow`` and ``data_too_large`` health checks: reproducible runs for CI.
``growc-dev``
    ``deadline=None, max_examples=50``: broader random exploration while developing.

It also provides the ``growc_assert_same_function`` fixture (returns
:func:`growc.testing.assertions.assert_same_function`) and a report-header line listing the
profiles.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings

from growc.testing.assertions import assert_same_function

__all__ = ["PROFILES", "growc_assert_same_function", "pytest_report_header"]

#: Names of the hypothesis profiles registered by this plugin.
PROFILES: tuple[str, ...] = ("growc-ci", "growc-dev")

settings.register_profile(
    "growc-ci",
    deadline=None,
    derandomize=True,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "growc-dev",
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture
def growc_assert_same_function() -> Callable[..., None]:
    """The :func:`growc.testing.assert_same_function` helper, as a fixture."""
    return assert_same_function


def pytest_report_header(config: pytest.Config) -> str:
    """One header line naming the hypothesis profiles this plugin registers."""
    names = ", ".join(PROFILES)
    return f"growc testing: hypothesis profiles available: {names} (select with --hypothesis-profile=NAME)"
