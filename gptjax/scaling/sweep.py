"""The scaling sweep: a grid of (model size, compute budget) pretraining runs, then
results.csv, fits.json, plots and report.md from the runs' own files.

`experiments/scaling_sweep.py` is its command line; `configs/scaling_sweep.py`
describes the grid. The points run through `gptjax.scaling.grid` (resumable,
shardable, done.json per point; the workdir layout is described there), and
`analyze` adds results.csv fits.json report.md *.png to the workdir.
"""

from __future__ import annotations

import csv
import os
from typing import Callable

import numpy as np

from gptjax import files, metrics as metrics_lib, model as model_lib, runs
from gptjax.scaling import grid, laws, probes as scaling_probes, report as sweep_report

# ----------------------------------------------------------------------------
# The grid.


def make_points(sweep) -> list[grid.Point]:
  """Every (budget, size) pair whose step count lies in [min_steps, max_steps],
  budget by budget, smallest size first: the order shards and names refer to."""
  base = sweep.base
  points = []
  for budget in sweep.budgets:
    for size in sweep.sizes:
      overrides = grid.flatten(sweep.overrides)
      overrides.update(
        {
          "model.n_layer": size["n_layer"],
          "model.d_model": size["d_model"],
          "model.n_head": size["n_head"],
          "model.d_ff": 4 * size["d_model"],
          "train.lr": size["lr"],
        }
      )
      config = grid.apply_overrides(base, overrides)
      T, B = config.model.max_len, config.train.batch_size
      steps = int(round(budget / (grid.flops_per_token(config) * B * T)))
      if not sweep.min_steps <= steps <= sweep.max_steps:
        continue
      overrides.update(grid.schedule_overrides(base, steps, sweep))
      name = f"C{budget:.2g}-{size['name']}".replace("+", "")
      points.append(
        grid.make_point(
          base, overrides, index=len(points), name=name, size=size["name"], budget=budget
        )
      )
  return points


# ----------------------------------------------------------------------------
# Running.


def run_probes(sweep, config, model, params, tokenizer) -> dict:
  """Exact match and mean gold log-prob per probe (see gptjax.scaling.probes.score_probes)."""
  world = runs.world_of(config)
  p = sweep.probes
  out = {}
  names = list(p.families) + (["facts"] if p.n_facts else [])
  for name in names:
    items = scaling_probes.probe_items(
      world, name, p.n_facts if name == "facts" else p.n, p.few_shot_k, p.seed
    )
    s = scaling_probes.score_probes(
      model, params, tokenizer, items, max_new_tokens=p.max_new_tokens, batch_size=p.batch_size
    )
    out[name] = {
      "exact": float(np.mean(s["exact"])),
      "logprob": float(np.mean(s["logprob"])),
      "n": len(items),
      "example": {
        "prompt_tail": items[0].prompt[-80:],
        "gold": items[0].gold,
        "answer": s["answers"][0],
      },
    }
  return out


def _evaluate(sweep):
  """The sweep's done.json fields of a point: its emergence probes."""

  def evaluate(point, pdir, state, tokenizer, log) -> dict:
    del pdir
    model = model_lib.build(point.config)
    probes = run_probes(sweep, point.config, model, state.params, tokenizer)
    log(
      "probes: "
      + "  ".join(f"{k} exact {v['exact']:.2f} logp {v['logprob']:.2f}" for k, v in probes.items())
    )
    return {"probes": probes}

  return evaluate


def run_sweep(
  sweep,
  workdir: str,
  cache_dir: str | None = None,
  shard_spec=(0, 1),
  log: Callable[[str], None] = print,
  points: list[grid.Point] | None = None,
) -> dict:
  """Runs this shard's points that have no done.json (`grid.run_points`).

  Returns {'ran': [...], 'skipped': [...], 'failed': [{'name', 'error', 'traceback'}]}.
  """
  points = make_points(sweep) if points is None else points
  return grid.run_points(
    points, workdir, _evaluate(sweep), cache_dir, shard_spec, log, label="sweep"
  )


# ----------------------------------------------------------------------------
# Analysis.


def load_results(sweep, workdir: str) -> tuple[list[dict], list[dict]]:
  """(finished points' done.json records, unfinished/failed points)."""
  return grid.load_results(make_points(sweep), workdir)


def write_csv(rows: list[dict], path: str) -> list[str]:
  """One row per run: sizes, D, C, final validation losses, probe metrics."""
  sources = sorted({k[:-5] for r in rows for k in r["final_eval"] if k.endswith("/loss")})
  probes = sorted({k for r in rows for k in r["probes"]})
  header = (
    [
      "name",
      "size",
      "n_layer",
      "d_model",
      "n_params",
      "N_non_embedding",
      "n_matmul",
      "tokens_D",
      "flops_C",
      "budget",
      "steps",
      "flops_per_token",
    ]
    + [f"val_loss_{s.replace('/loss', '')}" for s in sources]
    + [f"{p}_{m}" for p in probes for m in ("exact", "logprob")]
    + ["tokens_per_s", "wall_s"]
  )
  with files.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for r in rows:
      w.writerow(
        [
          r["name"],
          r["size"],
          r["n_layer"],
          r["d_model"],
          r["n_params"],
          r["N"],
          r["n_matmul"],
          r["tokens"],
          f"{r['flops']:.6g}",
          f"{r['budget']:.3g}",
          r["steps"],
          f"{r['flops_per_token']:.6g}",
        ]
        + [f"{r['final_eval'].get(s + '/loss', float('nan')):.5f}" for s in sources]
        + [
          f"{r['probes'].get(p, {}).get(m, float('nan')):.4f}"
          for p in probes
          for m in ("exact", "logprob")
        ]
        + [f"{r.get('tokens_per_s', float('nan')):.1f}", f"{r['wall_s']:.1f}"]
      )
  return header


def compute_fits(
  rows: list[dict], n_boot: int, seed: int = 0, min_tokens_per_param: float = 0.0
) -> dict:
  """L(N), L(D), IsoFLOP (approach 2) and compute-optimal ratios from finished runs.

  L(N) is Kaplan's loss at convergence: each size at its largest token budget,
  and only sizes whose run there saw >= min_tokens_per_param tokens per
  non-embedding parameter. A grid of compute budgets gives its largest models
  few tokens each; their loss measures the data, not the size, and the fit
  would bend the wrong way (the loss rising with N).
  """
  fits: dict = {
    "loss": "mixed validation loss (nats/token, per-source losses weighted by the mixture)",
    "flops": "C = D x (6 N_matmul + 12 n_layer d_model T); N_matmul = non-embedding "
    "N + token embedding (tied LM head)",
    "n_runs": len(rows),
  }
  by_size: dict[str, list[dict]] = {}
  for r in rows:
    by_size.setdefault(r["size"], []).append(r)
  fits["L_N"] = _fit_l_n(by_size, n_boot, seed, min_tokens_per_param)
  fits["L_D"] = _fit_l_d(by_size, n_boot, seed + 1)
  for key, n_key in (("isoflop", "N"), ("isoflop_all_params", "n_params")):
    fits[key] = _fit_isoflop(rows, n_key, n_boot, seed + 2)
  median = lambda ts: float(np.median(ts)) if ts else float("nan")
  per_budget = fits["isoflop"]["tokens_per_param"]
  per_budget_all = fits["isoflop_all_params"]["tokens_per_param"]
  fits["compute_optimal_tokens_per_param"] = {
    "per_budget_non_embedding": per_budget,
    "per_budget_all_params": per_budget_all,
    "median_non_embedding": median([t for t in per_budget if np.isfinite(t)]),
    "median_all_params": median([t for t in per_budget_all if np.isfinite(t)]),
  }
  return fits


def _loss(r: dict) -> float:
  return r["final_eval"]["mixed/loss"]


def _fits_with_ci(x, y, n_boot: int, seed: int, forms) -> dict:
  """{key: fit_with_ci or {'error'}} for each (key, pure) form."""
  out = {}
  for key, pure in forms:
    try:
      out[key] = laws.fit_with_ci(x, y, n_boot, seed, pure=pure)
    except (ValueError, RuntimeError) as e:
      out[key] = {"error": str(e)}
  return out


def _fit_l_n(by_size: dict, n_boot: int, seed: int, min_tokens_per_param: float) -> dict:
  """L(N): each size at its largest token budget (the least data-limited run)."""
  largest = sorted(
    (max(rs, key=lambda r: r["tokens"]) for rs in by_size.values()), key=lambda r: r["N"]
  )
  per_param = lambda r: r["tokens"] / r["N"]
  ln = [r for r in largest if per_param(r) >= min_tokens_per_param]
  out = {
    "runs": [r["name"] for r in ln],
    "tokens_per_param": [per_param(r) for r in ln],
    "min_tokens_per_param": min_tokens_per_param,
    "data_limited": {r["size"]: per_param(r) for r in largest if r not in ln},
  }
  forms = [
    (k, pure) for k, pure, need in (("offset", False, 3), ("pure", True, 2)) if len(ln) >= need
  ]
  out.update(_fits_with_ci([r["N"] for r in ln], [_loss(r) for r in ln], n_boot, seed, forms))
  return out


def _fit_l_d(by_size: dict, n_boot: int, seed: int) -> dict:
  """L(D): the largest size with runs at >= 3 token budgets."""
  candidates = [rs for rs in by_size.values() if len({r["tokens"] for r in rs}) >= 3]
  if not candidates:
    return {"error": "no size has runs at >= 3 token budgets"}
  rs = sorted(max(candidates, key=lambda rs: rs[0]["N"]), key=lambda r: r["tokens"])
  out = {"size": rs[0]["size"], "N": rs[0]["N"], "runs": [r["name"] for r in rs]}
  x, y = [r["tokens"] for r in rs], [_loss(r) for r in rs]
  out.update(_fits_with_ci(x, y, n_boot, seed, (("offset", False), ("pure", True))))
  return out


def _fit_isoflop(rows: list[dict], n_key: str, n_boot: int, seed: int) -> dict:
  """IsoFLOP profiles (approach 2) with N counted as `n_key` ('N' or 'n_params')."""
  groups = []
  for b in sorted({r["budget"] for r in rows}):
    rs = [r for r in rows if r["budget"] == b]
    groups.append(
      {
        "C": float(np.mean([r["flops"] for r in rs])),
        "N": [r[n_key] for r in rs],
        "D": [r["tokens"] for r in rs],
        "loss": [_loss(r) for r in rs],
      }
    )
  res = laws.isoflop_analysis(groups, n_boot, seed)
  res["n_counted_as"] = n_key
  return res


def analyze(sweep, workdir: str, log: Callable[[str], None] = print) -> dict:
  """results.csv, fits.json, PNG plots and report.md from the finished points."""
  workdir = os.path.abspath(workdir)
  rows, missing = load_results(sweep, workdir)
  if not rows:
    raise RuntimeError(f"no finished points under {workdir}/points; run the sweep first")
  write_csv(rows, os.path.join(workdir, "results.csv"))
  fits = compute_fits(rows, sweep.bootstrap, min_tokens_per_param=sweep.fit_min_tokens_per_param)
  fits["missing"] = missing
  runs.write_json(os.path.join(workdir, "fits.json"), grid.jsonable(fits, nan_to_none=True))
  curves = {r["name"]: eval_curve(os.path.join(workdir, "points", r["name"]), r) for r in rows}
  plots = sweep_report.plots(rows, fits, curves, workdir)
  report = sweep_report.report(rows, fits, missing, plots, sweep)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(report)
  log(
    f"[sweep] analysed {len(rows)} runs ({len(missing)} missing): {workdir}/results.csv, "
    f"fits.json, report.md, {len(plots)} plots"
  )
  return fits


def eval_curve(pdir: str, row: dict) -> tuple[np.ndarray, np.ndarray]:
  """(compute, mixed validation loss) at each evaluation of a run."""
  w = row["mixture"]
  cs, ls = [], []
  for r in metrics_lib.read_metrics(pdir, "eval"):
    if all(f"{s}/loss" in r for s in w):
      cs.append(r["step"] * row["batch_size"] * row["seq_len"] * row["flops_per_token"])
      ls.append(sum(v * r[f"{s}/loss"] for s, v in w.items()))
  return np.asarray(cs), np.asarray(ls)
