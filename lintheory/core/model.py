"""Multi-layer linear self-attention transformer (docs/theory.md §2).

Parameters are one plain dict of arrays, the same for training, the GD construction, pruning
and the analysis. Matrices act on column tokens as in the paper (h ↦ W h); the layer axis leads:
  W_Q, W_K, W_V: [L, D, D] (one head) or [L, H, D, D] (H heads, summed)
  W_O: [L, D, D] (optional output projection, applied to the summed heads)
  W_1: [L, F, D], W_2: [L, D, F] (optional MLP sub-layer h ← h + W_2 act(W_1 h))
`LinearTransformer` (Flax NNX) is the model training updates, with these as `nnx.Param`s; `forward`
is the reference math, which every analysis runs on `params_of(module)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Params = dict[str, jax.Array]
ATTENTIONS = ("linear", "softmax")
MLPS = (None, "linear", "relu")


def check_ints(config: Any, lows: dict[str, int]) -> None:
  """ValueError naming the first field of config (in lows' order) that is not an integer >= its low."""
  for name, lo in lows.items():
    v = getattr(config, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
      raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  d: int = 10  # input dimension; the token dimension is D = d + 1
  n_layers: int = 1  # L
  n_heads: int = 1  # H; heads are full D×D and their outputs are summed (von Oswald)
  use_W_O: bool = False  # an output projection W_O after the heads
  mlp: str | None = None  # None, "linear" or "relu": an MLP sub-layer after attention
  mlp_hidden: int = 0  # F, MLP width; 0 means 4·D
  attention: str = "linear"  # "linear" (§2, with 1/N) or "softmax" (the paper's App. A.2)
  init_scale: float = 0.1  # std of the Gaussian initialisation of every matrix (0.02 leaves L >= 2 on a long plateau)

  def __post_init__(self):
    check_ints(self, {"d": 1, "n_layers": 1, "n_heads": 1, "mlp_hidden": 0})
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
    if self.mlp not in MLPS:
      raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
    if not self.init_scale > 0:
      raise ValueError(f"init_scale must be > 0, got {self.init_scale!r}")

  @property
  def D(self) -> int:
    return self.d + 1

  @property
  def F(self) -> int:
    return self.mlp_hidden or 4 * self.D

  @property
  def is_linear(self) -> bool:
    """True when every layer is linear attention (Theorem 1 applies exactly)."""
    return self.attention == "linear" and self.mlp is None

  @classmethod
  def from_params(cls, params: Params, attention: str = "linear", mlp_act: str = "relu",
                  n_heads: int | None = None):
    """The architecture implied by a parameter dict (for constructed or loaded weights).

    A 4-D W_Q is (L, H, D, D) heads or a leading seed axis (S, L, D, D): refused unless n_heads says.
    """
    W_Q = params["W_Q"]
    if W_Q.ndim not in (3, 4) or W_Q.shape[-1] != W_Q.shape[-2] or W_Q.shape[-1] < 2:
      raise ValueError(f"W_Q must have shape (L, D, D) or (L, H, D, D) with D >= 2, got {W_Q.shape}"
                       + (f"; {SEED_HINT}" if W_Q.ndim == 5 else ""))
    if W_Q.ndim == 4 and W_Q.shape[1] == 1:
      raise ValueError(f"W_Q has shape {W_Q.shape}: a head axis of size 1 is no model's shape (one head is "
                       f"(L, D, D)); if the first axis holds seeds, {SEED_HINT}")
    if W_Q.ndim == 4 and n_heads != W_Q.shape[1]:
      raise ValueError(f"W_Q has shape {W_Q.shape}, ambiguous: (L, H, D, D) heads or (S, L, D, D) seeds? For "
                       f"heads pass cfg=ModelConfig(n_heads={W_Q.shape[1]}, ...); for seeds, {SEED_HINT}")
    for name in ("W_K", "W_V"):
      if params[name].shape != W_Q.shape:
        raise ValueError(f"{name} must have the shape of W_Q {W_Q.shape}, got {params[name].shape}")
    has_mlp = "W_1" in params
    return cls(d=W_Q.shape[-1] - 1, n_layers=W_Q.shape[0],
               n_heads=1 if W_Q.ndim == 3 else W_Q.shape[1], use_W_O="W_O" in params,
               mlp=mlp_act if has_mlp else None,
               mlp_hidden=params["W_1"].shape[1] if has_mlp else 0, attention=attention)


SEED_HINT = ("take one seed with jax.tree.map(lambda a: a[i], params) (or run.profiles.seed_params(params, i))")


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  L, D, H = cfg.n_layers, cfg.D, cfg.n_heads
  attn = (L, D, D) if H == 1 else (L, H, D, D)
  shapes = {"W_Q": attn, "W_K": attn, "W_V": attn}
  if cfg.use_W_O:
    shapes["W_O"] = (L, D, D)
  if cfg.mlp is not None:
    shapes["W_1"] = (L, cfg.F, D)
    shapes["W_2"] = (L, D, cfg.F)
  return shapes


def check_shapes(params: Params, cfg: ModelConfig) -> None:
  """ValueError unless params has exactly the arrays and shapes of cfg (param_shapes)."""
  want = param_shapes(cfg)
  missing, extra = sorted(set(want) - set(params)), sorted(set(params) - set(want))
  if missing or extra:
    raise ValueError(f"params hold {sorted(params)}, the model {cfg} needs {sorted(want)}")
  bad = [f"{k} {tuple(params[k].shape)} (needs {s})" for k, s in sorted(want.items()) if tuple(params[k].shape) != s]
  if bad:
    hint = f"; if the first axis holds seeds, {SEED_HINT}" if params["W_Q"].ndim == len(want["W_Q"]) + 1 else ""
    raise ValueError(f"params do not have the shapes of the model {cfg}: {', '.join(bad)}{hint}")


def config_of(params: Params, cfg: ModelConfig | None = None) -> ModelConfig:
  """cfg after checking params against it, or the config the shapes imply (refusing ambiguous ones)."""
  cfg = ModelConfig.from_params(params) if cfg is None else cfg
  check_shapes(params, cfg)
  return cfg


def init_params(key: jax.Array, cfg: ModelConfig, dtype=jnp.float32) -> Params:
  shapes = param_shapes(cfg)
  keys = jax.random.split(key, len(shapes))
  return {name: cfg.init_scale * jax.random.normal(k, shape, dtype)
          for k, (name, shape) in zip(keys, sorted(shapes.items()))}


def heads(W: jax.Array) -> jax.Array:
  """[..., D, D] of one layer → [H, D, D] (one head gets a head axis of 1)."""
  return W[None] if W.ndim == 2 else W


def attention(p: dict[str, Any], Z_BTD: jax.Array, Zs: jax.Array, kind: str) -> jax.Array:
  """One layer's attention output [B, T, D] for the tokens Z_BTD (every one a query) over the
  demonstrations Zs [B, N, D] (the keys and values). Queries never act as keys, so several queries
  appended after the demonstrations are each predicted as if alone."""
  N = Zs.shape[1]
  W_Q, W_K, W_V = heads(p["W_Q"]), heads(p["W_K"]), heads(p["W_V"])
  Q = jnp.einsum("btd,hed->bhte", Z_BTD, W_Q)
  K = jnp.einsum("bnd,hed->bhne", Zs, W_K)
  V = jnp.einsum("bnd,hed->bhne", Zs, W_V)
  if kind == "linear":
    # Q (KᵀV) / N: the same sum as (Q Kᵀ) V / N, cheaper for T > D.
    out = jnp.einsum("bhte,bhef->btf", Q, jnp.einsum("bhne,bhnf->bhef", K, V)) / N
  else:
    A = jax.nn.softmax(jnp.einsum("bhte,bhne->bhtn", Q, K), axis=-1)
    out = jnp.einsum("bhtn,bhnf->btf", A, V)
  if "W_O" in p:
    out = out @ p["W_O"].T
  return out


def block(p: dict[str, Any], Z_BTD: jax.Array, cfg: ModelConfig, n_demos: int | None = None) -> jax.Array:
  """One layer over all tokens; the first n_demos (default: all but the last, the query) are the
  demonstrations."""
  N = Z_BTD.shape[1] - 1 if n_demos is None else n_demos
  return block_over(p, Z_BTD, Z_BTD[:, :N], cfg)


def block_over(p: dict[str, Any], Z_BTD: jax.Array, Zs: jax.Array, cfg: ModelConfig) -> jax.Array:
  """One layer (attention over the demonstrations Zs [B, N, D], then the MLP) applied to the tokens Z_BTD."""
  Z_BTD = Z_BTD + attention(p, Z_BTD, Zs, cfg.attention)
  if cfg.mlp is not None:
    hidden = Z_BTD @ p["W_1"].T
    hidden = jax.nn.relu(hidden) if cfg.mlp == "relu" else hidden
    Z_BTD = Z_BTD + hidden @ p["W_2"].T
  return Z_BTD


def forward(params: Params, Z_BTD: jax.Array, cfg: ModelConfig | None = None):
  """Params, tokens [B, T, D] → (ŷ [B], states [L+1, B, T, D]); states[0] is the input."""
  cfg = ModelConfig.from_params(params) if cfg is None else cfg
  if Z_BTD.ndim != 3 or Z_BTD.shape[-1] != cfg.D or Z_BTD.shape[1] < 2:
    raise ValueError(f"Z_BTD must have shape (B, N+1, {cfg.D}) with N >= 1, got {Z_BTD.shape}")

  def step(Z, p):
    Z = block(p, Z, cfg)
    return Z, Z

  Z_L, states = jax.lax.scan(step, Z_BTD, params)
  return predict(Z_L), jnp.concatenate([Z_BTD[None], states], axis=0)


def forward_query(params: Params, Z_BTD: jax.Array, cfg: ModelConfig) -> jax.Array:
  """ŷ [B] of `forward`, with the last layer run for the query token only: nothing else of it reaches
  ŷ, and training reads nothing but ŷ (a quarter of the work at L = 4, half at L = 2)."""
  return forward_from(params, Z_BTD[:, :-1], Z_BTD[:, -1:], cfg)[:, 0]


def forward_from(params: Params, Zs_BND: jax.Array, Zq_BQD: jax.Array, cfg: ModelConfig) -> jax.Array:
  """ŷ [B, Q] for Q query tokens per prompt after the layers in params, from the tokens entering the
  first of them: the demonstrations Zs [B, N, D] and the queries Zq [B, Q, D] (a model's layers from
  layer k on, with its tokens entering layer k, continue its forward pass there).

  Queries never act as keys or values, so each ŷ equals `forward` of the prompt followed by that one
  query; the last layer runs for the queries only. core/fast.py's Gram form is the fast path of this
  for linear attention without MLP.
  """
  N = Zs_BND.shape[1]
  first = {k: v[:-1] for k, v in params.items()}
  Z_BTD, _ = jax.lax.scan(lambda Z, p: (block(p, Z, cfg, n_demos=N), None),
                          jnp.concatenate([Zs_BND, Zq_BQD], axis=1), first)
  last = {k: v[-1] for k, v in params.items()}
  return predict(block_over(last, Z_BTD[:, N:], Z_BTD[:, :N], cfg)[..., None, :])  # each query its own last token


def forward_queries(params: Params, Zs_BND: jax.Array, Xq_BQd: jax.Array, cfg: ModelConfig) -> jax.Array:
  """ŷ [B, Q] for Q query inputs x_q [B, Q, d] per prompt (their y-slots zero): `forward_from` on the input."""
  return forward_from(params, Zs_BND, jnp.concatenate([Xq_BQd, jnp.zeros_like(Xq_BQd[..., :1])], axis=-1), cfg)


def predict(Z_BTD: jax.Array) -> jax.Array:
  """ŷ = −(the query's y-slot) (von Oswald / Ahn sign)."""
  return -Z_BTD[..., -1, -1]


def layer_predictions(states_LBTD: jax.Array) -> jax.Array:
  """Per-layer predictions [L, B] from forward's states (layer 1..L)."""
  return predict(states_LBTD[1:])


class LinearTransformer(nnx.Module):
  """The transformer as an NNX module (docs/theory.md §2): W_Q, W_K, W_V (+ W_O, W_1, W_2) are `nnx.Param`s.

  A thin owner of its parameters: calling it runs `forward`, the one math, on them (`params_of`, the
  dict the pure functions of core take). Training differentiates and updates the module itself with an
  nnx.Optimizer (run.train); its nnx.state is what a run directory saves (run.rundir).
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.cfg = cfg
    for name, value in init_params(rngs.params(), cfg, dtype).items():
      setattr(self, name, nnx.Param(value))

  @classmethod
  def from_params(cls, cfg: ModelConfig, params: Params) -> "LinearTransformer":
    """The module holding `params` (which must have the shapes of `cfg`)."""
    expected = param_shapes(cfg)
    got = {k: tuple(jnp.shape(v)) for k, v in params.items()}
    if set(got) != set(expected) or any(got[k][-len(s):] != s for k, s in expected.items()):
      raise ValueError(f"params must have the shapes {expected} of the config, got {got}")
    model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    for name, value in params.items():
      setattr(model, name, nnx.Param(jnp.asarray(value)))
    return model

  def __call__(self, Z_BTD: jax.Array, return_states: bool = False):
    """Tokens [B, T, D] → ŷ [B] (and forward's states [L+1, B, T, D] when return_states)."""
    y_hat, states = forward(params_of(self), Z_BTD, self.cfg)
    return (y_hat, states) if return_states else y_hat


def params_of(module: LinearTransformer) -> Params:
  """The module's parameters as the plain dict the pure functions take."""
  return nnx.to_pure_dict(nnx.state(module, nnx.Param))
