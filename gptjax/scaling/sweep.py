"""The scaling sweep: a grid of ordinary pretraining runs, resumable and shardable,
then results.csv, fits.json, plots and report.md from the runs' own files.

`experiments/scaling_sweep.py` is its command line; `configs/scaling_sweep.py`
describes the grid. Layout of a sweep's workdir:

  tokenizer.model          trained once, copied into every point
  points/<name>/           an ordinary pretraining workdir (config.json,
                           metrics.jsonl, checkpoints/, log.txt), plus
                           done.json (final metrics and probes; written last,
                           atomically: a point with it is finished) or
                           error.txt (the traceback of a failed attempt)
  status-<i>of<n>.json     what the last invocation of shard i/n did
  results.csv fits.json report.md *.png      (`analyze`)

Each point trains through `pretraining.run` (the one train loop and data
pipeline), so an interrupted point resumes from its checkpoint and a finished
one is skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import os
import shutil
import time
import traceback
from typing import Callable

import jax
import numpy as np

from gptjax import metrics as metrics_lib, model as model_lib, pretraining, runs
from gptjax.data.tokenizer_corpus import load_or_train_tokenizer
from gptjax.scaling import laws, probes as scaling_probes

DONE = "done.json"
ERROR = "error.txt"


# ----------------------------------------------------------------------------
# The grid.


@dataclasses.dataclass
class Point:
  """One run of the grid: its pretraining config and its compute accounting."""

  index: int
  name: str
  size: str
  budget: float  # nominal FLOPs of its IsoFLOP profile
  config: object  # the resolved pretraining ConfigDict
  overrides: dict  # dotted field -> value, relative to the base preset
  N: int  # non-embedding parameters
  n_params: int  # all parameters
  n_matmul: int  # parameters in matmuls (all but the position embedding)
  flops_per_token: float
  tokens: int  # D = steps x batch x T
  flops: float  # C = D x flops_per_token

  def summary(self) -> dict:
    return {
      k: getattr(self, k)
      for k in (
        "index",
        "name",
        "size",
        "budget",
        "N",
        "n_params",
        "n_matmul",
        "flops_per_token",
        "tokens",
        "flops",
      )
    }


def _set(config, dotted: str, value) -> None:
  node = config
  *parents, leaf = dotted.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value


def flatten(tree, prefix: str = "") -> dict:
  """{'train': {'steps': 5}} -> {'train.steps': 5} (ConfigDicts or dicts)."""
  out = {}
  for k, v in tree.items():
    if hasattr(v, "items"):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def param_counts(model_cfg) -> tuple[int, int, int]:
  """(non-embedding N, all parameters, matmul parameters) from shapes alone."""
  return _param_counts(model_lib.TransformerConfig.from_config(model_cfg))


@functools.lru_cache(maxsize=None)
def _param_counts(cfg: model_lib.TransformerConfig) -> tuple[int, int, int]:
  model = model_lib.Transformer(cfg)
  shapes = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jax.numpy.zeros((1, 8), jax.numpy.int32)
  )["params"]
  params = model_lib.nn.meta.unbox(shapes)
  total = model_lib.count_params(params)
  return (
    model_lib.count_params(params, exclude_embeddings=True),
    total,
    total - params["trunk"]["wpe"].size,
  )


def make_points(sweep) -> list[Point]:
  """Every (budget, size) pair whose step count lies in [min_steps, max_steps],
  budget by budget, smallest size first: the order shards and names refer to."""
  base = sweep.base
  points = []
  for budget in sweep.budgets:
    for size in sweep.sizes:
      config = base.copy_and_resolve_references()
      overrides = flatten(sweep.overrides)
      overrides.update(
        {
          "model.n_layer": size["n_layer"],
          "model.d_model": size["d_model"],
          "model.n_head": size["n_head"],
          "model.d_ff": 4 * size["d_model"],
          "train.lr": size["lr"],
        }
      )
      for k, v in overrides.items():
        _set(config, k, v)
      N, n_params, n_matmul = param_counts(config.model)
      T, B = config.model.max_len, config.train.batch_size
      fpt = laws.flops_per_token(n_matmul, size["n_layer"], size["d_model"], T)
      steps = int(round(budget / (fpt * B * T)))
      if not sweep.min_steps <= steps <= sweep.max_steps:
        continue
      warmup = min(base.train.warmup_steps, max(1, int(sweep.warmup_fraction * steps)))
      every = lambda k: max(1, -(-steps // k))
      overrides.update(
        {
          "train.steps": steps,
          "train.warmup_steps": warmup,
          "train.eval_every": every(sweep.evals_per_run),
          "train.ckpt_every": every(sweep.checkpoints_per_run),
          "train.log_every": max(1, min(base.train.log_every, steps // 10)),
        }
      )
      for k in (
        "train.steps",
        "train.warmup_steps",
        "train.eval_every",
        "train.ckpt_every",
        "train.log_every",
      ):
        _set(config, k, overrides[k])
      pretraining.validate(config)
      tokens = steps * B * T
      points.append(
        Point(
          index=len(points),
          name=f"C{budget:.2g}-{size['name']}".replace("+", ""),
          size=size["name"],
          budget=float(budget),
          config=config,
          overrides=overrides,
          N=N,
          n_params=n_params,
          n_matmul=n_matmul,
          flops_per_token=fpt,
          tokens=tokens,
          flops=fpt * tokens,
        )
      )
  return points


def parse_shard(text: str) -> tuple[int, int]:
  """'i/n' -> (i, n) with 0 <= i < n."""
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--shard={text!r}; expected 'i/n' with integers, e.g. 0/4") from None
  if not (n >= 1 and 0 <= i < n):
    raise ValueError(f"--shard={text!r}; need n >= 1 and 0 <= i < n")
  return i, n


def shard(points: list, i: int, n: int) -> list:
  """Points i, i + n, i + 2n, ...: the n shards partition the grid."""
  return points[i::n]


def point_dir(workdir: str, point: Point) -> str:
  return os.path.join(workdir, "points", point.name)


def point_command(point: Point, sweep, workdir: str) -> str:
  """An `experiments.pretrain` command line that reproduces the point.

  The tokenizer is deterministic given the data config, so the command
  retrains the very same one; copying <workdir>/tokenizer.model into the
  point's workdir first (as the sweep does) only saves that time.
  """

  def fmt(v):
    return repr(v) if isinstance(v, str) else str(v)

  flags = " ".join(f"--config.{k}={fmt(v)}" for k, v in point.overrides.items())
  return (
    f"python -m experiments.pretrain --config=configs/pretrain.py:{sweep.base_preset} "
    f"--workdir={point_dir(workdir, point)} {flags}"
  )


# ----------------------------------------------------------------------------
# Running.


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_json_default)
  os.replace(tmp, path)


def _json_default(o):
  if isinstance(o, (np.floating, np.integer)):
    return o.item()
  if isinstance(o, np.ndarray):
    return o.tolist()
  return str(o)


def mixture_weights(config) -> dict[str, float]:
  m = dict(config.data.mixture)
  total = sum(m.values())
  return {k: v / total for k, v in m.items()}


def final_metrics(pdir: str, config) -> dict:
  """The last evaluation of a finished run, from its metrics.jsonl, plus the
  mixed validation loss (per-source losses weighted by the mixture)."""
  evals = [r for r in metrics_lib.read_metrics(pdir, "eval") if r["step"] == config.train.steps]
  if not evals:
    raise RuntimeError(f"no evaluation at step {config.train.steps} in {pdir}/metrics.jsonl")
  ev = {k: v for k, v in evals[-1].items() if isinstance(v, (int, float))}
  w = mixture_weights(config)
  ev["mixed/loss"] = sum(w[s] * ev[f"{s}/loss"] for s in w)
  return ev


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


def run_point(
  point: Point, sweep, workdir: str, cache_dir: str | None, log: Callable[[str], None] = print
) -> dict:
  """Trains one point (resuming if it was interrupted), probes it, writes done.json."""
  pdir = point_dir(workdir, point)
  os.makedirs(pdir, exist_ok=True)
  shared = os.path.join(workdir, "tokenizer.model")
  if not os.path.exists(os.path.join(pdir, "tokenizer.model")):
    shutil.copyfile(shared, os.path.join(pdir, "tokenizer.model"))
  t0 = time.perf_counter()
  with open(os.path.join(pdir, "log.txt"), "a") as logfile:

    def plog(line):
      logfile.write(line + "\n")
      logfile.flush()
      log(f"  [{point.name}] {line}")

    state, summary, tokenizer, _ = pretraining.run(point.config, pdir, cache_dir, log=plog)
    train_s = time.perf_counter() - t0
    ev = final_metrics(pdir, point.config)
    probe_results = run_probes(
      sweep, point.config, model_lib.build(point.config), state.params, tokenizer
    )
    plog(
      "probes: "
      + "  ".join(
        f"{k} exact {v['exact']:.2f} logp {v['logprob']:.2f}" for k, v in probe_results.items()
      )
    )
  train_records = metrics_lib.read_metrics(pdir, "train")
  tok_s = [r["tokens_per_s"] for r in train_records[1:] if "tokens_per_s" in r]
  done = dict(
    point.summary(),
    steps=point.config.train.steps,
    batch_size=point.config.train.batch_size,
    seq_len=point.config.model.max_len,
    n_layer=point.config.model.n_layer,
    d_model=point.config.model.d_model,
    mixture=mixture_weights(point.config),
    final_eval=ev,
    probes=probe_results,
    unigram_entropy=summary["unigram_entropy"],
    wall_s=time.perf_counter() - t0,
    train_wall_s=train_s,
    tokens_per_s=float(np.median(tok_s)) if tok_s else float("nan"),
    finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
  )
  _write_json(os.path.join(pdir, DONE), done)
  if os.path.exists(os.path.join(pdir, ERROR)):
    os.replace(os.path.join(pdir, ERROR), os.path.join(pdir, ERROR + ".resolved"))
  return done


def run_sweep(
  sweep,
  workdir: str,
  cache_dir: str | None = None,
  shard_spec=(0, 1),
  log: Callable[[str], None] = print,
  points: list[Point] | None = None,
) -> dict:
  """Runs this shard's points that have no done.json; failures are recorded, not raised.

  Returns {'ran': [...], 'skipped': [...], 'failed': [{'name', 'error', 'traceback'}]}.
  A KeyboardInterrupt stops the sweep (the point saved its checkpoint; rerun to resume).
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(os.path.join(workdir, "points"), exist_ok=True)
  points = make_points(sweep) if points is None else points
  mine = shard(points, *shard_spec)
  _write_json(os.path.join(workdir, "points.json"), [p.summary() for p in points])
  if not os.path.exists(os.path.join(workdir, "tokenizer.model")):
    log(f"[sweep] training the shared tokenizer into {workdir}/tokenizer.model")
  load_or_train_tokenizer(points[0].config, workdir)  # once; every point copies it
  status = {"shard": list(shard_spec), "ran": [], "skipped": [], "failed": []}
  log(f"[sweep] {len(mine)} of {len(points)} points in shard {shard_spec[0]}/{shard_spec[1]}")
  for p in mine:
    if os.path.exists(os.path.join(point_dir(workdir, p), DONE)):
      log(f"[sweep] skipped {p.name}: finished ({DONE} present)")
      status["skipped"].append(p.name)
      continue
    log(
      f"[sweep] point {p.index} {p.name}: N={p.N:,} non-embedding ({p.n_params:,} all), "
      f"D={p.tokens:,} tokens, C={p.flops:.2e} FLOPs, {p.config.train.steps} steps"
    )
    try:
      done = run_point(p, sweep, workdir, cache_dir, log)
      status["ran"].append(p.name)
      log(
        f"[sweep] finished {p.name} in {done['wall_s']:.0f}s: "
        f"mixed val loss {done['final_eval']['mixed/loss']:.4f}"
      )
    except Exception as e:  # noqa: BLE001 -- recorded and reported, the sweep goes on
      tb = traceback.format_exc()
      with open(os.path.join(point_dir(workdir, p), ERROR), "w") as f:
        f.write(tb)
      status["failed"].append(
        {
          "name": p.name,
          "error": f"{type(e).__name__}: {e}",
          "traceback": os.path.join(point_dir(workdir, p), ERROR),
        }
      )
      log(
        f"[sweep] FAILED {p.name}: {type(e).__name__}: {e} (traceback in "
        f"{point_dir(workdir, p)}/{ERROR})"
      )
    _write_json(os.path.join(workdir, f"status-{shard_spec[0]}of{shard_spec[1]}.json"), status)
  _write_json(os.path.join(workdir, f"status-{shard_spec[0]}of{shard_spec[1]}.json"), status)
  return status


# ----------------------------------------------------------------------------
# Analysis.


def load_results(sweep, workdir: str) -> tuple[list[dict], list[dict]]:
  """(finished points' done.json records, unfinished/failed points)."""
  rows, missing = [], []
  for p in make_points(sweep):
    pdir = point_dir(workdir, p)
    path = os.path.join(pdir, DONE)
    if os.path.exists(path):
      with open(path) as f:
        rows.append(json.load(f))
    else:
      err = os.path.join(pdir, ERROR)
      missing.append(
        {
          "name": p.name,
          "state": "failed" if os.path.exists(err) else "not run",
          "error": _last_line(err) if os.path.exists(err) else "",
        }
      )
  return rows, missing


def _last_line(path: str) -> str:
  with open(path) as f:
    lines = [l for l in f.read().splitlines() if l.strip()]
  return lines[-1] if lines else ""


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
  with open(path, "w", newline="") as f:
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
  loss = lambda r: r["final_eval"]["mixed/loss"]
  fits: dict = {
    "loss": "mixed validation loss (nats/token, per-source losses weighted by the mixture)",
    "flops": "C = D x (6 N_matmul + 12 n_layer d_model T); N_matmul = non-embedding "
    "N + token embedding (tied LM head)",
    "n_runs": len(rows),
  }
  by_size: dict[str, list[dict]] = {}
  for r in rows:
    by_size.setdefault(r["size"], []).append(r)

  # L(N): each size at its largest token budget (the least data-limited run).
  largest = sorted(
    (max(rs, key=lambda r: r["tokens"]) for rs in by_size.values()), key=lambda r: r["N"]
  )
  per_param = lambda r: r["tokens"] / r["N"]
  ln = [r for r in largest if per_param(r) >= min_tokens_per_param]
  fits["L_N"] = {
    "runs": [r["name"] for r in ln],
    "tokens_per_param": [per_param(r) for r in ln],
    "min_tokens_per_param": min_tokens_per_param,
    "data_limited": {r["size"]: per_param(r) for r in largest if r not in ln},
  }
  x, y = [r["N"] for r in ln], [loss(r) for r in ln]
  for key, pure, need in (("offset", False, 3), ("pure", True, 2)):
    if len(ln) >= need:
      try:
        fits["L_N"][key] = laws.fit_with_ci(x, y, n_boot, seed, pure=pure)
      except (ValueError, RuntimeError) as e:
        fits["L_N"][key] = {"error": str(e)}

  # L(D): the largest size with runs at >= 3 token budgets.
  candidates = [rs for rs in by_size.values() if len({r["tokens"] for r in rs}) >= 3]
  if candidates:
    rs = sorted(max(candidates, key=lambda rs: rs[0]["N"]), key=lambda r: r["tokens"])
    fits["L_D"] = {"size": rs[0]["size"], "N": rs[0]["N"], "runs": [r["name"] for r in rs]}
    x, y = [r["tokens"] for r in rs], [loss(r) for r in rs]
    for key, pure in (("offset", False), ("pure", True)):
      try:
        fits["L_D"][key] = laws.fit_with_ci(x, y, n_boot, seed + 1, pure=pure)
      except (ValueError, RuntimeError) as e:
        fits["L_D"][key] = {"error": str(e)}
  else:
    fits["L_D"] = {"error": "no size has runs at >= 3 token budgets"}

  # IsoFLOP profiles, with N counted both ways.
  budgets = sorted({r["budget"] for r in rows})
  for key, n_key in (("isoflop", "N"), ("isoflop_all_params", "n_params")):
    groups = []
    for b in budgets:
      rs = [r for r in rows if r["budget"] == b]
      groups.append(
        {
          "C": float(np.mean([r["flops"] for r in rs])),
          "N": [r[n_key] for r in rs],
          "D": [r["tokens"] for r in rs],
          "loss": [loss(r) for r in rs],
        }
      )
    res = laws.isoflop_analysis(groups, n_boot, seed + 2)
    res["n_counted_as"] = n_key
    fits[key] = res
  tpp = [t for t in fits["isoflop"]["tokens_per_param"] if np.isfinite(t)]
  fits["compute_optimal_tokens_per_param"] = {
    "per_budget_non_embedding": fits["isoflop"]["tokens_per_param"],
    "per_budget_all_params": fits["isoflop_all_params"]["tokens_per_param"],
    "median_non_embedding": float(np.median(tpp)) if tpp else float("nan"),
  }
  tpp_all = [t for t in fits["isoflop_all_params"]["tokens_per_param"] if np.isfinite(t)]
  fits["compute_optimal_tokens_per_param"]["median_all_params"] = (
    float(np.median(tpp_all)) if tpp_all else float("nan")
  )
  return fits


def _nan_to_none(o):
  if isinstance(o, float) and not math.isfinite(o):
    return None
  if isinstance(o, dict):
    return {k: _nan_to_none(v) for k, v in o.items()}
  if isinstance(o, (list, tuple)):
    return [_nan_to_none(v) for v in o]
  return o


def analyze(sweep, workdir: str, log: Callable[[str], None] = print) -> dict:
  """results.csv, fits.json, PNG plots and report.md from the finished points."""
  from gptjax.scaling import report as sweep_report

  workdir = os.path.abspath(workdir)
  rows, missing = load_results(sweep, workdir)
  if not rows:
    raise RuntimeError(f"no finished points under {workdir}/points; run the sweep first")
  write_csv(rows, os.path.join(workdir, "results.csv"))
  fits = compute_fits(rows, sweep.bootstrap, min_tokens_per_param=sweep.fit_min_tokens_per_param)
  fits["missing"] = missing
  _write_json(os.path.join(workdir, "fits.json"), _nan_to_none(fits))
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
