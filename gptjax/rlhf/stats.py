"""Statistics of RLHF evaluations: paired win rates and the over-optimisation curve.

Pure numpy; the RLHF loop, the over-optimisation comparison across runs and the
pipeline report call them.
"""

import math

import numpy as np


def win_rate(a: list[float], b: list[float]) -> dict:
  """P(a beats b) with ties counted half, and a 95% normal-approximation interval."""
  a, b = np.asarray(a), np.asarray(b)
  wins = (a > b + 1e-9).astype(float) + 0.5 * (np.abs(a - b) <= 1e-9)
  n = len(wins)
  p = float(wins.mean())
  half = 1.96 * math.sqrt(max(wins.var(), 1e-12) / n)
  return {
    "win_rate": p,
    "ci95": [p - half, p + half],
    "n": n,
    "wins": int((a > b + 1e-9).sum()),
    "ties": int((np.abs(a - b) <= 1e-9).sum()),
    "losses": int((a < b - 1e-9).sum()),
  }


def overoptimization_curve(sqrt_kl, proxy, gold, n_bins: int = 8) -> dict:
  """Gao et al. (2022): mean proxy and gold score in equal-width bins of
  sqrt(KL to SFT), and where the gold curve turns over.

  sqrt_kl, proxy, gold: per-PPO-iteration values [N]. Returns the bin centres
  and means (empty bins dropped), the sqrt-KL of the gold peak, the gold score
  there and at the largest KL, and `turned_over`: the peak lies before the
  last bin and the gold score then fell (the proxy kept rising or not).
  """
  x = np.asarray(sqrt_kl, float)
  edges = np.linspace(x.min(), x.max() + 1e-9, max(min(n_bins, len(x)), 1) + 1)
  which = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
  bins = [b for b in range(len(edges) - 1) if (which == b).any()]
  mean = lambda y: [float(np.asarray(y, float)[which == b].mean()) for b in bins]
  centre = [float(x[which == b].mean()) for b in bins]
  g = mean(gold)
  peak = int(np.argmax(g))
  return {
    "sqrt_kl": centre,
    "proxy": mean(proxy),
    "gold": g,
    "peak_sqrt_kl": centre[peak],
    "peak_gold": g[peak],
    "final_gold": g[-1],
    "turned_over": bool(peak < len(g) - 1 and g[-1] < g[peak]),
  }


def paired_bootstrap(
  a, b, n_boot: int = 10_000, seed: int = 0, wins=None, chunk: int = 1000
) -> dict:
  """Paired bootstrap over prompts: method `a` against baseline `b`, scored per prompt.

  a, b: [N] scores of the same N prompts (paired). Resamples the N prompts
  with replacement n_boot times and reports 95% percentile intervals for the
  difference of means, mean(a) - mean(b), and for the win rate, P(a beats b)
  with ties counted half, plus wins/ties/losses. Pairing is the point: the
  prompt-to-prompt spread of difficulty cancels in a - b, so the interval is
  much narrower than one from two unpaired means.

  wins: optional [N] per-prompt win values in [0, 1] to use instead of
  1[a > b] + 0.5 * 1[a == b]; an estimator that averages over several
  candidate picks per prompt (best-of-n over all subsets) passes its
  expected win values (wins/ties/losses still compare `a` and `b` as given).
  """
  a, b = np.asarray(a, float), np.asarray(b, float)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(
      f"paired_bootstrap needs two equal-length 1-D arrays, got {a.shape}, {b.shape}"
    )
  if n_boot < 1:
    raise ValueError(f"n_boot={n_boot} must be >= 1")
  n = len(a)
  win, tie, loss = a > b + 1e-9, np.abs(a - b) <= 1e-9, a < b - 1e-9
  counts = {"wins": int(win.sum()), "ties": int(tie.sum()), "losses": int(loss.sum())}
  w = win + 0.5 * tie
  if wins is not None:
    w = np.asarray(wins, float)
    if w.shape != a.shape or (w < 0).any() or (w > 1).any():
      raise ValueError(f"wins must be [N]={a.shape} values in [0, 1]")
  values = np.stack([a - b, w], 1)  # [N, 2]
  rng = np.random.default_rng(seed)
  boot = []
  for start in range(0, n_boot, chunk):  # [chunk, N] indices at a time: bounded memory
    idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
    boot.append(values[idx].mean(1))  # [chunk, 2]
  lo, hi = np.percentile(np.concatenate(boot), [2.5, 97.5], axis=0)  # [2] each
  return {
    "n": n,
    "n_boot": n_boot,
    "mean_a": float(a.mean()),
    "mean_b": float(b.mean()),
    "mean_diff": float(values[:, 0].mean()),
    "mean_diff_ci95": [float(lo[0]), float(hi[0])],
    "win_rate": float(values[:, 1].mean()),
    "win_rate_ci95": [float(lo[1]), float(hi[1])],
    **counts,
  }
