"""Training recipes by depth: what the studies train with, and the defaults of `train.TrainConfig`.

One source: run.profiles trains every study model with these, and train.resolve fills the fields a
TrainConfig leaves at None (`lintheory train` without --lr, --warmup, ...) from the recipe of the
model's depth, so a model trained by hand gets the recipe the studies found to work.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Recipe:
  max_layers: int  # the recipe applies to models of up to this many layers
  lr: float  # peak learning rate (Adam, warm-up + cosine)
  warmup: int  # warm-up steps, at most ...
  warmup_frac: float  # ... this fraction of the training steps
  clip_norm: float  # global-norm gradient clipping
  dtype: str = "float32"  # training precision
  tail_frac: float = 0.0  # share of each batch whose demonstrations are scaled up (TrainConfig.tail_frac)
  tail_scale: float = 1.0  # the largest scale s of those demonstrations

  def train_fields(self, steps: int, pool_size: int = 0) -> dict:
    """The TrainConfig fields this recipe sets for a run of `steps` steps (no tail on a fixed pool)."""
    return {"lr": self.lr, "warmup": min(self.warmup, int(steps * self.warmup_frac)), "clip_norm": self.clip_norm,
            "dtype": self.dtype, "tail_frac": 0.0 if pool_size else self.tail_frac, "tail_scale": self.tail_scale}


# Chosen by the deep_recipes study (python -m lintheory.studies deep_recipes; its numbers are in
# docs/report.md): d = 10, N = 20, 1500 steps of 256 tasks, exact per-task errors on 10^5 fresh tasks
# against the fitted GD++ of each depth. Float32 keeps L <= 2 near GD++. For L >= 3 plain recipes in
# either precision leave a mean that is not finite in practice: a handful of tasks in 10^5, those whose
# demonstrations' covariance has its largest eigenvalue in the extreme tail, carry almost all of the
# summed error. Training in float64 with 1/8 of each batch's demonstrations scaled by U[1, 1.4]
# (TrainConfig.tail_frac / tail_scale: the training spectrum reaches the test tail) makes the means
# GD++-like at every depth searched, so every model of L >= 3 trains that way (pool training
# excepted: its prompts are fixed). The default profile's d = 5 uses the same recipes; it was not
# searched again, and the studies report every model's tail (median, 99.99th percentile, maximum).
RECIPES = (Recipe(2, 5e-3, 100, 0.1, 1.0),
           Recipe(1 << 30, 5e-3, 500, 1 / 3, 0.1, "float64", tail_frac=1 / 8, tail_scale=1.4))
FIELDS = ("lr", "warmup", "clip_norm", "dtype", "tail_frac", "tail_scale")  # what a recipe sets


def recipe(layers: int, recipes: tuple[Recipe, ...] = RECIPES) -> Recipe:
  """The first recipe whose max_layers fits `layers`."""
  return next(r for r in recipes if layers <= r.max_layers)


def describe(field: str, recipes: tuple[Recipe, ...] = RECIPES) -> str:
  """The recipes' value of one TrainConfig field per depth, for --help ("L <= 2: 0.005; L >= 3: ...")."""
  parts, lo = [], 1
  for r in recipes:
    if field == "warmup":
      value = f"min({r.warmup}, {r.warmup_frac:.3g}·steps)"
    else:
      value = f"{getattr(r, field):.4g}" if isinstance(getattr(r, field), float) else str(getattr(r, field))
    depth = f"L >= {lo}" if r.max_layers >= 1 << 20 else (f"L <= {r.max_layers}" if lo == 1 else
                                                          f"{lo} <= L <= {r.max_layers}")
    parts.append(f"{depth}: {value}")
    lo = r.max_layers + 1
  return "; ".join(parts)
