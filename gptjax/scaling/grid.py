"""A grid of pretraining runs: points, shards, done.json. Shared by every multi-run experiment.

The scaling sweep (`gptjax.scaling.sweep`: sizes x compute budgets) and the
code-data ablation (`gptjax.scaling.ablation`: code fractions x seeds) are
both a list of `Point`s, each an ordinary pretraining config, run by
`run_points` into one workdir:

  tokenizer.model          trained once, copied into every point (one
                           vocabulary, so losses compare across points)
  points.json              every point's accounting
  points/<name>/           an ordinary pretraining workdir (config.json,
                           metrics.jsonl, checkpoints/, log.txt), plus
                           done.json (final metrics and whatever the
                           experiment evaluates; written last, atomically:
                           a point with it is finished) or
                           error.txt (the traceback of a failed attempt)
  status-<i>of<n>.json     what the last invocation of shard i/n did

A point trains through `pretraining.run` (the one train loop and data
pipeline), so an interrupted point resumes from its checkpoint and a finished
one is skipped. Shard i of n runs points i, i + n, i + 2n, ...: processes
(or machines sharing the workdir) split a grid without talking to each other.
"""

from __future__ import annotations

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
from flax import linen as nn

from gptjax import metrics as metrics_lib, model as model_lib, pretraining, runs
from gptjax.data.tokenizer_corpus import load_or_train_tokenizer

DONE = "done.json"
ERROR = "error.txt"

# evaluate(point, pdir, state, tokenizer, log) -> extra done.json fields
Evaluate = Callable[..., dict]


# ----------------------------------------------------------------------------
# Points.


@dataclasses.dataclass
class Point:
  """One run of a grid: its pretraining config and its compute accounting."""

  index: int
  name: str
  size: str
  budget: float  # nominal FLOPs (the sweep's IsoFLOP profile; the ablation's actual C)
  config: object  # the resolved pretraining ConfigDict
  overrides: dict  # dotted field -> value, relative to the base preset
  N: int  # non-embedding parameters
  n_params: int  # all parameters
  n_matmul: int  # parameters in matmuls (all but the position embedding)
  flops_per_token: float
  tokens: int  # D = steps x batch x T
  flops: float  # C = D x flops_per_token
  tags: dict = dataclasses.field(default_factory=dict)  # e.g. {'code_fraction': .25, 'seed': 1}

  def summary(self) -> dict:
    keys = ("index", "name", "size", "budget", "N", "n_params", "n_matmul")
    keys += ("flops_per_token", "tokens", "flops")
    return dict({k: getattr(self, k) for k in keys}, **self.tags)


def flatten(tree, prefix: str = "") -> dict:
  """{'train': {'steps': 5}} -> {'train.steps': 5} (ConfigDicts or dicts)."""
  out = {}
  for k, v in tree.items():
    if hasattr(v, "items"):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def apply_overrides(base, overrides: dict):
  """A copy of `base` with each dotted field of `overrides` replaced."""
  config = base.copy_and_resolve_references()
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def param_counts(model_cfg) -> tuple[int, int, int]:
  """(non-embedding N, all parameters, matmul parameters) from shapes alone.

  The counting is `gptjax.model`'s (`count_params`, `matmul_params`); only the
  abstract parameter tree is built here (`jax.eval_shape`, no arrays).
  """
  return _param_counts(model_lib.TransformerConfig.from_config(model_cfg))


@functools.lru_cache(maxsize=None)
def _param_counts(cfg: model_lib.TransformerConfig) -> tuple[int, int, int]:
  model = model_lib.Transformer(cfg)
  tokens = jax.numpy.zeros((1, 8), jax.numpy.int32)
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"])
  return (
    model_lib.count_params(params, exclude_embeddings=True),
    model_lib.count_params(params),
    model_lib.matmul_params(params),
  )


def flops_per_token(config) -> float:
  """Training FLOPs per token of a pretraining config (`gptjax.model.flops_per_token`)."""
  n_matmul = param_counts(config.model)[2]
  cfg = model_lib.TransformerConfig.from_config(config.model)
  return float(model_lib.flops_per_token(cfg, n_matmul, config.model.max_len))


def schedule_overrides(base, steps: int, grid) -> dict:
  """train.steps and the fields that scale with it: warmup (grid.warmup_fraction
  of the run, at most the base preset's), evaluations (grid.evals_per_run, the
  last at the end), checkpoints (grid.checkpoints_per_run) and logging."""
  every = lambda k: max(1, -(-steps // k))
  return {
    "train.steps": steps,
    "train.warmup_steps": min(base.train.warmup_steps, max(1, int(grid.warmup_fraction * steps))),
    "train.eval_every": every(grid.evals_per_run),
    "train.ckpt_every": every(grid.checkpoints_per_run),
    "train.log_every": max(1, min(base.train.log_every, steps // 10)),
  }


def make_point(
  base, overrides: dict, *, index: int, name: str, size: str, budget: float | None = None, tags=None
) -> Point:
  """The Point of `base` with `overrides` (which include train.steps), validated.

  budget: the nominal FLOPs it belongs to; None = its own C.
  """
  config = apply_overrides(base, overrides)
  pretraining.validate(config)
  N, n_params, n_matmul = param_counts(config.model)
  fpt = flops_per_token(config)
  tokens = config.train.steps * config.train.batch_size * config.model.max_len
  return Point(
    index=index,
    name=name,
    size=size,
    budget=float(fpt * tokens if budget is None else budget),
    config=config,
    overrides=dict(overrides),
    N=N,
    n_params=n_params,
    n_matmul=n_matmul,
    flops_per_token=fpt,
    tokens=tokens,
    flops=fpt * tokens,
    tags=dict(tags or {}),
  )


# ----------------------------------------------------------------------------
# Shards and commands.


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


def point_command(point: Point, base_preset: str, workdir: str) -> str:
  """An `experiments.pretrain` command line that reproduces the point's pretraining.

  The tokenizer is deterministic given the data config, so the command
  retrains the very same one; copying <workdir>/tokenizer.model into the
  point's workdir first (as `run_points` does) only saves that time.
  """

  def fmt(v):
    return repr(v) if isinstance(v, str) else str(v)

  flags = " ".join(f"--config.{k}={fmt(v)}" for k, v in point.overrides.items())
  return (
    f"python -m experiments.pretrain --config=configs/pretrain.py:{base_preset} "
    f"--workdir={point_dir(workdir, point)} {flags}"
  )


# ----------------------------------------------------------------------------
# Running.


def jsonable(o, nan_to_none: bool = False):
  """`o` with numpy scalars/arrays as Python numbers/lists and tuples as lists;
  non-finite floats become None when `nan_to_none` (strict JSON)."""
  if isinstance(o, dict):
    return {str(k): jsonable(v, nan_to_none) for k, v in o.items()}
  if isinstance(o, (list, tuple, np.ndarray)):
    return [jsonable(v, nan_to_none) for v in (o.tolist() if isinstance(o, np.ndarray) else o)]
  if isinstance(o, (np.floating, np.integer, np.bool_)):
    o = o.item()
  if isinstance(o, float) and nan_to_none and not math.isfinite(o):
    return None
  if o is None or isinstance(o, (bool, int, float, str)):
    return o
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


def _point_logger(pdir: str, name: str, log: Callable[[str], None]):
  logfile = open(os.path.join(pdir, "log.txt"), "a")

  def plog(line):
    logfile.write(line + "\n")
    logfile.flush()
    log(f"  [{name}] {line}")

  return plog, logfile


def run_point(point: Point, workdir: str, cache_dir, evaluate: Evaluate, log=print) -> dict:
  """Trains one point (resuming if it was interrupted), evaluates it, writes done.json.

  `evaluate(point, pdir, state, tokenizer, log)` returns the experiment's own
  done.json fields (the sweep's probes; the ablation's SFT and probes).
  """
  pdir = point_dir(workdir, point)
  os.makedirs(pdir, exist_ok=True)
  if not os.path.exists(os.path.join(pdir, "tokenizer.model")):
    shutil.copyfile(os.path.join(workdir, "tokenizer.model"), os.path.join(pdir, "tokenizer.model"))
  t0 = time.perf_counter()
  plog, logfile = _point_logger(pdir, point.name, log)
  with logfile:
    state, summary, tokenizer, _ = pretraining.run(point.config, pdir, cache_dir, log=plog)
    train_s = time.perf_counter() - t0
    ev = final_metrics(pdir, point.config)
    extra = evaluate(point, pdir, state, tokenizer, plog)
  train_records = metrics_lib.read_metrics(pdir, "train")[1:]
  tok_s = [r["tokens_per_s"] for r in train_records if "tokens_per_s" in r]
  c, m = point.config, point.config.model
  done = dict(
    point.summary(),
    steps=c.train.steps,
    batch_size=c.train.batch_size,
    seq_len=m.max_len,
    n_layer=m.n_layer,
    d_model=m.d_model,
    mixture=mixture_weights(c),
    final_eval=ev,
    **extra,
    unigram_entropy=summary["unigram_entropy"],
    wall_s=time.perf_counter() - t0,
    train_wall_s=train_s,
    tokens_per_s=float(np.median(tok_s)) if tok_s else float("nan"),
    finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
  )
  runs.write_json(os.path.join(pdir, DONE), jsonable(done))
  if os.path.exists(os.path.join(pdir, ERROR)):
    os.replace(os.path.join(pdir, ERROR), os.path.join(pdir, ERROR + ".resolved"))
  return done


def _record_failure(point: Point, workdir: str, error: Exception, label: str, log) -> dict:
  path = os.path.join(point_dir(workdir, point), ERROR)
  with open(path, "w") as f:
    f.write(traceback.format_exc())
  log(f"[{label}] FAILED {point.name}: {type(error).__name__}: {error} (traceback in {path})")
  return {"name": point.name, "error": f"{type(error).__name__}: {error}", "traceback": path}


def run_points(
  points: list[Point],
  workdir: str,
  evaluate: Evaluate,
  cache_dir: str | None = None,
  shard_spec=(0, 1),
  log: Callable[[str], None] = print,
  tokenizer_config=None,
  label: str = "grid",
) -> dict:
  """Runs this shard's points that have no done.json; failures are recorded, not raised.

  tokenizer_config: the config whose data trains the shared tokenizer
  (default: the first point's); label: the log lines' prefix.
  Returns {'shard', 'ran', 'skipped', 'failed': [{'name', 'error', 'traceback'}]}.
  A KeyboardInterrupt stops the run (the point saved its checkpoint; rerun to resume).
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(os.path.join(workdir, "points"), exist_ok=True)
  mine = shard(points, *shard_spec)
  runs.write_json(os.path.join(workdir, "points.json"), jsonable([p.summary() for p in points]))
  if not os.path.exists(os.path.join(workdir, "tokenizer.model")):
    log(f"[{label}] training the shared tokenizer into {workdir}/tokenizer.model")
  load_or_train_tokenizer(tokenizer_config or points[0].config, workdir)  # once; points copy it
  status = {"shard": list(shard_spec), "ran": [], "skipped": [], "failed": []}
  status_path = os.path.join(workdir, f"status-{shard_spec[0]}of{shard_spec[1]}.json")
  log(f"[{label}] {len(mine)} of {len(points)} points in shard {shard_spec[0]}/{shard_spec[1]}")
  for p in mine:
    if os.path.exists(os.path.join(point_dir(workdir, p), DONE)):
      log(f"[{label}] skipped {p.name}: finished ({DONE} present)")
      status["skipped"].append(p.name)
      continue
    log(
      f"[{label}] point {p.index} {p.name}: N={p.N:,} non-embedding ({p.n_params:,} all), "
      f"D={p.tokens:,} tokens, C={p.flops:.2e} FLOPs, {p.config.train.steps} steps"
    )
    try:
      done = run_point(p, workdir, cache_dir, evaluate, log)
      status["ran"].append(p.name)
      log(
        f"[{label}] finished {p.name} in {done['wall_s']:.0f}s: "
        f"mixed val loss {done['final_eval']['mixed/loss']:.4f}"
      )
    except Exception as e:  # noqa: BLE001 -- recorded and reported, the grid goes on
      status["failed"].append(_record_failure(p, workdir, e, label, log))
    runs.write_json(status_path, status)
  runs.write_json(status_path, status)
  return status


# ----------------------------------------------------------------------------
# Results.


def load_results(points: list[Point], workdir: str) -> tuple[list[dict], list[dict]]:
  """(finished points' done.json records, unfinished/failed points)."""
  rows, missing = [], []
  for p in points:
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
