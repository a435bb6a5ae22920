"""The code-data ablation: does pretraining on code buy reasoning and long-range dependencies?

One model size and one token budget; arms differ only in the fraction of
training tokens drawn from code (`code_fractions`), the rest keeping the base
mixture's own proportions; each arm is pretrained with several seeds (model
init and data order), then every run gets the same SFT. Probes
(`gptjax.scaling.code_probes` and the sweep's few-shot probes) score each run
under exact match and the gold continuation's per-token log-prob.

The runs are points of `gptjax.scaling.grid` (resumable, shardable, one
done.json each); `experiments/code_ablation.py` is the command line and
`configs/code_ablation.py` the presets. `analyze` writes summary.json,
report.md and plots from the points' done.json files.

Mixture sampling is 'stratified' (`gptjax.data.packing.stratified_counts`):
every prefix of a run holds the configured code fraction to within one row,
so arms differ by exactly the fraction they claim and all see the same
number of tokens. One tokenizer, trained on the base mixture (with code),
serves every arm, so losses are per token of one vocabulary.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from gptjax import model as model_lib, runs, sft
from gptjax.data import packing, sources
from gptjax.scaling import code_probes, grid, probes as scaling_probes

CODE = "code"


# ----------------------------------------------------------------------------
# The grid.


def arm_mixture(base_mixture, code_fraction: float) -> dict[str, float]:
  """Code at `code_fraction`; every other source keeps its share of the rest.

  {'english': .45, 'code': .25, 'world': .3}, 0.5 -> {'english': .28125,
  'world': .1875, 'code': .5}. A fraction of 0 leaves code out altogether.
  """
  if not 0.0 <= code_fraction < 1.0:
    raise ValueError(f"code_fractions: {code_fraction} is not in [0, 1)")
  rest = {k: float(v) for k, v in dict(base_mixture).items() if k != CODE}
  if not rest:
    raise ValueError("base data.mixture has no source besides code")
  total = sum(rest.values())
  out = {k: (1.0 - code_fraction) * v / total for k, v in rest.items()}
  if code_fraction > 0:
    out[CODE] = code_fraction
  return out


def point_overrides(ablation) -> dict:
  """The fields every point shares: the preset overrides and the schedule."""
  common = grid.flatten(ablation.overrides)
  base = grid.apply_overrides(ablation.base, common)
  per_step = base.train.batch_size * base.model.max_len
  if ablation.tokens <= 0 or ablation.tokens % per_step:
    raise ValueError(
      f"tokens={ablation.tokens} must be a positive multiple of batch_size x max_len = {per_step}"
    )
  common.update(grid.schedule_overrides(base, ablation.tokens // per_step, ablation))
  common["data.mixture_sampling"] = "stratified"
  return common


def make_points(ablation) -> list[grid.Point]:
  """Every (code fraction, seed), fraction by fraction: the order shards refer to."""
  if len(ablation.seeds) < 2:
    raise ValueError(f"seeds={tuple(ablation.seeds)}: need >= 2 per arm for an interval")
  common = point_overrides(ablation)
  points = []
  for f in ablation.code_fractions:
    mixture = arm_mixture(ablation.base.data.mixture, f)
    for seed in ablation.seeds:
      overrides = dict(common, **{"data.mixture": mixture, "seed": int(seed)})
      points.append(
        grid.make_point(
          ablation.base,
          overrides,
          index=len(points),
          name=f"code{f:g}-s{seed}",
          size=ablation.size_name,
          tags={"code_fraction": float(f), "seed": int(seed)},
        )
      )
  return points


def tokenizer_config(ablation):
  """The config whose mixture (the base one, with code) trains the shared tokenizer."""
  return grid.apply_overrides(ablation.base, grid.flatten(ablation.overrides))


def realised_fractions(config, steps: int | None = None) -> dict[str, float]:
  """Fraction of training rows (= tokens: every row is T tokens) per source over
  the first `steps` batches (default all), as `Pipeline.train_batch` draws them."""
  mixture = packing.validate_mixture(config.data.mixture)
  weights = np.array(list(mixture.values())) / sum(mixture.values())
  B, steps = config.train.batch_size, config.train.steps if steps is None else steps
  rows = sum(packing.stratified_counts(weights, s, B) for s in range(steps))
  return {k: float(n) / (B * steps) for k, n in zip(mixture, rows)}


# ----------------------------------------------------------------------------
# Probes of one run.


def _group_key(item, bins: tuple) -> str:
  m = item.meta
  if "tokens" in m:  # real text: the opener-to-closer distance in tokens, binned
    return f"<={next((b for b in bins if m['tokens'] <= b), bins[-1])}"
  for k in ("distance", "steps", "digits"):
    if k in m:
      return str(m[k])
  return "all"


def summarize(items, scores, bins: tuple) -> dict:
  """Mean exact match and gold log-prob of a probe, overall and by group."""
  out = {
    "exact": float(np.mean(scores["exact"])),
    "logprob": float(np.mean(scores["logprob"])),
    "n": len(items),
  }
  groups: dict[str, list[int]] = {}
  for i, it in enumerate(items):
    groups.setdefault(_group_key(it, bins), []).append(i)
  out["by"] = {
    g: {
      "exact": float(np.mean([scores["exact"][i] for i in idx])),
      "logprob": float(np.mean([scores["logprob"][i] for i in idx])),
      "n": len(idx),
    }
    for g, idx in groups.items()
  }
  return out


def _fits(tokenizer, max_len: int):
  """Keeps items whose context and target fit the context window whole (a cut
  context could lose the opener), recording real text's distance in tokens."""

  def keep(item) -> bool:
    n = 1 + len(tokenizer.encode(item.context)) + len(tokenizer.encode(item.target))
    if "between" in item.meta:
      item.meta["tokens"] = len(tokenizer.encode(item.meta["between"])) + 1
    return n <= max_len

  return keep


def probe_sets(p, config, tokenizer) -> dict[str, list]:
  """The pretrained model's probe items, by probe name (see configs/code_ablation.py)."""
  held_code = sources.iter_split(CODE, config, "test")  # stdlib test suites: never trained on
  prose = sources.iter_split("english", config, "validation")
  sets = {
    "nested": code_probes.nested_items(p.nested_distances, p.n, p.seed),
    "code_closers": code_probes.closer_items(held_code, "code", p.char_spans, p.n, p.seed),
    "prose_closers": code_probes.closer_items(prose, "prose", p.char_spans, p.n, p.seed),
    "state_code": code_probes.state_items("code", p.state_steps, p.n, p.seed),
    "state_english": code_probes.state_items("english", p.state_steps, p.n, p.seed),
  }
  world = runs.world_of(config)
  for family in p.few_shot_families:
    sets[f"fewshot_{family}"] = scaling_probes.probe_items(world, family, p.n, p.few_shot_k, p.seed)
  keep = _fits(tokenizer, config.model.max_len)  # few-shot prompts may lose early demonstrations
  return {
    k: v if k.startswith("fewshot_") else [it for it in v if keep(it)] for k, v in sets.items()
  }


def _score_all(sets, model, params, tokenizer, p, chat: bool = False) -> dict:
  out = {}
  for name, items in sets.items():
    if not items:
      continue
    scores = scaling_probes.score_probes(
      model,
      params,
      tokenizer,
      items,
      max_new_tokens=p.cot_tokens if chat else p.max_new_tokens,
      batch_size=p.batch_size,
      chat=chat,
    )
    out[name] = summarize(items, scores, tuple(p.token_bins))
  return out


def evaluate_fn(ablation) -> Callable[..., dict]:
  """The ablation's done.json fields of a point: probes of the pretrained model,
  then the same SFT for every run and the reasoning probes of the SFT model."""

  def evaluate(point, pdir, state, tokenizer, log) -> dict:
    p, config = ablation.probes, point.config
    model = model_lib.build(config)
    probes = _score_all(probe_sets(p, config, tokenizer), model, state.params, tokenizer, p)
    sft_state, _, sft_report = sft.run(ablation.sft, os.path.join(pdir, "sft"), pdir, log=log)
    world = runs.world_of(config)
    arith = {
      f"arith_{'cot' if cot else 'direct'}": code_probes.arithmetic_items(
        world, p.arith_digits, p.n, cot, p.seed
      )
      for cot in (False, True)
    }
    keep = _fits(tokenizer, config.model.max_len)
    arith = {k: [it for it in v if keep(it)] for k, v in arith.items()}
    probes.update(_score_all(arith, model, sft_state.params, tokenizer, p, chat=True))
    log(
      "probes: " + "  ".join(f"{k} {v['exact']:.2f}/{v['logprob']:.2f}" for k, v in probes.items())
    )
    return {"probes": probes, "sft_gold": sft_report["table"], "sft_eval": sft_report["last_eval"]}

  return evaluate


def run_ablation(ablation, workdir, cache_dir=None, shard_spec=(0, 1), log=print, points=None):
  """Runs this shard's points that have no done.json (`grid.run_points`)."""
  points = make_points(ablation) if points is None else points
  return grid.run_points(
    points,
    workdir,
    evaluate_fn(ablation),
    cache_dir,
    shard_spec,
    log,
    tokenizer_config=tokenizer_config(ablation),
    label="ablation",
  )
