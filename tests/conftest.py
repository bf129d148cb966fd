"""Tests run in float64 where they ask for it; x64 is enabled once, before any JAX work."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
