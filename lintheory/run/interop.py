"""Other codebases' weights in and out of lintheory's layout (docs/theory.md §16).

Formats:
- "ahn": the `allparam` tensor [L, H, 2, d, d] of `Transformer_F` (Ahn et al. 2023, repository
  chengxiang/LinearTransformer), as .npy, .npz (key `allparam` or the only array) or a PyTorch
  state dict .pt/.pth (key `allparam`, or the last entry of their notebooks' `hist_list`; needs torch).
- "von-oswald": the Haiku parameters of von Oswald et al. 2023's `Transformer` (repository
  google-research/self-organising-systems, transformers_learn_icl_by_gd), as an .npz of flat
  "<module path>/<param>" keys, or a pickled nested dict (.pkl, .pickle) behind `allow_pickle`.
- "npz": lintheory's own arrays W_Q, W_K, W_V (W_O, W_1, W_2) in the layout of docs/theory.md §2.

The conversions are numpy only; every error is one InteropError naming the file and what was
expected, raised before anything is written; `export` writes atomically (`io.atomic_write_bytes`).
"""

from __future__ import annotations

import io as _io
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lintheory.core.model import ModelConfig, param_shapes
from lintheory.core.tasks import TaskConfig
from lintheory.run import io, rundir

FORMATS = ("ahn", "von-oswald", "npz")
DEFAULT_N_CONTEXT = 20  # N when the format leaves it free: the N of Ahn et al.'s experiments
NAMES = ("W_Q", "W_K", "W_V", "W_O", "W_1", "W_2")
VO_ROOT = "transformer"  # Haiku's name of their trained `Transformer` (the GD model is "Transformer_gd")
VO_SHARED = "multi_head_attention"  # config.deq: one attention module applied num_layers times
VO_LAYER = "~trans_block/layer_"  # deq=False: one module per layer, created in Transformer.trans_block
VO_PROJECTIONS = ("query", "key", "value", "linear")
PICKLES = (".pkl", ".pickle")


class InteropError(ValueError):
  """A file that cannot be converted; the one-line message names the file and what was expected."""


class Imported(NamedTuple):
  params: dict  # numpy float64 arrays in lintheory's layout (docs/theory.md §2)
  model: ModelConfig
  task: TaskConfig  # d from the shapes, N from the caller (DEFAULT_N_CONTEXT when the format leaves it free)
  source: dict  # format, path, sha256 of the file, and the conventions the conversion assumed


# --- reading files ---------------------------------------------------------------------------------


def _fail(path, what: str) -> InteropError:
  return InteropError(f"{path}: {what}")


def _np_load(path: Path, kind: str):
  try:
    data = np.load(path, allow_pickle=False)
    return ({k: data[k] for k in data.files} if hasattr(data, "files") else data), data
  except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
    why = str(e).split("\n")[0]
    if "pickle" in why:
      why = "it holds Python objects, which need pickle"
    raise _fail(path, f"not a readable {kind} file ({why})") from None


def _read_npy(path: Path) -> np.ndarray:
  a, _ = _np_load(path, ".npy")
  if isinstance(a, dict):
    raise _fail(path, "is an .npz archive, expected a single .npy array")
  return a


def _read_npz(path: Path) -> dict[str, np.ndarray]:
  arrays, f = _np_load(path, ".npz")
  if not isinstance(arrays, dict):
    raise _fail(path, "is a single .npy array, expected an .npz archive of named arrays")
  f.close()
  return arrays


def _read_pickle(path: Path, allow_pickle: bool):
  if not allow_pickle:
    raise _fail(path, "is a pickle; unpickling can run arbitrary code, so pass allow_pickle=True "
                      "(--allow-pickle) only for a file you trust, or save the arrays as .npz")
  try:
    with open(path, "rb") as f:
      return pickle.load(f)  # noqa: S301 -- the caller opted in with allow_pickle
  except ModuleNotFoundError as e:
    raise _fail(path, f"unpickling needs the module {e.name!r}, which is not installed; save the "
                      f"parameters as .npz of flat '<module>/<param>' keys instead") from None
  except Exception as e:  # noqa: BLE001 -- anything a broken pickle raises is the file's fault
    raise _fail(path, f"not a readable pickle ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _read_torch(path: Path):
  try:
    import torch
  except ImportError:
    raise _fail(path, "is a PyTorch file and torch is not installed (pip install torch, or "
                      "'lintheory[torch]'); or save allparam with numpy (.npy)") from None
  try:  # weights_only: torch's restricted unpickler, no arbitrary code
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001
    raise _fail(path, f"not a readable PyTorch state dict ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _floats(path, name: str, a: np.ndarray) -> np.ndarray:
  """float64 copy of a floating array, refusing other dtypes and non-finite values."""
  if not np.issubdtype(a.dtype, np.floating):
    raise _fail(path, f"{name} has dtype {a.dtype}, expected floating-point weights")
  n_bad = int(a.size - np.count_nonzero(np.isfinite(a)))
  if n_bad:
    raise _fail(path, f"{name} holds {n_bad} non-finite value(s) (NaN or inf)")
  return a.astype(np.float64)


def _check_path(path) -> Path:
  path = Path(path)
  if not path.exists():
    raise _fail(path, "no such file")
  if not path.is_file():
    raise _fail(path, "is not a file")
  return path


def _n_context(path, n_context, default: int | None) -> int:
  if n_context is None:
    return default
  if isinstance(n_context, bool) or not isinstance(n_context, (int, np.integer)) or n_context < 1:
    raise _fail(path, f"n_context must be an integer >= 1, got {n_context!r}")
  return int(n_context)


def _shape_arg(path, name: str, given, found: int) -> None:
  if given is not None and given != found:
    raise _fail(path, f"{name}={given} was given but the file holds {found}")


# --- ahn: Transformer_F of Ahn et al. 2023 ---------------------------------------------------------


def _ahn_tensor(path: Path) -> tuple[np.ndarray, str]:
  suffix = path.suffix.lower()
  if suffix == ".npy":
    return _read_npy(path), "the .npy array"
  if suffix == ".npz":
    arrays = _read_npz(path)
    if "allparam" in arrays:
      return arrays["allparam"], "key 'allparam'"
    if len(arrays) == 1:
      return next(iter(arrays.values())), f"its only array {next(iter(arrays))!r}"
    raise _fail(path, f"holds arrays {sorted(arrays)}; expected a key 'allparam' or a single array")
  if suffix in (".pt", ".pth"):
    state = _read_torch(path)
    if isinstance(state, dict) and "allparam" in state:
      return _as_numpy(state["allparam"]), "key 'allparam'"
    if isinstance(state, dict) and isinstance(state.get("hist_list"), (list, tuple)) and state["hist_list"]:
      # their train notebook appends a snapshot before each step: the last is one step before the end
      return _as_numpy(state["hist_list"][-1]), "the last entry of 'hist_list' (taken before the last step)"
    if hasattr(state, "detach"):
      return _as_numpy(state), "the tensor"
    keys = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise _fail(path, f"holds {keys}; expected a Transformer_F state dict with key 'allparam'")
  raise _fail(path, f"has suffix {suffix!r}; format ahn reads .npy, .npz or .pt/.pth (the allparam tensor)")


def ahn_to_params(allparam: np.ndarray) -> dict[str, np.ndarray]:
  """allparam [L, H, 2, d, d] → W_Q, W_K, W_V (docs/theory.md §16.1).

  P = allparam[:, :, 0] is the x→x block of the value matrix [[P, 0], [0, 1]]; Q = allparam[:, :, 1]
  scores z_queryᵀ [[Q, 0], [0, 0]] z_key in their code, so W_Kᵀ W_Q = [[Qᵀ, 0], [0, 0]]: W_K = I,
  W_Q = [[Qᵀ, 0], [0, 0]]. Both normalise by 1/N and read ŷ = −(query's y-slot)."""
  L, H, _, d, _ = allparam.shape
  D = d + 1
  W_V = np.zeros((L, H, D, D))
  W_V[..., :d, :d] = allparam[:, :, 0]
  W_V[..., d, d] = 1.0
  W_Q = np.zeros((L, H, D, D))
  W_Q[..., :d, :d] = np.swapaxes(allparam[:, :, 1], -1, -2)
  W_K = np.broadcast_to(np.eye(D), (L, H, D, D)).copy()
  params = {"W_Q": W_Q, "W_K": W_K, "W_V": W_V}
  return {k: v[:, 0] for k, v in params.items()} if H == 1 else params


def _heads(W: np.ndarray) -> np.ndarray:
  """[L, D, D] or [L, H, D, D] → [L, H, D, D]."""
  return W[:, None] if W.ndim == 3 else W


def _values_and_scores(params) -> tuple[np.ndarray, np.ndarray]:
  """Per layer and head, the value matrix with W_O folded in and W_Kᵀ W_Q (each [L, H, D, D])."""
  W_V = _heads(np.asarray(params["W_V"], np.float64))
  if "W_O" in params:
    W_V = np.einsum("lef,lhfg->lheg", np.asarray(params["W_O"], np.float64), W_V)
  W_K, W_Q = (_heads(np.asarray(params[k], np.float64)) for k in ("W_K", "W_Q"))
  return W_V, np.einsum("lhed,lhef->lhdf", W_K, W_Q)


def _entries(where: np.ndarray) -> str:
  idx = [f"[{','.join(map(str, i))}]" for i in np.argwhere(where)[:4]]
  return " ".join(idx) + (" …" if np.count_nonzero(where) > 4 else "")


def params_to_ahn(params, model: ModelConfig, where) -> np.ndarray:
  """W_Q, W_K, W_V → allparam, exact when W_Kᵀ W_Q = [[A, 0], [0, 0]] and W_V = [[B, 0], [0, v]];
  a head with v ≠ 1 is rescaled to (B/v, v·A), the same layer (docs/theory.md §16.1)."""
  _refuse_non_linear(model, where, "ahn")
  V, KQ = _values_and_scores(params)
  d = model.d
  off = np.zeros(V.shape, bool)
  off[..., d, :d] = off[..., :d, d] = True
  bad_v, bad_kq = (V != 0) & off, (KQ != 0) & (off | _corner(KQ.shape, d))
  if bad_v.any() or bad_kq.any():
    what = [f"W_V (with W_O folded in) at [layer,head,row,col] {_entries(bad_v)}" if bad_v.any() else "",
            f"W_Kᵀ W_Q at {_entries(bad_kq)}" if bad_kq.any() else ""]
    raise InteropError(f"{where}: format ahn needs W_V = [[P, 0], [0, 1]] and W_Kᵀ W_Q = [[Qᵀ, 0], [0, 0]] "
                       f"per head; nonzero entries outside those blocks: {'; '.join(w for w in what if w)}")
  v = V[..., d, d]
  null = (v == 0) & ~(np.any(V != 0, axis=(-1, -2)) & np.any(KQ != 0, axis=(-1, -2)))
  if np.any((v == 0) & ~null):
    raise InteropError(f"{where}: format ahn fixes the y→y value entry to 1; heads at [layer,head] "
                       f"{_entries((v == 0) & ~null)} have it 0 with a nonzero layer, which no rescaling reaches")
  s = np.where(null, 1.0, v)[..., None, None]
  P = np.where(null[..., None, None], 0.0, V[..., :d, :d] / s)
  Q = np.where(null[..., None, None], 0.0, np.swapaxes(s * KQ[..., :d, :d], -1, -2))
  return np.stack([P, Q], axis=2)


def _corner(shape, d: int) -> np.ndarray:
  m = np.zeros(shape, bool)
  m[..., d, d] = True
  return m


def _refuse_non_linear(model: ModelConfig, where, fmt: str) -> None:
  if model.attention != "linear" or model.mlp is not None:
    raise InteropError(f"{where}: format {fmt} holds linear attention only; this model has "
                       f"attention={model.attention!r}, mlp={model.mlp!r}")


def _load_ahn(path: Path, n_layers, n_heads) -> tuple[dict, list[str]]:
  a, read = _ahn_tensor(path)
  if a.ndim != 5 or a.shape[2] != 2 or a.shape[3] != a.shape[4] or min(a.shape) < 1:
    raise _fail(path, f"allparam has shape {a.shape}, expected (n_layer, n_head, 2, d, d)")
  a = _floats(path, "allparam", a)
  _shape_arg(path, "n_layers", n_layers, a.shape[0])
  _shape_arg(path, "n_heads", n_heads, a.shape[1])
  notes = [f"read {read}", "allparam[l, h, 0] = P (value x→x block; y→y fixed to 1), "
           "allparam[l, h, 1] = Q (their code scores z_queryᵀ Q z_key): W_K = I, W_Q = [[Qᵀ, 0], [0, 0]], "
           "W_V = [[P, 0], [0, 1]]"]
  return ahn_to_params(a), notes


def _ahn_bytes(allparam: np.ndarray, path: Path) -> bytes:
  suffix = path.suffix.lower()
  if suffix == ".npy":
    buf = _io.BytesIO()
    np.save(buf, allparam)
    return buf.getvalue()
  if suffix == ".npz":
    return io.npz_bytes({"allparam": allparam})
  if suffix in (".pt", ".pth"):
    try:
      import torch
    except ImportError:
      raise _fail(path, "writing .pt/.pth needs torch, which is not installed; write .npy or .npz") from None
    buf = _io.BytesIO()
    torch.save({"allparam": torch.from_numpy(np.ascontiguousarray(allparam))}, buf)
    return buf.getvalue()
  raise _fail(path, f"has suffix {suffix!r}; format ahn writes .npy, .npz or .pt/.pth")


# --- von-oswald: the Haiku Transformer of von Oswald et al. 2023 ----------------------------------


def _vo_flat(path: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
  suffix = path.suffix.lower()
  if suffix == ".npz":
    return _read_npz(path)
  if suffix in PICKLES:
    tree = _read_pickle(path, allow_pickle)
    if not isinstance(tree, Mapping) or not all(isinstance(v, Mapping) for v in tree.values()):
      raise _fail(path, "expected a Haiku parameter dict {module path: {param name: array}}")
    return {f"{m}/{p}": _as_numpy(a) for m, ps in tree.items() for p, a in ps.items()}
  raise _fail(path, f"has suffix {suffix!r}; format von-oswald reads .npz of '<module>/<param>' keys "
                    f"or a pickled Haiku dict ({', '.join(PICKLES)}, with allow_pickle)")


def _vo_modules(path: Path, flat: dict) -> dict[str, dict[str, np.ndarray]]:
  modules: dict[str, dict[str, np.ndarray]] = {}
  for key, a in flat.items():
    if "/" not in key:
      raise _fail(path, f"key {key!r} is not '<module path>/<param>' (Haiku's flattened names)")
    module, param = key.rsplit("/", 1)
    modules.setdefault(module, {})[param] = np.asarray(a)
  if not modules:
    raise _fail(path, "holds no parameters")
  return modules


def _vo_layers(path: Path, modules: dict, n_layers) -> tuple[list[dict], str, bool]:
  """[{projection: w}] per layer, the root name, and whether the layers share one module (deq)."""
  roots = sorted({m.split("/", 1)[0] for m in modules})
  if len(roots) != 1:
    raise _fail(path, f"holds modules of several models {roots}; expected one Haiku Transformer")
  root = roots[0]
  shared = [f"{root}/{VO_SHARED}/{p}" for p in VO_PROJECTIONS]
  per_layer = sorted({m[:m.rindex("/")] for m in modules if m.startswith(f"{root}/{VO_LAYER}")})
  allowed = set(shared) | {f"{lay}/{p}" for lay in per_layer for p in VO_PROJECTIONS}
  other = sorted(set(modules) - allowed)
  if other:
    raise _fail(path, f"module(s) {other[:3]} cannot be represented: lintheory reads their attention-only "
                      f"linear Transformer (no layer norm, MLP, input/output mapping or softmax mix)")
  if any(m in modules for m in shared):
    if per_layer:
      raise _fail(path, f"mixes the shared module {root}/{VO_SHARED} with per-layer modules")
    L = 1 if n_layers is None else n_layers
    if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or L < 1:
      raise _fail(path, f"n_layers must be an integer >= 1, got {n_layers!r}")
    names, deq = [f"{root}/{VO_SHARED}"] * int(L), True
  else:
    idx = sorted(int(m.rsplit("_", 1)[1]) for m in per_layer if m.rsplit("_", 1)[1].isdigit())
    if not idx or idx != list(range(len(per_layer))):
      raise _fail(path, f"per-layer modules {per_layer[:3]} are not {root}/{VO_LAYER}0 … {VO_LAYER}L-1")
    _shape_arg(path, "n_layers", n_layers, len(idx))
    names, deq = [f"{root}/{VO_LAYER}{i}" for i in idx], False
  layers = []
  for name in names:
    layer = {}
    for p in VO_PROJECTIONS:
      params = modules.get(f"{name}/{p}")
      if params is None or "w" not in params:
        raise _fail(path, f"{name}/{p}/w is missing")
      if set(params) - {"w", "b"}:
        raise _fail(path, f"{name}/{p} has parameters {sorted(params)}; expected w (and a zero b)")
      if "b" in params and np.any(_floats(path, f"{name}/{p}/b", params["b"]) != 0):
        raise _fail(path, f"{name}/{p}/b is nonzero (use_bias): lintheory's attention has no biases")
      layer[p] = _floats(path, f"{name}/{p}/w", params["w"])
    layers.append(layer)
  return layers, root, deq


def _vo_layer(path: Path, layer: dict, H: int, N: int) -> tuple[np.ndarray, ...]:
  """One layer's Haiku projections → W_Q, W_K [H, D, D], N·Wvᵀ [H, V, D] (W_V when W_O is kept), and the
  per-head value and output blocks Wv [H, D, V], Wo [H, V, D] (docs/theory.md §16.2)."""
  q, k, v, o = (layer[p] for p in VO_PROJECTIONS)
  D = q.shape[0] if q.ndim == 2 else 0
  if q.ndim != 2 or D < 2 or k.shape != q.shape or v.ndim != 2 or v.shape[0] != D:
    raise _fail(path, f"query/key/value w have shapes {q.shape}, {k.shape}, {v.shape}; expected "
                      f"(D, H·key_size) twice and (D, H·value_size), D = d + 1 >= 2")
  if q.shape[1] % H or v.shape[1] % H or o.shape != (v.shape[1], D):
    raise _fail(path, f"with {H} head(s), query w {q.shape}, value w {v.shape} and linear w {o.shape} do not "
                      f"split into heads (expected widths divisible by {H} and linear w (H·value_size, {D}))")
  K, V = q.shape[1] // H, v.shape[1] // H
  Wq, Wk, Wv = (a.reshape(D, H, -1).transpose(1, 0, 2) for a in (q, k, v))  # [H, D, K], head-major columns
  Wo = o.reshape(H, V, D)
  if K == D:
    W_Q, W_K = np.swapaxes(Wq, 1, 2), np.swapaxes(Wk, 1, 2)
  else:  # only the product Wk Wqᵀ enters: W_K = I, W_Q = Wk Wqᵀ
    W_Q, W_K = Wk @ np.swapaxes(Wq, 1, 2), np.broadcast_to(np.eye(D), (H, D, D)).copy()
  return W_Q, W_K, N * np.swapaxes(Wv, 1, 2), Wv, Wo


def _load_von_oswald(path: Path, n_context, n_layers, n_heads, allow_pickle) -> tuple[dict, list[str]]:
  modules = _vo_modules(path, _vo_flat(path, allow_pickle))
  layers, root, deq = _vo_layers(path, modules, n_layers)
  if n_context is None:
    raise _fail(path, "von-oswald attention has no 1/N, so the conversion scales W_V by N: pass "
                      "n_context (--n-context), their config.dataset_size")
  H = 1 if n_heads is None else n_heads
  if isinstance(H, bool) or not isinstance(H, (int, np.integer)) or H < 1:
    raise _fail(path, f"n_heads must be an integer >= 1, got {n_heads!r}")
  per = [_vo_layer(path, layer, int(H), n_context) for layer in layers]
  shapes = {tuple(a.shape for a in p) for p in per}
  if len(shapes) > 1:
    raise _fail(path, "layers have different shapes")
  D, K = per[0][0].shape[-1], layers[0]["query"].shape[1] // int(H)
  # A shared output block (the same Wo for every head, value_size = D) stays W_O; otherwise fold it in.
  keep_W_O = per[0][4].shape[1] == D and all(np.array_equal(Wo, Wo[:1].repeat(len(Wo), 0)) for *_, Wo in per) \
      and not all(np.array_equal(Wo, np.broadcast_to(np.eye(D), Wo.shape)) for *_, Wo in per)
  params = {"W_Q": [], "W_K": [], "W_V": []}
  W_O = []
  for W_Q, W_K, W_V, Wv, Wo in per:
    params["W_Q"].append(W_Q)
    params["W_K"].append(W_K)
    if keep_W_O:
      params["W_V"].append(W_V)
      W_O.append(Wo[0].T)
    else:  # W_V^h = N (Wv^h Wo^h)ᵀ: the value and output blocks of head h, in column form
      params["W_V"].append(n_context * np.swapaxes(Wv @ Wo, 1, 2))
  params = {k: np.stack(v) for k, v in params.items()}
  if H == 1:
    params = {k: v[:, 0] for k, v in params.items()}
  if keep_W_O:
    params["W_O"] = np.stack(W_O)
  notes = [f"Haiku model {root!r}, " + (f"one shared attention module applied {len(layers)} time(s) (config.deq)"
                                          if deq else f"{len(layers)} per-layer attention modules (deq=False)"),
           f"{H} head(s); " + ("key_size = D: W_Q, W_K = query w, key w transposed per head; "
                               if K == D else "key_size != D: W_K = I, W_Q = key w · query wᵀ per head; ")
           + ("W_V = N·value wᵀ, W_O = linear wᵀ (one output block for all heads)" if keep_W_O
              else "W_V = N·(value w · linear w)ᵀ per head")
           + f", N = {n_context} (their attention has no 1/N)",
           "assumes their defaults the weights cannot show: include_query=False, y_update=False, "
           "dampening=1, no positional encoding, linear attention (use_softmax=False, sum_norm=False)"]
  return params, notes


def _vo_tree(params, model: ModelConfig, n_context: int, where) -> dict[str, dict[str, np.ndarray]]:
  """lintheory weights → Haiku parameters with key_size = value_size = D (docs/theory.md §16.2)."""
  _refuse_non_linear(model, where, "von-oswald")
  L, H, D = model.n_layers, model.n_heads, model.D
  W_Q, W_K, W_V = (_heads(np.asarray(params[k])) for k in ("W_Q", "W_K", "W_V"))
  W_O = np.asarray(params["W_O"]) if "W_O" in params else np.broadcast_to(np.eye(D, dtype=W_V.dtype), (L, D, D))

  def cat(W):  # [H, D, D] column-form matrices → Haiku w [D, H·D], head-major columns
    return np.swapaxes(W, 1, 2).transpose(1, 0, 2).reshape(D, H * D)

  tree = {}
  for l in range(L):
    name = f"{VO_ROOT}/{VO_SHARED}" if L == 1 else f"{VO_ROOT}/{VO_LAYER}{l}"
    tree[f"{name}/query"] = {"w": cat(W_Q[l])}
    tree[f"{name}/key"] = {"w": cat(W_K[l])}
    tree[f"{name}/value"] = {"w": cat(W_V[l] / n_context)}
    tree[f"{name}/linear"] = {"w": np.concatenate([W_O[l].T] * H, axis=0)}
  return tree


def _vo_nest(flat: dict) -> dict[str, dict[str, np.ndarray]]:
  tree: dict[str, dict[str, np.ndarray]] = {}
  for key, a in flat.items():
    module, param = key.rsplit("/", 1)
    tree.setdefault(module, {})[param] = a
  return tree


def _vo_bytes(tree: dict, path: Path) -> bytes:
  suffix = path.suffix.lower()
  if suffix == ".npz":
    return io.npz_bytes({f"{m}/{p}": a for m, ps in tree.items() for p, a in ps.items()})
  if suffix in PICKLES:
    return pickle.dumps({m: dict(ps) for m, ps in tree.items()}, protocol=4)
  raise _fail(path, f"has suffix {suffix!r}; format von-oswald writes .npz or {', '.join(PICKLES)}")


# --- npz: lintheory's own layout -----------------------------------------------------------------


def _load_npz(path: Path, n_layers, n_heads) -> tuple[dict, list[str]]:
  if path.suffix.lower() != ".npz":
    raise _fail(path, f"has suffix {path.suffix!r}; format npz reads an .npz of W_Q, W_K, W_V (W_O, W_1, W_2)")
  arrays = _read_npz(path)
  missing = [n for n in ("W_Q", "W_K", "W_V") if n not in arrays]
  extra = sorted(set(arrays) - set(NAMES))
  if missing or extra:
    raise _fail(path, f"holds {sorted(arrays)}; expected W_Q, W_K, W_V and optionally W_O, W_1, W_2 "
                      f"(missing {missing}, unexpected {extra})")
  if ("W_1" in arrays) != ("W_2" in arrays):
    raise _fail(path, "an MLP needs both W_1 and W_2")
  params = {k: _floats(path, k, a) for k, a in arrays.items()}
  if params["W_Q"].ndim == 4 and n_heads is None:  # (L, H, D, D) and (S, L, D, D) look alike
    raise _fail(path, f"W_Q has shape {params['W_Q'].shape}: pass n_heads (--heads) for H heads; an array "
                      "with a leading seed axis holds several models: save one seed per file")
  try:
    model = ModelConfig.from_params(params, n_heads=n_heads)
  except (ValueError, KeyError) as e:
    raise _fail(path, str(e)) from None
  for name, shape in sorted(param_shapes(model).items()):
    if params[name].shape != shape:
      raise _fail(path, f"{name} has shape {params[name].shape}, W_Q's shape {params['W_Q'].shape} implies {shape}")
  _shape_arg(path, "n_layers", n_layers, model.n_layers)
  _shape_arg(path, "n_heads", n_heads, model.n_heads)
  notes = ["lintheory's layout (docs/theory.md §2)"] + (["W_1, W_2: a ReLU MLP assumed"] if "W_1" in params else [])
  return params, notes


# --- the two entry points --------------------------------------------------------------------------


def load(fmt: str, path, *, n_context: int | None = None, n_layers: int | None = None,
         n_heads: int | None = None, allow_pickle: bool = False) -> Imported:
  """Read another codebase's weights into lintheory's layout (docs/theory.md §16).

  n_context: N of the task (required for von-oswald, whose weights depend on it; DEFAULT_N_CONTEXT
  otherwise). n_layers: how often von-oswald's shared (deq) module is applied (default 1, their
  config.num_layers); n_heads: their config.num_heads (default 1; the widths do not tell it). For the
  other formats both are read from the shapes and, when given, must agree."""
  if fmt not in FORMATS:
    raise InteropError(f"format must be one of {FORMATS}, got {fmt!r}")
  path = _check_path(path)
  N = _n_context(path, n_context, None if fmt == "von-oswald" else DEFAULT_N_CONTEXT)
  if fmt == "ahn":
    params, notes = _load_ahn(path, n_layers, n_heads)
  elif fmt == "von-oswald":
    params, notes = _load_von_oswald(path, N, n_layers, n_heads, allow_pickle)
  else:
    params, notes = _load_npz(path, n_layers, n_heads)
  # the conversions write an explicit head axis only for H > 1, so the shapes are unambiguous here
  model = ModelConfig.from_params(params, n_heads=params["W_Q"].shape[1] if params["W_Q"].ndim == 4 else None)
  for name, a in params.items():
    if not np.all(np.isfinite(a)):  # a finite file can still overflow when scaled by N
      raise _fail(path, f"{name} overflows to a non-finite value after conversion")
  rundir.check_params(path, params, model, "float64")
  task = TaskConfig(d=model.d, n_context=N)
  source = {"format": fmt, "path": str(path), "sha256": io.sha256_file(path), "n_context": N,
            "n_context_given": n_context is not None, "notes": notes}
  return Imported(params, model, task, source)


def export(fmt: str, params, model: ModelConfig, path, *, n_context: int | None = None,
           dtype=None) -> Path:
  """Write lintheory weights in format `fmt` to `path`, atomically (docs/theory.md §16).

  n_context: N (required for von-oswald, whose value matrices carry N). dtype: of the written
  arrays (default: that of params). A model outside the format's class is refused, nothing written."""
  if fmt not in FORMATS:
    raise InteropError(f"format must be one of {FORMATS}, got {fmt!r}")
  path = Path(path)
  params = {k: np.asarray(v) for k, v in params.items()}
  try:
    rundir.check_params("the weights", params, model)
  except rundir.RunError as e:
    raise InteropError(f"{path}: cannot export: {e}") from None
  out = np.dtype(dtype) if dtype is not None else params["W_Q"].dtype
  if out not in rundir.FLOATS:
    raise InteropError(f"{path}: dtype must be float32 or float64, got {out}")
  if fmt == "ahn":
    arrays = {"allparam": params_to_ahn(params, model, path)}
  elif fmt == "von-oswald":
    if isinstance(n_context, bool) or not isinstance(n_context, (int, np.integer)) or n_context < 1:
      raise InteropError(f"{path}: von-oswald weights carry N (no 1/N in their attention): pass n_context >= 1, "
                         f"got {n_context!r}")
    tree = _vo_tree(params, model, int(n_context), path)
    arrays = {f"{m}/{p}": a for m, ps in tree.items() for p, a in ps.items()}
  else:
    if path.suffix.lower() != ".npz":
      raise InteropError(f"{path}: format npz writes an .npz file, got suffix {path.suffix!r}")
    arrays = params
  arrays = {k: a.astype(out) for k, a in arrays.items()}
  bad = [k for k, a in arrays.items() if not np.all(np.isfinite(a))]
  if bad:
    raise InteropError(f"{path}: {bad[0]} overflows {out} after conversion; nothing written")
  if fmt == "ahn":
    data = _ahn_bytes(arrays["allparam"], path)
  elif fmt == "von-oswald":
    data = _vo_bytes(_vo_nest(arrays), path)
  else:
    data = io.npz_bytes(arrays)
  io.atomic_write_bytes(path, data)
  return path
