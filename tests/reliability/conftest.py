"""Reliability tests reuse the integration project fixture."""

from tests.integration.conftest import project, results_dir  # noqa: F401  (fixtures)
