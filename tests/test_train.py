"""Training: convergence to the one-step-GD optimum, divergence, resuming, seeds, config errors."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from lintheory.core import learners
from lintheory.run import train
from lintheory.core.model import ModelConfig
from lintheory.core.tasks import TaskConfig
from lintheory.run.train import TrainConfig


def test_one_layer_training_reaches_the_closed_form_optimum():
  """Mahankali et al. / Ahn et al.: one layer converges to one GD step at η* (docs/theory.md §9)."""
  d, N = 3, 10
  task, cfg = TaskConfig(d=d, n_context=N), ModelConfig(d=d)
  res = train.fit(task, cfg, TrainConfig(steps=300, batch_size=512, lr=1e-2, warmup=30, chunk=300), seeds=(0,))
  assert res.diverged is None and res.losses.shape == (1, 300)
  params = train.seed_params(res.params, 0)
  closed = learners.gd1_loss_star(d, N)
  G = np.asarray(learners.effective_preconditioner(params), np.float64)
  eta = learners.eta_star(d, N)
  assert np.linalg.norm(G - eta * np.eye(d)) / np.linalg.norm(eta * np.eye(d)) < 0.10
  assert learners.one_layer_loss(G, N) < 1.03 * closed  # the exact loss of the learned preconditioner
  ev = train.evaluate(params, task, cfg, jax.random.key(123), n_tasks=20_000)
  assert abs(ev["loss"] - ev["gd1_loss"]) < 0.03 * closed  # same held-out tasks
  assert abs(ev["gd1_loss"] - closed) < 4 * ev["gd1_loss_se"]
  assert ev["ridge_loss"] < 1e-6  # noiseless with N > d: the floor is 0
  assert res.losses[0, -50:].mean() < 0.5 * res.losses[0, :10].mean()  # from ≈ d to ≈ 0.29 d


def test_divergence_stops_and_keeps_finite_parameters():
  task, cfg = TaskConfig(d=2, n_context=3), ModelConfig(d=2, n_layers=2)
  res = train.fit(task, cfg, TrainConfig(steps=60, batch_size=32, lr=1e3, warmup=0, chunk=5), seeds=(0,))
  assert res.diverged is not None and "non-finite" in res.diverged
  assert res.state.step < 60
  assert all(np.all(np.isfinite(np.asarray(v))) for v in res.params.values())
  assert np.all(np.isfinite(res.losses))


SMALL = dict(task=TaskConfig(d=2, n_context=4), model=ModelConfig(d=2, n_layers=1))


def test_resume_continues_exactly_and_seeds_are_independent():
  """Resuming from the state of step 20 gives the same steps 21..40 as the uninterrupted run."""
  tc = TrainConfig(steps=40, batch_size=16, lr=1e-2, warmup=5, chunk=10, dtype="float64")
  saved = {}
  full = train.fit(SMALL["task"], SMALL["model"], tc, seeds=(0, 1),
                   on_chunk=lambda st, _: saved.setdefault(st.step, st))
  assert sorted(saved) == [10, 20, 30, 40]
  rest = train.fit(SMALL["task"], SMALL["model"], tc, seeds=(0, 1), state=saved[20])
  assert rest.state.step == 40 and rest.losses.shape == (2, 20)
  np.testing.assert_allclose(rest.losses, full.losses[:, 20:], rtol=1e-12)
  for k in full.params:
    np.testing.assert_allclose(rest.params[k], full.params[k], rtol=1e-12, atol=1e-15)
  # one model per seed, vmapped: different seeds, different models
  assert full.params["W_Q"].shape == (2, 1, 3, 3) and full.losses.shape == (2, 40)
  assert not np.allclose(full.params["W_Q"][0], full.params["W_Q"][1])


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=0), "steps"), (dict(steps=1.5), "steps"), (dict(batch_size=0), "batch_size"),
    (dict(warmup=-1), "warmup"), (dict(chunk=0), "chunk"), (dict(lr=0.0), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(lr=-1e-3), "lr"), (dict(schedule="linear"), "schedule"),
    (dict(optimizer="sgd"), "optimizer"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(clip_norm=-1.0), "clip_norm"), (dict(dtype="bfloat16"), "dtype"),
])
def test_invalid_train_config(kwargs, name):
  with pytest.raises(ValueError, match=name):
    TrainConfig(**kwargs)


def test_invalid_fit_arguments():
  tc = TrainConfig(steps=1, batch_size=4)
  with pytest.raises(ValueError, match="d="):
    train.fit(TaskConfig(d=3), ModelConfig(d=2), tc)
  with pytest.raises(ValueError, match="seeds"):
    train.fit(SMALL["task"], SMALL["model"], tc, seeds=())
  jax.config.update("jax_enable_x64", False)
  try:
    with pytest.raises(ValueError, match="jax_enable_x64"):
      train.fit(SMALL["task"], SMALL["model"], dataclasses.replace(tc, dtype="float64"))
  finally:
    jax.config.update("jax_enable_x64", True)


def test_float32_training_does_not_depend_on_the_callers_64_bit_mode(tmp_path):
  """Studies that measure in float64 share cached models with studies that do not."""
  cfg = TrainConfig(steps=20, batch_size=16, lr=5e-3, warmup=2, chunk=10)
  args = (TaskConfig(d=3, n_context=6), ModelConfig(d=3, n_layers=2), cfg, (0, 1))
  assert jax.config.jax_enable_x64  # conftest
  here = train.fit(*args)
  script = ("import sys, numpy as np\nfrom lintheory.run import train\nfrom lintheory.core.model import ModelConfig\n"
            "from lintheory.core.tasks import TaskConfig\nfrom lintheory.run.train import TrainConfig\n"
            f"r = train.fit(TaskConfig(d=3, n_context=6), ModelConfig(d=3, n_layers=2), {cfg!r}, (0, 1))\n"
            "np.savez(sys.argv[1], losses=r.losses, **{k: np.asarray(v) for k, v in r.params.items()})\n")
  subprocess.run([sys.executable, "-c", script, str(tmp_path / "r.npz")], check=True,
                 env={**os.environ, "JAX_ENABLE_X64": "0"})
  with np.load(tmp_path / "r.npz") as there:
    np.testing.assert_array_equal(here.losses, there["losses"])
    for k, v in here.params.items():
      np.testing.assert_array_equal(np.asarray(v), there[k])
