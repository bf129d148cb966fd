"""Other codebases' weights (docs/theory.md §16): each format's own forward pass, written here from its
paper's equations and its released code's conventions, agrees with lintheory's `model.forward` on the
imported weights; round trips are exact; bad files raise one line naming the file."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintheory import checks
from lintheory.core import learners, model
from lintheory.core.model import ModelConfig
from lintheory.run import interop
from lintheory.run.interop import InteropError

from conftest import batch64, random_params


def prompts(d, N, B=6, seed=1):
  """Row tokens [B, N+1, D]: demonstrations [x_i, y_i], then the query [x_q, 0]."""
  rng = np.random.default_rng(seed)
  Z = rng.standard_normal((B, N + 1, d + 1))
  Z[:, -1, -1] = 0.0
  return Z


_forward = jax.jit(model.forward, static_argnums=2)  # one compilation per architecture and shape


def lintheory_forward(got, Z):
  y_hat, states = _forward({k: jnp.asarray(v) for k, v in got.params.items()}, jnp.asarray(Z), got.model)
  return np.asarray(y_hat), np.asarray(states[-1])


def assert_close(a, b, tol=1e-12):
  scale = max(1.0, float(np.abs(b).max()))
  assert float(np.abs(a - b).max()) <= tol * scale, float(np.abs(a - b).max())


# --- Ahn et al. 2023: Transformer_F -----------------------------------------------------------------


def ahn_forward(allparam, Z):
  """Transformer_F: per head the value [[P, 0], [0, 1]] and score z_nᵀ [[Q, 0], [0, 0]] z_m of output
  token n and key m over the N demonstrations (Ahn et al. Eq. for Attn_{P,Q}, with their code's index
  order, which puts Q where the paper has Qᵀ), divided by N, residual; ŷ = −Z[N, d]."""
  L, H, _, d, _ = allparam.shape
  N = Z.shape[1] - 1
  Z = Z.copy()
  for l in range(L):
    update = 0.0
    for h in range(H):
      P = np.zeros((d + 1, d + 1))
      P[:d, :d], P[d, d] = allparam[l, h, 0], 1.0
      Q = np.zeros((d + 1, d + 1))
      Q[:d, :d] = allparam[l, h, 1]
      scores = np.einsum("bni,ij,bmj->bnm", Z, Q, Z[:, :N])  # the query is no key
      update = update + np.einsum("bnm,bmi->bni", scores, Z[:, :N] @ P.T) / N
    Z = Z + update
  return -Z[:, N, d], Z


@pytest.mark.parametrize("L,H", [(1, 1), (3, 2)])
def test_ahn_weights_give_transformer_F_forward(tmp_path, L, H):
  d, N = 3, 7
  allparam = 0.3 * np.random.default_rng(L + H).standard_normal((L, H, 2, d, d))
  np.save(tmp_path / "a.npy", allparam)
  got = interop.load("ahn", tmp_path / "a.npy", n_context=N)
  assert got.model == ModelConfig(d=d, n_layers=L, n_heads=H) and got.task.n_context == N
  Z = prompts(d, N)
  y_hat, Z_L = lintheory_forward(got, Z)
  y_ref, Z_ref = ahn_forward(allparam, Z)
  assert_close(y_hat, y_ref)
  assert_close(Z_L, Z_ref)


def test_ahn_code_scores_with_the_transpose_of_the_papers_Q(tmp_path):
  """The paper's Attn = P Z M (Zᵀ Q Z)/n scores z_keyᵀ Q z_query; their code z_queryᵀ Q z_key. With an
  asymmetric Q the two differ, and the import follows the code."""
  d, N = 2, 5
  allparam = np.zeros((1, 1, 2, d, d))
  allparam[0, 0, 1] = [[0.0, 1.0], [0.0, 0.0]]
  np.save(tmp_path / "a.npy", allparam)
  got = interop.load("ahn", tmp_path / "a.npy", n_context=N)
  Z = prompts(d, N)
  paper_Q = np.zeros((d + 1, d + 1))
  paper_Q[:d, :d] = allparam[0, 0, 1]
  P = np.diag([0.0, 0.0, 1.0])
  C = np.einsum("bmi,bmj->bij", Z[:, :N], Z[:, :N])
  paper = Z[:, N] + np.einsum("ij,bjk,kl,bl->bi", P, C, paper_Q, Z[:, N]) / N
  assert_close(lintheory_forward(got, Z)[0], ahn_forward(allparam, Z)[0])
  assert np.abs(lintheory_forward(got, Z)[0] + paper[:, d]).max() > 1e-3


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_ahn_round_trips_are_bitwise(tmp_path, suffix):
  allparam = np.random.default_rng(0).standard_normal((2, 2, 2, 3, 3)).astype(np.float32)
  src = tmp_path / f"a{suffix}"
  np.save(src, allparam) if suffix == ".npy" else np.savez(src, allparam=allparam)
  got = interop.load("ahn", src)
  interop.export("ahn", got.params, got.model, tmp_path / f"b{suffix}", dtype=np.float32)
  back = np.load(tmp_path / f"b{suffix}")
  back = back if suffix == ".npy" else back["allparam"]
  assert back.dtype == np.float32 and np.array_equal(back, allparam)
  again = interop.load("ahn", tmp_path / f"b{suffix}")
  assert all(np.array_equal(again.params[k], got.params[k]) for k in got.params)


# --- von Oswald et al. 2023: the Haiku Transformer ----------------------------------------------------


def haiku_forward(tree, Z, n_layers, H):
  """Their attention-only linear Transformer: hk.Linear projections q = z W_q (no bias), H heads of
  width key_size (head-major columns), logits q·k over the demonstrations only (include_query=False),
  no softmax and no 1/N, heads concatenated then the `linear` projection, residual; ŷ = −Z[N, d]."""
  N = Z.shape[1] - 1
  mods = sorted({k.rsplit("/", 2)[0] for k in tree})
  names = mods * n_layers if len(mods) == 1 else mods
  Z = Z.copy()
  for name in names:
    w = {p: tree[f"{name}/{p}/w"] for p in ("query", "key", "value", "linear")}
    B, T, D = Z.shape
    q = (Z @ w["query"]).reshape(B, T, H, -1)
    k = (Z[:, :N] @ w["key"]).reshape(B, N, H, -1)
    v = (Z[:, :N] @ w["value"]).reshape(B, N, H, -1)
    attn = np.einsum("bthk,bshk,bshv->bthv", q, k, v).reshape(B, T, -1)
    Z = Z + attn @ w["linear"]
  return -Z[:, N, -1], Z


def haiku_tree(L, H, D, K, seed, shared=False, shared_out=False):
  rng = np.random.default_rng(seed)
  names = ["transformer/multi_head_attention"] if shared else [f"transformer/~trans_block/layer_{l}" for l in range(L)]
  tree = {}
  for name in names:
    out = rng.standard_normal((K, D)) * 0.4
    tree.update({f"{name}/query/w": 0.4 * rng.standard_normal((D, H * K)),
                 f"{name}/key/w": 0.4 * rng.standard_normal((D, H * K)),
                 f"{name}/value/w": 0.4 * rng.standard_normal((D, H * K)),
                 f"{name}/linear/w": np.tile(out, (H, 1)) if shared_out else 0.4 * rng.standard_normal((H * K, D))})
  return tree


@pytest.mark.parametrize("L,H,K,shared,shared_out", [
    (1, 1, 4, True, False), (3, 2, 4, False, False), (3, 2, 3, True, False), (2, 2, 4, False, True)])
def test_von_oswald_weights_give_their_forward(tmp_path, L, H, K, shared, shared_out):
  d, N = 3, 6
  tree = haiku_tree(L, H, d + 1, K, seed=L + 10 * H, shared=shared, shared_out=shared_out)
  np.savez(tmp_path / "p.npz", **tree)
  got = interop.load("von-oswald", tmp_path / "p.npz", n_context=N, n_layers=L if shared else None, n_heads=H)
  assert got.model.n_layers == L and got.model.n_heads == H
  assert got.model.use_W_O == (K == d + 1 and (shared_out or H == 1))  # one output block for all heads
  Z = prompts(d, N)
  y_hat, Z_L = lintheory_forward(got, Z)
  y_ref, Z_ref = haiku_forward(tree, Z, L, H)
  assert_close(y_hat, y_ref)
  assert_close(Z_L, Z_ref)


def test_von_oswald_pickle_needs_allow_pickle_and_then_matches_npz(tmp_path):
  tree = haiku_tree(2, 1, 4, 4, seed=3)
  nested = {}
  for key, a in tree.items():
    module, param = key.rsplit("/", 1)
    nested.setdefault(module, {})[param] = a
  (tmp_path / "p.pkl").write_bytes(pickle.dumps(nested))
  with pytest.raises(InteropError, match="allow_pickle"):
    interop.load("von-oswald", tmp_path / "p.pkl", n_context=5)
  np.savez(tmp_path / "p.npz", **tree)
  a = interop.load("von-oswald", tmp_path / "p.pkl", n_context=5, allow_pickle=True)
  b = interop.load("von-oswald", tmp_path / "p.npz", n_context=5)
  assert all(np.array_equal(a.params[k], b.params[k]) for k in b.params)


@pytest.mark.parametrize("L,H", [(1, 1), (3, 2)])
def test_von_oswald_round_trips_are_bitwise_for_float32_files(tmp_path, L, H):
  """Scaling by N is exact for float32 values held in float64, so both round trips are bitwise (for
  key_size = D and one output block shared by the heads; otherwise only products are determined)."""
  tree = {k: v.astype(np.float32) for k, v in haiku_tree(L, H, 4, 4, seed=5, shared=L == 1, shared_out=True).items()}
  np.savez(tmp_path / "p.npz", **tree)
  got = interop.load("von-oswald", tmp_path / "p.npz", n_context=10, n_heads=H)
  interop.export("von-oswald", got.params, got.model, tmp_path / "q.npz", n_context=10, dtype="float32")
  with np.load(tmp_path / "q.npz") as f:
    back = {k: f[k] for k in f.files}
  assert set(back) == set(tree) and all(back[k].dtype == np.float32 and np.array_equal(back[k], tree[k]) for k in tree)
  again = interop.load("von-oswald", tmp_path / "q.npz", n_context=10, n_heads=H)
  assert all(np.array_equal(again.params[k], got.params[k]) for k in got.params)


def test_von_oswald_export_of_float64_weights_is_exact_to_one_rounding(tmp_path):
  cfg = ModelConfig(d=3, n_layers=2, n_heads=2, use_W_O=True)
  params = {k: np.asarray(v) for k, v in random_params(cfg, seed=2).items()}
  interop.export("von-oswald", params, cfg, tmp_path / "q.npz", n_context=7)
  got = interop.load("von-oswald", tmp_path / "q.npz", n_context=7, n_heads=2)
  assert got.model == cfg
  for k in params:
    np.testing.assert_allclose(got.params[k], params[k], rtol=2**-52, atol=0)
  Z = prompts(3, 7)
  assert_close(lintheory_forward(got, Z)[0], np.asarray(_forward(params, jnp.asarray(Z), cfg)[0]))


# --- lintheory's own npz, and the GD construction through every format ----------------------------------


def test_npz_round_trips_are_bitwise(tmp_path):
  cfg = ModelConfig(d=3, n_layers=2, n_heads=2, use_W_O=True, mlp="relu", mlp_hidden=5)
  params = {k: np.asarray(v) for k, v in random_params(cfg, seed=4).items()}
  interop.export("npz", params, cfg, tmp_path / "w.npz")
  with pytest.raises(interop.InteropError, match="n_heads"):  # (L, H, D, D) heads or (S, L, D, D) seeds?
    interop.load("npz", tmp_path / "w.npz", n_context=9)
  got = interop.load("npz", tmp_path / "w.npz", n_context=9, n_heads=2)
  assert got.model == cfg and got.task.n_context == 9 and got.task.d == 3
  assert all(np.array_equal(got.params[k], params[k]) for k in params)
  interop.export("npz", got.params, got.model, tmp_path / "w2.npz")
  assert (tmp_path / "w2.npz").read_bytes() == (tmp_path / "w.npz").read_bytes()


@pytest.mark.parametrize("fmt,name", [("ahn", "gd.npy"), ("von-oswald", "gd.npz"), ("npz", "gd.npz")])
def test_gd_construction_survives_export_and_import(tmp_path, fmt, name):
  d, N, eta, L = 3, 8, 0.3, 3
  params = {k: np.asarray(v) for k, v in learners.construct(d, eta, n_steps=L).items()}
  interop.export(fmt, params, ModelConfig.from_params(params), tmp_path / name, n_context=N)
  got = interop.load(fmt, tmp_path / name, n_context=N)
  assert got.model.n_layers == L
  checks.assert_gd_equivalent({k: jnp.asarray(v) for k, v in got.params.items()}, batch64(d, N),
                              checks.gd_reference(eta, n_steps=L), cfg=got.model)


def test_ahn_export_rescales_the_y_to_y_value_to_one_and_keeps_the_layer():
  # one GD++ layer (docs/theory.md §3): W_K = W_Q = diag(I, 0), W_V = diag(−γI, −η)
  params = {"W_K": np.diag([1.0, 1.0, 0.0])[None], "W_Q": np.diag([1.0, 1.0, 0.0])[None],
            "W_V": np.diag([-0.2, -0.2, -0.7])[None]}
  allparam = interop.params_to_ahn(params, ModelConfig.from_params(params), "x")
  # W_V = [[−γI, 0], [0, −η]], W_KᵀW_Q = diag(I, 0): P = (−γ/−η) I, Q = −η I.
  np.testing.assert_allclose(allparam[0, 0, 0], (0.2 / 0.7) * np.eye(2), rtol=1e-15)
  np.testing.assert_allclose(allparam[0, 0, 1], -0.7 * np.eye(2), rtol=1e-15)


# --- refusals ----------------------------------------------------------------------------------------


def test_export_refuses_models_outside_the_format_with_the_offending_entries(tmp_path):
  cfg = ModelConfig(d=2, n_layers=1)
  params = {k: np.asarray(v) for k, v in random_params(cfg).items()}
  with pytest.raises(InteropError, match=r"format ahn needs .*nonzero entries") as e:
    interop.export("ahn", params, cfg, tmp_path / "a.npy")
  assert "\n" not in str(e.value) and str(tmp_path / "a.npy") in str(e.value)
  soft = ModelConfig(d=2, n_layers=1, attention="softmax")
  for fmt in ("ahn", "von-oswald"):
    with pytest.raises(InteropError, match="linear attention only"):
      interop.export(fmt, params, soft, tmp_path / "a.npz", n_context=4)
  with pytest.raises(InteropError, match="n_context"):
    interop.export("von-oswald", params, cfg, tmp_path / "a.npz")
  assert not list(tmp_path.iterdir())


def _bad_files(tmp_path):
  """(format, file, kwargs, what the message must say) for every kind of bad input."""
  rng = np.random.default_rng(0)
  ok_tree = haiku_tree(1, 1, 3, 3, seed=0, shared=True)
  cases = []

  def put(name, fn):
    path = tmp_path / name
    fn(path)
    return path

  cases.append(("ahn", put("rank.npy", lambda p: np.save(p, rng.standard_normal((2, 2, 3, 3)))), {}, "expected \\(n_layer"))
  cases.append(("ahn", put("three.npy", lambda p: np.save(p, rng.standard_normal((1, 1, 3, 2, 2)))), {}, "expected \\(n_layer"))
  nan = rng.standard_normal((1, 1, 2, 2, 2))
  nan[0, 0, 1, 0, 0] = np.inf
  cases.append(("ahn", put("nan.npy", lambda p: np.save(p, nan)), {}, "non-finite"))
  cases.append(("ahn", put("int.npy", lambda p: np.save(p, np.ones((1, 1, 2, 2, 2), int))), {}, "dtype"))
  cases.append(("ahn", put("text.npy", lambda p: p.write_text("hello")), {}, "not a readable"))
  cases.append(("ahn", put("two.npz", lambda p: np.savez(p, a=np.ones(1), b=np.ones(1))), {}, "allparam"))
  cases.append(("ahn", put("obj.npy", lambda p: np.save(p, np.array([{}], object), allow_pickle=True)), {}, "pickle"))
  cases.append(("ahn", put("a.txt", lambda p: p.write_text("x")), {}, "suffix"))
  cases.append(("ahn", put("heads.npy", lambda p: np.save(p, np.ones((1, 2, 2, 2, 2)))), {"n_heads": 1}, "n_heads=1"))
  cases.append(("ahn", tmp_path / "missing.npy", {}, "no such file"))
  cases.append(("von-oswald", put("vo_noN.npz", lambda p: np.savez(p, **ok_tree)), {}, "n_context"))
  cases.append(("von-oswald", put("vo_heads.npz", lambda p: np.savez(p, **ok_tree)), {"n_context": 4, "n_heads": 2}, "head"))
  ln = dict(ok_tree, **{"transformer/layer_norm/scale": np.ones(3)})
  cases.append(("von-oswald", put("vo_ln.npz", lambda p: np.savez(p, **ln)), {"n_context": 4}, "layer norm"))
  bias = dict(ok_tree, **{"transformer/multi_head_attention/query/b": np.ones(3)})
  cases.append(("von-oswald", put("vo_bias.npz", lambda p: np.savez(p, **bias)), {"n_context": 4}, "bias"))
  missing = {k: v for k, v in ok_tree.items() if "/key/" not in k}
  cases.append(("von-oswald", put("vo_missing.npz", lambda p: np.savez(p, **missing)), {"n_context": 4}, "missing"))
  cases.append(("von-oswald", put("vo_flat.npz", lambda p: np.savez(p, w=np.ones(3))), {"n_context": 4}, "module path"))
  cases.append(("von-oswald", put("vo.pkl", lambda p: p.write_bytes(pickle.dumps({}))), {"n_context": 4}, "allow_pickle"))
  cases.append(("npz", put("keys.npz", lambda p: np.savez(p, W_Q=np.ones((1, 3, 3)))), {}, "missing"))
  shapes = {"W_Q": np.ones((1, 3, 3)), "W_K": np.ones((1, 3, 3)), "W_V": np.ones((1, 2, 2))}
  cases.append(("npz", put("shape.npz", lambda p: np.savez(p, **shapes)), {}, "shape"))
  cases.append(("npz", put("n.npz", lambda p: np.savez(p, **{k: np.ones((1, 3, 3)) for k in ("W_Q", "W_K", "W_V")})),
                {"n_context": 0}, "n_context"))
  return cases


def test_every_bad_file_raises_one_line_naming_it(tmp_path):
  for fmt, path, kw, match in _bad_files(tmp_path):
    with pytest.raises(InteropError, match=match) as e:
      interop.load(fmt, path, **kw)
    assert str(path) in str(e.value) and "\n" not in str(e.value), (path, str(e.value))


def test_torch_files_need_torch_or_read_allparam(tmp_path):
  path = tmp_path / "model.pt"
  try:
    import torch
  except ImportError:
    path.write_bytes(b"not really")
    with pytest.raises(InteropError, match="torch is not installed"):
      interop.load("ahn", path)
    return
  allparam = np.random.default_rng(0).standard_normal((2, 1, 2, 3, 3)).astype(np.float32)
  torch.save({"allparam": torch.from_numpy(allparam)}, path)
  got = interop.load("ahn", path)
  interop.export("ahn", got.params, got.model, tmp_path / "back.pt", dtype="float32")
  assert np.array_equal(torch.load(tmp_path / "back.pt", weights_only=True)["allparam"].numpy(), allparam)
