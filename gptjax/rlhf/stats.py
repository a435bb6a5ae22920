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
