"""Scaling laws: power-law fits, IsoFLOP analysis, and how compute is counted.

Pure functions; `gptjax.scaling.sweep` runs the grid and calls them on its results.

Compute, stated explicitly. A run of D training tokens costs

  C = D x flops_per_token,   flops_per_token = 6 N_matmul + 12 n_layer d_model T

(forward + backward; PaLM appendix B; computed by `gptjax.model.flops_per_token`
from `gptjax.model.matmul_params`, see `gptjax.scaling.grid.make_point`), where
N_matmul is every parameter that takes part in a matmul: the non-embedding
parameters N plus the token embedding (the LM head is tied to it), but not the
position embedding. The second term is attention's score and value matmuls,
12 n_layer d_model T per token (T = context length). Kaplan et al. (2020) use
C ~ 6 N D with the *non-embedding* N; Hoffmann et al. (2022) count all
parameters. At the sizes a CPU can train the two differ by up to an order of
magnitude, and which one is used changes the fitted exponents (Pearce & Song
2024); the sweep reports both N (non-embedding) and n_params (all).

Fits.
  L(N) = E + A / N^alpha  and  L(D) = E + B / D^beta   (`fit_power_law`),
  parametrised as L = E + B (x / x0)^-alpha with x0 the geometric mean of x,
  so that B is O(loss); linear in (E, B) given alpha, so least squares reduce
  to a bounded 1-D minimisation over alpha (variable projection, scipy's
  nnls + minimize_scalar).
  Kaplan's form without the irreducible term (E = 0) is a straight line in
  log-log space (`fit_pure_power_law`); his alpha_N ~ 0.076 and alpha_D ~
  0.095 are of that form.
  Confidence intervals: case bootstrap (resample the points, refit).

IsoFLOP (Chinchilla approach 2). For each compute budget, fit a parabola of
loss against log N; its vertex is the loss-optimal N_opt(C) (and likewise
D_opt(C) against log D). Then fit N_opt = k C^a and D_opt = k' C^b by least
squares in log space; bootstrap by resampling runs within each budget.
Hoffmann et al. find a ~ b ~ 0.5, i.e. a constant ~20 tokens per parameter.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
from scipy import optimize

KAPLAN_ALPHA_N = 0.076  # L(N) = (N_c / N)^alpha_N, non-embedding N
KAPLAN_ALPHA_D = 0.095  # L(D) = (D_c / D)^alpha_D
KAPLAN_N_OPT_EXPONENT = 0.73  # Kaplan's N_opt ~ C^0.73 (non-embedding N)
HOFFMANN_A = 0.5  # N_opt ~ C^a (approach 2: 0.49)
HOFFMANN_B = 0.5  # D_opt ~ C^b (approach 2: 0.51)
HOFFMANN_TOKENS_PER_PARAM = 20.0


# ----------------------------------------------------------------------------
# Power laws.


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """L(x) = E + A x^-alpha (E = 0 for the pure power law)."""

  E: float
  A: float
  alpha: float
  rmse: float = float("nan")
  n_points: int = 0
  at_bound: bool = False  # alpha at its search bound or E = 0 in the offset form:
  # the points do not identify all three parameters

  def __call__(self, x):
    x = np.asarray(x, np.float64)
    return self.E + np.exp(math.log(self.A) - self.alpha * np.log(x))

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _check_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
  if np.any(x <= 0) or not np.all(np.isfinite(y)):
    raise ValueError("power-law fits need x > 0 and finite y")
  return x, y


def fit_pure_power_law(x, y) -> PowerLaw:
  """L = A x^-alpha, by least squares on log L against log x (Kaplan's form)."""
  x, y = _check_xy(x, y)
  if len(x) < 2 or np.any(y <= 0):
    raise ValueError("the pure power law needs >= 2 points with y > 0")
  slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
  law = PowerLaw(0.0, float(math.exp(intercept)), float(-slope), n_points=len(x))
  return dataclasses.replace(law, rmse=float(np.sqrt(np.mean((law(x) - y) ** 2))))


def _linear_part(u: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, float, float]:
  """For fixed alpha, L = E + B exp(-alpha u) is linear in (E, B): non-negative
  least squares. Returns (E, B, sum of squared residuals)."""
  X = np.stack([np.ones_like(u), np.exp(-alpha * u)], axis=1)  # [n, 2]
  (E, B), rnorm = optimize.nnls(X, y)
  return float(E), float(B), float(rnorm**2)


def fit_power_law(x, y, max_alpha: float = 3.0) -> PowerLaw:
  """L = E + A x^-alpha with E >= 0, A >= 0, 0 < alpha <= max_alpha (least squares in L).

  Stable parametrisation: u = log(x / x0), x0 the geometric mean of x, so that
  L = E + B exp(-alpha u) with B = A x0^-alpha of the order of the losses.
  Given alpha the model is linear in (E, B) (solved by non-negative least
  squares), so the fit is a 1-D minimisation over alpha of the projected
  residual (variable projection, Golub & Pereyra 1973): a grid locates the
  basin, `scipy.optimize.minimize_scalar` (bounded Brent) refines it. This
  finds the global least-squares optimum on the grid's resolution without
  starting-point sensitivity, and is fast enough to bootstrap.
  """
  x, y = _check_xy(x, y)
  if len(x) < 3:
    raise ValueError(f"E + A x^-alpha has 3 parameters; got {len(x)} points")
  if len(np.unique(x)) < 3:
    raise ValueError("E + A x^-alpha needs >= 3 distinct x")
  log_x0 = float(np.mean(np.log(x)))
  u = np.log(x) - log_x0
  sse = lambda a: _linear_part(u, y, a)[2]
  grid = np.geomspace(1e-3, max_alpha, 48)
  values = np.array([sse(a) for a in grid])
  k = int(np.argmin(values))
  lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
  r = optimize.minimize_scalar(sse, bounds=(lo, hi), method="bounded", options={"xatol": 1e-7})
  alpha = float(r.x) if r.fun <= values[k] else float(grid[k])
  E, B, rss = _linear_part(u, y, alpha)
  if B <= 0:
    raise RuntimeError("power-law fit degenerate: no decreasing component (A = 0)")
  at_bound = bool(alpha >= 0.999 * max_alpha or alpha <= 1.01e-3 or E == 0.0)
  law = PowerLaw(E, float(B * math.exp(alpha * log_x0)), alpha, n_points=len(x), at_bound=at_bound)
  return dataclasses.replace(law, rmse=float(math.sqrt(rss / len(x))))


def bootstrap(
  fit: Callable[[np.ndarray], dict], n_items: int, n_boot: int, seed: int = 0
) -> dict[str, np.ndarray]:
  """Case bootstrap: `fit(indices)` on `n_boot` resamples of range(n_items).

  `fit` returns a dict of floats (or raises, e.g. for a degenerate resample,
  which is skipped). Returns {name: array of the successful resamples}.
  """
  rng = np.random.default_rng(seed)
  out: dict[str, list[float]] = {}
  for _ in range(n_boot):
    idx = rng.integers(0, n_items, n_items)
    try:
      values = fit(idx)
    except (ValueError, RuntimeError, np.linalg.LinAlgError):
      continue
    for k, v in values.items():
      out.setdefault(k, []).append(v)
  return {k: np.asarray(v) for k, v in out.items()}


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
  """The central `level` percentile interval of bootstrap samples."""
  samples = np.asarray(samples, np.float64)
  samples = samples[np.isfinite(samples)]
  if len(samples) == 0:
    return (float("nan"), float("nan"))
  lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
  return (float(lo), float(hi))


def fit_with_ci(
  x, y, n_boot: int = 1000, seed: int = 0, pure: bool = False, level: float = 0.95
) -> dict:
  """A power-law fit and bootstrap intervals of its parameters.

  Returns {'fit': PowerLaw dict, 'ci': {param: [lo, hi]}, 'n_boot_ok': int}.
  Resamples with fewer distinct x than parameters are skipped.
  """
  x, y = _check_xy(x, y)
  fitter = fit_pure_power_law if pure else fit_power_law
  law = fitter(x, y)
  need = 2 if pure else 3

  def one(idx):
    if len(np.unique(x[idx])) < need:
      raise ValueError("degenerate resample")
    f = fitter(x[idx], y[idx])
    return {"alpha": f.alpha, "A": f.A, "E": f.E}

  samples = bootstrap(one, len(x), n_boot, seed)
  return {
    "fit": law.as_dict(),
    "ci": {k: list(interval(v, level)) for k, v in samples.items()},
    "level": level,
    "n_boot_ok": int(len(samples.get("alpha", []))),
  }


# ----------------------------------------------------------------------------
# IsoFLOP profiles (Chinchilla approach 2).


@dataclasses.dataclass(frozen=True)
class Parabola:
  """loss = c0 + c1 z + c2 z^2 with z = log x; vertex at z* = -c1 / (2 c2)."""

  c0: float
  c1: float
  c2: float
  z_min: float  # the range of log x the fit saw
  z_max: float

  @property
  def valid(self) -> bool:
    return self.c2 > 0

  @property
  def x_opt(self) -> float:
    if not self.valid:
      return float("nan")
    z = -self.c1 / (2 * self.c2)
    return math.exp(z) if abs(z) < 700 else (math.inf if z > 0 else 0.0)

  @property
  def loss_opt(self) -> float:
    z = -self.c1 / (2 * self.c2)
    return self.c0 + self.c1 * z + self.c2 * z * z if self.valid else float("nan")

  @property
  def interior(self) -> bool:
    """Whether the vertex lies within the fitted range (no extrapolation)."""
    return self.valid and self.z_min <= -self.c1 / (2 * self.c2) <= self.z_max

  def __call__(self, x):
    z = np.log(np.asarray(x, np.float64))
    return self.c0 + self.c1 * z + self.c2 * z * z


def fit_parabola(x, loss) -> Parabola:
  """Least-squares parabola of loss against log x (needs >= 3 distinct x)."""
  x, loss = _check_xy(x, loss)
  z = np.log(x)
  if len(np.unique(z)) < 3:
    raise ValueError("a parabola needs >= 3 distinct x")
  c2, c1, c0 = np.polyfit(z, loss, 2)
  return Parabola(float(c0), float(c1), float(c2), float(z.min()), float(z.max()))


def fit_exponent(c, y) -> tuple[float, float]:
  """y = k C^a by least squares in log space: returns (a, log k)."""
  c, y = np.asarray(c, np.float64), np.asarray(y, np.float64)
  if len(c) < 2 or np.any(c <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
    raise ValueError("exponent fit needs >= 2 budgets with positive optima")
  a, logk = np.polyfit(np.log(c), np.log(y), 1)
  return float(a), float(logk)


def isoflop_optima(budgets: Sequence[dict]) -> list[dict]:
  """Vertex of each IsoFLOP profile.

  budgets: [{'C': float, 'N': array, 'D': array, 'loss': array}, ...] (one
  entry per compute budget, one array element per run).
  Returns per budget {'C', 'N_opt', 'D_opt', 'loss_opt', 'parabola_N',
  'parabola_D', 'interior'}; budgets with < 3 runs or a non-convex profile
  get NaN optima.
  """
  out = []
  for b in budgets:
    row = {
      "C": float(b["C"]),
      "n_runs": int(len(b["N"])),
      "N_opt": float("nan"),
      "D_opt": float("nan"),
      "loss_opt": float("nan"),
      "interior": False,
    }
    try:
      pn, pd = fit_parabola(b["N"], b["loss"]), fit_parabola(b["D"], b["loss"])
      row.update(
        N_opt=pn.x_opt,
        D_opt=pd.x_opt,
        loss_opt=pn.loss_opt,
        interior=bool(pn.interior and pd.interior),
        parabola_N=dataclasses.asdict(pn),
        parabola_D=dataclasses.asdict(pd),
      )
    except ValueError:
      pass
    out.append(row)
  return out


def isoflop_analysis(
  budgets: Sequence[dict], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
  """Chinchilla approach 2: N_opt ~ C^a, D_opt ~ C^b with bootstrap intervals.

  Only budgets whose vertex lies inside the sampled range of N and of D
  (`interior`) enter the exponent fits: a vertex extrapolated beyond the
  profile is not a measured optimum. Resampling is of runs within each budget
  (every budget keeps its size), then the parabolas and the two exponent fits
  are redone.
  Returns {'optima': [...], 'a', 'b', 'log_k_N', 'log_k_D', 'ci': {'a', 'b'},
  'tokens_per_param': [per budget D_opt / N_opt], 'n_budgets_used'}.
  """
  budgets = [
    {k: (np.asarray(v, np.float64) if k != "C" else float(v)) for k, v in b.items()}
    for b in budgets
  ]
  optima = isoflop_optima(budgets)

  def exponents(opt):
    ok = [o for o in opt if o["interior"]]
    if len(ok) < 2:
      raise ValueError(
        "fewer than 2 budgets whose IsoFLOP profile has its minimum inside the sampled range"
      )
    C = [o["C"] for o in ok]
    a, log_k_n = fit_exponent(C, [o["N_opt"] for o in ok])
    b, log_k_d = fit_exponent(C, [o["D_opt"] for o in ok])
    return {"a": a, "b": b, "log_k_N": log_k_n, "log_k_D": log_k_d, "n_used": len(ok)}

  result = {
    "optima": optima,
    "level": level,
    "tokens_per_param": [
      o["D_opt"] / o["N_opt"] if o["interior"] else float("nan") for o in optima
    ],
  }
  try:
    result.update(exponents(optima))
  except ValueError as e:
    result.update(a=float("nan"), b=float("nan"), error=str(e))
    return result

  rng = np.random.default_rng(seed)
  samples = {"a": [], "b": []}
  for _ in range(n_boot):
    resampled = []
    for b in budgets:
      idx = rng.integers(0, len(b["N"]), len(b["N"]))
      resampled.append({"C": b["C"], "N": b["N"][idx], "D": b["D"][idx], "loss": b["loss"][idx]})
    try:
      e = exponents(isoflop_optima(resampled))
    except ValueError:
      continue
    samples["a"].append(e["a"])
    samples["b"].append(e["b"])
  result["ci"] = {k: list(interval(np.asarray(v), level)) for k, v in samples.items()}
  result["n_boot_ok"] = len(samples["a"])
  return result


def optimal_at(result: dict, C: float) -> tuple[float, float]:
  """(N_opt, D_opt) of the fitted IsoFLOP power laws at compute C."""
  n = math.exp(result["log_k_N"]) * C ** result["a"]
  d = math.exp(result["log_k_D"]) * C ** result["b"]
  return n, d


def frontier(c, loss) -> tuple[np.ndarray, np.ndarray]:
  """The lower envelope of (compute, loss) points: the best loss reached with at
  most C FLOPs, as points sorted by C where the running minimum improves."""
  c, loss = np.asarray(c, np.float64), np.asarray(loss, np.float64)
  order = np.argsort(c)
  xs, ys, best = [], [], math.inf
  for i in order:
    if loss[i] < best:
      best = float(loss[i])
      xs.append(float(c[i]))
      ys.append(best)
  return np.asarray(xs), np.asarray(ys)
