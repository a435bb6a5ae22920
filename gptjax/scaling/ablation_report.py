"""Statistics, plots and report.md of the code-data ablation, from its points' done.json.

Per arm (code fraction): the mean over seeds and its 95% t-interval for every
probe metric. Per claim: the difference between the largest code fraction and
the code-free arm (Welch t-interval), a verdict (reproduces: the interval
lies on the improving side of 0; code hurts: on the other side; cannot tell:
it straddles 0), and the minimum effect this design could detect (two-sided
alpha 0.05, power 0.8, the seeds' pooled spread).
"""

from __future__ import annotations

import math
import os

import numpy as np
from scipy import stats

from gptjax import files, runs
from gptjax.scaling import grid

# (claim, probe metric, +1 if higher is better, what it measures). The primary
# metric is the continuous one: at this scale exact match is mostly 0.
CLAIMS = (
  ("long-range: synthetic nesting", "nested/logprob", 1, "closer of a synthetic bracket"),
  ("long-range: held-out code", "code_closers/logprob", 1, "closer in stdlib test files"),
  ("long-range: prose", "prose_closers/logprob", 1, "closing parenthesis/quote in prose"),
  # A closer's log-prob also rises when code only makes bracket tokens more
  # frequent; dependency modelling shows as a gain that grows with distance:
  # the per-run slope of log-prob on log2(distance) is higher with code.
  ("long-range vs distance: nesting", "nested/distance_slope", 1, "slope on log2 distance"),
  ("long-range vs distance: code", "code_closers/distance_slope", 1, "slope on log2 distance"),
  ("long-range vs distance: prose", "prose_closers/distance_slope", 1, "slope on log2 distance"),
  ("state tracking: code", "state_code/logprob", 1, "value after k assignments (Python)"),
  ("state tracking: English", "state_english/logprob", 1, "value after k assignments (English)"),
  ("reasoning after SFT: direct", "arith_direct/logprob", 1, "answer without a chain"),
  ("reasoning after SFT: chain of thought", "arith_cot/logprob", 1, "answer after the chain"),
  ("reasoning: chain-of-thought benefit", "cot_gain/logprob", 1, "cot minus direct log-prob"),
  ("few-shot in-context learning", "fewshot/logprob", 1, "mean over few-shot families"),
  ("English validation loss (cost)", "english_loss", -1, "nats/token; lower is better"),
)
GROUPED = (  # (plot, probes, x label): accuracy against what the probe varies
  ("longrange_vs_distance.png", ("nested", "code_closers", "prose_closers"), "distance"),
  ("state_vs_steps.png", ("state_code", "state_english"), "assignments"),
  ("arithmetic_vs_digits.png", ("arith_direct", "arith_cot"), "operand digits"),
)


LONG_RANGE = ("nested", "code_closers", "prose_closers")  # probes binned by distance

# ----------------------------------------------------------------------------
# Statistics.


def distance_slope(by: dict) -> float | None:
  """Least-squares slope of a probe's log-prob on log2 of its distance bin (the
  bins' item counts as weights): nats per doubling of the opener-to-closer
  distance. None with fewer than two bins."""
  groups = [(math.log2(_group_order(g)), q["logprob"], q["n"]) for g, q in by.items()]
  groups = [t for t in groups if math.isfinite(t[0]) and t[2] > 0]
  if len({x for x, _, _ in groups}) < 2:
    return None
  x, y, w = (np.asarray(v, np.float64) for v in zip(*groups))
  xm, ym = np.average(x, weights=w), np.average(y, weights=w)
  return float(np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2))


def metrics_of(row: dict) -> dict[str, float]:
  """Every scalar metric of one run: losses, and exact/logprob per probe and group."""
  out = {f"{k[:-5]}_loss": v for k, v in row["final_eval"].items() if k.endswith("/loss")}
  probes = row["probes"]
  for name, p in probes.items():
    for m in ("exact", "logprob"):
      out[f"{name}/{m}"] = p[m]
      for g, q in p.get("by", {}).items():
        out[f"{name}@{g}/{m}"] = q[m]
    if name in LONG_RANGE and p.get("by"):
      out[f"{name}/distance_slope"] = distance_slope(p["by"])
  few = [p for name, p in probes.items() if name.startswith("fewshot_")]
  for m in ("exact", "logprob"):
    if few:
      out[f"fewshot/{m}"] = float(np.mean([p[m] for p in few]))
    if "arith_cot" in probes and "arith_direct" in probes:
      out[f"cot_gain/{m}"] = probes["arith_cot"][m] - probes["arith_direct"][m]
  return out


def mean_ci(values, level: float = 0.95) -> dict:
  """Mean and the t-interval half-width over seeds (nan with fewer than 2)."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if len(v) < 2:
    return {"mean": float(v.mean()) if len(v) else float("nan"), "half": float("nan"), "n": len(v)}
  half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
  return {"mean": float(v.mean()), "half": float(half), "n": len(v)}


def difference(a, b, level: float = 0.95) -> dict:
  """mean(a) - mean(b) with its Welch t-interval."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  se = math.sqrt(va + vb)
  if se == 0:
    d = float(a.mean() - b.mean())
    return {"diff": d, "lo": d, "hi": d}
  df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  t = stats.t.ppf(0.5 + level / 2, df)
  d = float(a.mean() - b.mean())
  return {"diff": d, "lo": d - t * se, "hi": d + t * se}


def min_detectable_effect(a, b, alpha: float = 0.05, power: float = 0.8) -> float:
  """Smallest true difference of means a two-sample t-test at `alpha` detects with
  probability `power`, given the arms' pooled standard deviation."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  df = len(a) + len(b) - 2
  pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / df)
  t = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)
  return float(t * pooled * math.sqrt(1 / len(a) + 1 / len(b)))


def verdict(diff: dict, sign: int) -> str:
  lo, hi = sorted((sign * diff["lo"], sign * diff["hi"]))
  if lo > 0:
    return "reproduces"
  if hi < 0:
    return "does not reproduce (code hurts)"
  return "cannot tell at this size"


def arm_table(rows: list[dict], level: float = 0.95) -> dict:
  """{code fraction: {metric: mean_ci}} over the seeds of each arm."""
  by_arm: dict[float, list[dict]] = {}
  for r in rows:
    by_arm.setdefault(r["code_fraction"], []).append(metrics_of(r))
  out = {}
  for f, ms in sorted(by_arm.items()):
    keys = sorted({k for m in ms for k in m})
    values = {k: [m.get(k) for m in ms] for k in keys}
    out[f] = {k: dict(mean_ci(v, level), values=v) for k, v in values.items()}
  return out


def claims(table: dict, level: float = 0.95) -> list[dict]:
  """Each claim: largest code fraction vs none, its verdict and the design's MDE."""
  arms = sorted(table)
  lo_arm, hi_arm = arms[0], arms[-1]
  out = []
  for name, key, sign, what in CLAIMS:
    a = [v for v in table[hi_arm].get(key, {}).get("values", []) if v is not None]
    b = [v for v in table[lo_arm].get(key, {}).get("values", []) if v is not None]
    row = {"claim": name, "metric": key, "what": what, "arms": [lo_arm, hi_arm]}
    if len(a) < 2 or len(b) < 2:
      out.append(dict(row, verdict="not measured (fewer than two runs with it in an arm)"))
      continue
    d = difference(a, b, level)
    out.append(dict(row, **d, verdict=verdict(d, sign), mde=min_detectable_effect(a, b)))
  return out


# ----------------------------------------------------------------------------
# Plots.


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_vs_fraction(table: dict, path: str) -> None:
  """Each claim's metric against the code fraction: seeds as dots, mean +- CI."""
  plt = _plt()
  cols = 5
  rows_n = -(-len(CLAIMS) // cols)
  fig, axes = plt.subplots(rows_n, cols, figsize=(3.3 * cols, 2.9 * rows_n), squeeze=False)
  fs = sorted(table)
  for ax, (name, key, _, _) in zip(axes.flat, CLAIMS):
    stats_ = [table[f].get(key) for f in fs]
    ok = [(f, s) for f, s in zip(fs, stats_) if s is not None]
    for f, s in ok:
      ax.plot([f] * len(s["values"]), s["values"], ".", color="gray", alpha=0.6)
    if ok:
      x, s = zip(*ok)
      ax.errorbar(x, [v["mean"] for v in s], [v["half"] for v in s], fmt="o-", capsize=3)
    ax.set_title(name, fontsize=8)
    ax.set_xlabel("code fraction", fontsize=7)
    ax.set_ylabel(key, fontsize=7)
  for ax in list(axes.flat)[len(CLAIMS) :]:
    ax.axis("off")
  fig.tight_layout()
  files.save_figure(fig, path, dpi=110)


def _group_order(g: str) -> float:
  digits = "".join(c for c in g if c.isdigit() or c == ".")
  return float(digits) if digits else math.inf


def plot_grouped(table: dict, probes: tuple, xlabel: str, path: str) -> bool:
  """Exact match and log-prob against the probe's group (distance, steps, digits),
  one line per arm (mean over seeds). False if no arm has these probes."""
  plt = _plt()
  fs = sorted(table)
  cmap = plt.get_cmap("viridis")
  fig, axes = plt.subplots(2, len(probes), figsize=(4 * len(probes), 6), squeeze=False)
  drawn = False
  for j, probe in enumerate(probes):
    for i, m in enumerate(("exact", "logprob")):
      ax = axes[i, j]
      for k, f in enumerate(fs):
        keys = [x for x in table[f] if x.startswith(f"{probe}@") and x.endswith(f"/{m}")]
        groups = sorted((x[len(probe) + 1 : -len(m) - 1] for x in keys), key=_group_order)
        if not groups:
          continue
        drawn = True
        y = [table[f][f"{probe}@{g}/{m}"]["mean"] for g in groups]
        ax.plot(groups, y, "o-", color=cmap(k / max(len(fs) - 1, 1)), label=f"code {f:g}")
      ax.set_title(f"{probe}: {m}", fontsize=9)
      ax.set_xlabel(xlabel, fontsize=8)
      if m == "exact":
        ax.set_ylim(-0.05, 1.05)
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  if drawn:
    files.save_figure(fig, path, dpi=110)
  else:
    plt.close(fig)
  return drawn


# ----------------------------------------------------------------------------
# report.md


def _cell(s: dict | None, digits: int = 3) -> str:
  if not s or not np.isfinite(s["mean"]):
    return "n/a"
  return f"{s['mean']:.{digits}f} ± {s['half']:.{digits}f}"


def report(rows: list[dict], missing: list[dict], table: dict, verdicts: list, plots, ab) -> str:
  r0 = rows[0]
  fs = sorted(table)
  walls = [r["wall_s"] for r in rows]
  L = [
    "# Code-data ablation report\n",
    f"Preset `{ab.preset}`: one model ({r0['size']}, {r0['n_params']:,} parameters, "
    f"{r0['N']:,} non-embedding), {r0['tokens']:,} training tokens per run "
    f"({r0['steps']} steps x {r0['batch_size']} x {r0['seq_len']}), code fraction "
    f"{', '.join(f'{f:g}' for f in fs)}, {len(rows)} finished runs "
    f"({len(missing)} missing); every run then gets the same SFT ({ab.sft.train.steps} steps). "
    f"Wall time per run (pretraining + probes + SFT): median {np.median(walls):.0f} s, "
    f"total {sum(walls) / 60:.1f} min.\n",
    "Cells are mean ± the 95% t-interval half-width over seeds; log-probs are mean "
    "per-token log-probs of the gold continuation (nats), exact is the exact-match rate.\n",
  ]
  if missing:
    L.append("**Missing:** " + "; ".join(f"{m['name']} ({m['state']})" for m in missing) + "\n")
  L += _verdict_lines(verdicts)
  L += ["## Per arm\n", "| metric | " + " | ".join(f"code {f:g}" for f in fs) + " |"]
  L.append("|---|" + "---|" * len(fs))
  keys = [k for _, k, _, _ in CLAIMS] + [k.replace("logprob", "exact") for _, k, _, _ in CLAIMS]
  for k in dict.fromkeys(x for x in keys if any(x in table[f] for f in fs)):
    L.append(f"| {k} | " + " | ".join(_cell(table[f].get(k)) for f in fs) + " |")
  L += ["", "## Plots\n"] + [f"![{p}]({p})" for p in plots]
  L += [
    "",
    "## Runs\n",
    "| run | code fraction | seed | English loss | wall s |",
    "|---|---|---|---|---|",
  ]
  for r in sorted(rows, key=lambda r: (r["code_fraction"], r["seed"])):
    eng = r["final_eval"].get("english/loss", float("nan"))
    L.append(
      f"| {r['name']} | {r['code_fraction']:g} | {r['seed']} | {eng:.4f} | {r['wall_s']:.0f} |"
    )
  return "\n".join(L) + "\n"


def _verdict_lines(verdicts: list[dict]) -> list[str]:
  L = ["## Claims (largest code fraction vs none)\n"]
  L += ["| claim | metric | difference [95% CI] | min. detectable | verdict |"]
  L += ["|---|---|---|---|---|"]
  for v in verdicts:
    if "diff" not in v:
      L.append(f"| {v['claim']} | {v['metric']} | - | - | {v['verdict']} |")
      continue
    L.append(
      f"| {v['claim']} | {v['metric']} | {v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] | "
      f"{v['mde']:.3f} | **{v['verdict']}** |"
    )
  L.append(
    "\nMinimum detectable: the smallest true difference a two-sided t-test at 0.05 "
    "would find with probability 0.8 given these seeds' spread; effects smaller than it "
    "are invisible to this design. Caution on the long-range rows: a closer's log-prob "
    "also rises when code merely makes bracket tokens more frequent; only a gain that "
    "grows with the distance to the opener speaks for dependency modelling: the "
    "'long-range vs distance' rows compare the per-run slope of the log-prob on "
    "log2(distance) (nats per doubling; longrange_vs_distance.png shows the bins).\n"
  )
  return L


def analyze(ab, workdir: str, points, log=print) -> dict:
  """summary.json, report.md and plots from the finished points."""
  workdir = os.path.abspath(workdir)
  rows, missing = grid.load_results(points, workdir)
  if not rows:
    raise RuntimeError(f"no finished points under {workdir}/points; run the ablation first")
  table = arm_table(rows, ab.level)
  verdicts = claims(table, ab.level)
  plots = []
  if len(table) >= 1:
    plot_vs_fraction(table, os.path.join(workdir, "probes_vs_code_fraction.png"))
    plots.append("probes_vs_code_fraction.png")
  for name, probes, xlabel in GROUPED:
    if plot_grouped(table, probes, xlabel, os.path.join(workdir, name)):
      plots.append(name)
  summary = {"arms": table, "claims": verdicts, "missing": missing}
  runs.write_json(os.path.join(workdir, "summary.json"), grid.jsonable(summary, nan_to_none=True))
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(report(rows, missing, table, verdicts, plots, ab))
  log(f"[ablation] analysed {len(rows)} runs ({len(missing)} missing): {workdir}/report.md")
  return summary
