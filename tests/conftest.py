"""Shared fixtures. Tests run in float64 through the project's one precision switch."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _float64():
  """Exact identities are stated in float64; code that trains in float32 scopes its own precision."""
  from lintheory.core import precision
  with precision.x64():
    yield
