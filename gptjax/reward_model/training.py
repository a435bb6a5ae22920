"""Reward modelling as a composition: SFT policy -> comparisons -> ranking loss -> eval.

`experiments/reward_model.py` is its command line; the RLHF stage loads the
result with `load_reward_model`.

Workdir layout:
  config.json, tokenizer.model      the resolved config and the policy's tokenizer
  comparisons/{train,heldout}/      sampled, labelled comparisons (reused if present)
  checkpoints/, metrics.jsonl       the main reward model (all training comparisons)
  reward_model.json                 bias shift (SFT samples -> mean 0) and their std
  eval.json, calibration.png, data_scaling.png
  scaling/frac_<f>/                 extra reward models for the data-scaling curve
"""

import json
import math
import os

import jax
import numpy as np

from gptjax import (
  config as config_lib,
  heads,
  losses,
  model as model_lib,
  runs,
  sft as sft_lib,
  train,
)
from gptjax.reward_model import comparisons as comp_lib
from gptjax.tasks import instructions
from gptjax.tokenizer import Tokenizer

NORMALIZATION_FILE = "reward_model.json"


def validate(config) -> None:
  config_lib.validate_train(config.train)
  c = config.comparisons
  config_lib.require(2 <= c.k <= 16, "comparisons.k", c.k, "2..16 (InstructGPT: 4 to 9)")
  config_lib.require(
    c.n_prompts >= config.train.batch_size,
    "comparisons.n_prompts",
    c.n_prompts,
    f">= train.batch_size={config.train.batch_size}",
  )
  config_lib.require(
    0.5 < c.labeler_agreement < 1.0,
    "comparisons.labeler_agreement",
    c.labeler_agreement,
    "(0.5, 1)",
  )
  config_lib.require(config.rm.epochs > 0, "rm.epochs", config.rm.epochs, "> 0")
  for f in config.eval.data_fractions:
    config_lib.require(
      0 < f < 1, "eval.data_fractions", list(config.eval.data_fractions), "fractions in (0, 1)"
    )


def steps_for(n_prompts: int, batch_size: int, epochs: float) -> int:
  return max(1, math.ceil(epochs * n_prompts / batch_size))


def build_task(
  config,
  model,
  train_comps: comp_lib.Comparisons,
  heldout: comp_lib.Comparisons,
  init_params,
  name: str = "reward_model",
):
  """Ranking loss over the K responses of each prompt, warm-started from the trunk."""
  t = config.train
  B, (P, K, T) = t.batch_size, train_comps.tokens.shape

  def as_batch(c: comp_lib.Comparisons, index) -> dict:
    return {
      "tokens": c.tokens[index],
      "token_mask": c.token_mask[index],
      "ranking": c.ranking[index],
    }

  def heldout_batches():
    n = (len(heldout) // B) * B  # whole batches only (sharding needs equal splits)
    for start in range(0, n, B):
      yield as_batch(heldout, np.arange(start, start + B))

  return train.Task(
    name=name,
    model=model,
    loss_fn=losses.reward_loss_fn(model),
    train_batch=lambda step: as_batch(train_comps, sft_lib.batch_rows(step, B, P, config.seed)),
    example_batch={"tokens": train_comps.tokens[:1, 0]},
    tokens_per_step=B * K * T,
    eval_sets={"heldout": heldout_batches},
    init_params=lambda rng: init_params,
  )


def informative_prompts(comps: comp_lib.Comparisons) -> comp_lib.Comparisons:
  """The prompts whose K responses are not all of equal gold quality.

  The labeler orders equally good responses at random, so a prompt whose
  responses all tie carries no preference: its C(K,2) pairs are coin flips
  whose only effect is to pull the scores together. With a weak policy most
  prompts are like that (small preset: 84% of prompts, every sample wrong),
  and they drown the informative pairs.
  """
  return comps.subset(np.flatnonzero(np.ptp(comps.gold, axis=1) > 1e-9))


def score_all(model, params, comps: comp_lib.Comparisons, batch: int = 64) -> np.ndarray:
  """Reward-model score of every stored response -> [P, K]."""
  P, K, T = comps.tokens.shape
  tokens, mask = comps.tokens.reshape(P * K, T), comps.token_mask.reshape(P * K, T)
  return heads.score_batched(model, params, tokens, mask, batch).reshape(P, K)


def calibration(scores: np.ndarray, gold: np.ndarray, bins: int) -> list[dict]:
  """Mean gold score per RM-score quantile bin: is a higher reward really better?"""
  s, g = scores.ravel(), gold.ravel()
  edges = np.quantile(s, np.linspace(0, 1, bins + 1))
  which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
  return [
    {
      "rm_score": float(s[which == b].mean()),
      "gold": float(g[which == b].mean()),
      "n": int((which == b).sum()),
    }
    for b in range(bins)
    if (which == b).any()
  ]


def evaluate_rm(model, params, heldout: comp_lib.Comparisons) -> dict:
  scores = score_all(model, params, heldout)
  return {
    "accuracy_vs_labeler": comp_lib.pairwise_accuracy(scores, heldout.ranking, heldout.gold),
    "accuracy_vs_labeler_all_pairs": comp_lib.pairwise_accuracy(scores, heldout.ranking),
    "accuracy_vs_gold": comp_lib.gold_accuracy(scores, heldout.gold),
    "scores": scores,
  }


def _comparisons(
  config, policy, world, split: str, n: int, seed: int, directory: str, noise: float | None, log
) -> tuple[comp_lib.Comparisons, dict]:
  """The split's comparisons (reused when stored with the same recipe, else
  sampled and stored), cut to the samples' own length for training and scoring."""
  report_path = os.path.join(directory, "report.json")
  c = config.comparisons
  recipe = {
    "policy": policy.workdir,
    "policy_step": policy.step,
    "split": split,
    "n": n,
    "seed": seed,
    "k": c.k,
    "max_new_tokens": c.max_new_tokens,
    "noise": noise,
    "target_agreement": c.labeler_agreement,
  }
  if comp_lib.Comparisons.exists(directory):
    with open(report_path) as f:
      report = json.load(f)
    if report.get("recipe") == recipe:
      log(f"[reward_model] reusing comparisons in {directory}")
      return comp_lib.Comparisons.load(directory).trimmed(), report
    log(f"[reward_model] settings changed since {directory} was written: sampling anew")
  examples = instructions.make_mixture(world, n, seed, split)
  comps, report = comp_lib.make_comparisons(
    policy, world, examples, comp_lib.ComparisonSettings.from_config(c, noise), seed=seed, log=log
  )
  report["recipe"] = recipe
  comps.save(directory)
  runs.write_json(report_path, report)
  return comps.trimmed(), report


def load_init(config, sft_dir: str):
  """(model, params) of the reward model before training: a trunk + a fresh head."""
  init_dir = config.rm.init_from or sft_dir
  init_run = runs.load_run(init_dir)
  policy_tokenizer = Tokenizer.load(os.path.join(sft_dir, "tokenizer.model"))
  if init_run.tokenizer.fingerprint != policy_tokenizer.fingerprint:
    raise ValueError(
      f"rm.init_from={init_dir} uses a different tokenizer from the SFT "
      f"policy {sft_dir}; a reward model must read the policy's tokens"
    )
  model = heads.ScalarHeadModel(init_run.model.cfg)
  head = heads.init_head(model, jax.random.PRNGKey(config.seed))
  return model, heads.from_lm_params(init_run.params, head), init_run.config


def train_rm(config, workdir: str, model, init_params, train_comps, heldout, log):
  """Trains one reward model with the shared loop; returns its params."""
  cfg = config_lib.copy(config)
  cfg.train.steps = steps_for(len(train_comps), cfg.train.batch_size, cfg.rm.epochs)
  cfg.train.ckpt_every = min(cfg.train.ckpt_every, cfg.train.steps)
  task = build_task(cfg, model, train_comps, heldout, init_params)
  state, summary = train.run(cfg, workdir, task, log=log)
  return state.params, summary


def run(config, workdir: str, sft_dir: str | None = None, log=print) -> dict:
  """SFT policy -> comparisons -> reward model(s) -> evaluation. Returns eval.json's dict."""
  if not (sft_dir or config.sft):
    raise ValueError("The reward model needs an SFT run: pass --sft=<sft workdir>.")
  sft_dir = os.path.abspath(sft_dir or config.sft)
  with runs.prepare_stage(
    config,
    workdir,
    validate=validate,
    resolve=lambda c: resolve(c, sft_dir, log),
    tokenizer_from=sft_dir,
    log=log,
  ) as stage:
    config, workdir, (policy, model, init_params) = stage.config, stage.workdir, stage.upstream
    train_comps, heldout, reports = sample_comparisons(config, policy, workdir, log)
    train.check_stop("reward_model", "after sampling comparisons", workdir)
    all_train, train_comps = train_comps, training_prompts(config, train_comps, log)
    params, summary = train_rm(config, workdir, model, init_params, train_comps, heldout, log)
    # Centre: the SFT policy's own samples (the training responses) score mean 0.
    sft_scores = score_all(model, params, all_train)
    shift, std = -float(sft_scores.mean()), float(sft_scores.std())
    runs.write_json(
      os.path.join(workdir, NORMALIZATION_FILE), {"bias_shift": shift, "sft_score_std": std}
    )
    params = heads.shift_bias(params, shift)
    main = evaluate_rm(model, params, heldout)
    curve = data_scaling(config, workdir, model, init_params, train_comps, heldout, main, log)
    result = {
      "k": config.comparisons.k,
      "n_train_prompts": len(train_comps),
      "n_sampled_prompts": len(all_train),
      "n_heldout_prompts": len(heldout),
      "pairs_per_prompt": config.comparisons.k * (config.comparisons.k - 1) // 2,
      "labeler": labeler_summary(config, *reports),
      "accuracy_vs_labeler": main["accuracy_vs_labeler"],
      "accuracy_vs_gold": main["accuracy_vs_gold"],
      "sft_score_std": std,
      "bias_shift": shift,
      "calibration": calibration(main["scores"], heldout.gold, config.eval.calibration_bins),
      "data_scaling": curve,
      "steps": summary["steps"],
      "heldout_loss": summary.get("last_eval", {}).get("heldout/loss"),
    }
    runs.write_json(os.path.join(workdir, "eval.json"), result)
    plot(result, workdir)
  log(
    f"[reward_model] held-out accuracy: {result['accuracy_vs_labeler']:.3f} vs labeler, "
    f"{result['accuracy_vs_gold']:.3f} vs gold (labeler's own agreement "
    f"{result['labeler']['agreement_heldout']:.3f}); SFT score std {std:.3f}"
  )
  return result


def training_prompts(config, comps: comp_lib.Comparisons, log) -> comp_lib.Comparisons:
  """All sampled prompts, or (rm.skip_tied_prompts) the informative ones."""
  if not config.rm.skip_tied_prompts:
    return comps
  kept = informative_prompts(comps)
  log(
    f"[reward_model] training on the {len(kept):,} of {len(comps):,} prompts "
    "whose responses differ in gold quality (rm.skip_tied_prompts)"
  )
  if not len(kept):
    raise ValueError(
      "No training prompt has responses of different gold quality, so the "
      "rankings hold no preference: raise comparisons.n_prompts or "
      "comparisons.k, or train the SFT policy longer"
    )
  return kept


def resolve(config, sft_dir: str, log=print):
  """(config with the SFT workdir and the reward model's model section,
  (policy run, reward model, its initial params)). Raises ValueError if
  `sft_dir` is not an SFT run or the reward model's context differs."""
  policy = runs.load_run(sft_dir)
  if "sft" not in policy.config:
    raise ValueError(
      f"--sft={sft_dir} is not an SFT run (its config.json has no sft section; a "
      "pretraining run?): the reward model ranks the SFT policy's answers, so pass the "
      "workdir of experiments.sft"
    )
  model, init_params, init_config = load_init(config, sft_dir)
  if model.cfg.max_len != policy.model.cfg.max_len:
    raise ValueError(
      f"rm.init_from has context {model.cfg.max_len}, the policy "
      f"{policy.model.cfg.max_len}: they must match"
    )
  config = config_lib.copy(config)
  config.sft = sft_dir
  config.model = config_lib.copy(init_config.model)
  return config, (policy, model, init_params)


def sample_comparisons(config, policy: runs.LoadedRun, workdir: str, log):
  """(train comparisons, held-out comparisons, (train report, held-out report)):
  the policy's K answers per prompt, ranked by the labeler (stored, reused)."""
  c = config.comparisons
  world = runs.world_of(policy.config)
  noise = None if c.labeler_noise < 0 else c.labeler_noise
  directory = lambda split: os.path.join(workdir, "comparisons", split)
  train_comps, train_report = _comparisons(
    config, policy, world, "train", c.n_prompts, c.seed, directory("train"), noise, log
  )
  heldout, heldout_report = _comparisons(
    config,
    policy,
    world,
    "heldout",
    c.n_heldout,
    c.seed + 1,
    directory("heldout"),
    train_report["labeler_noise"],
    log,
  )
  log(
    f"[reward_model] sequences cut to {train_comps.tokens.shape[-1]} (train) and "
    f"{heldout.tokens.shape[-1]} (held-out) of {config.model.max_len} tokens"
  )
  return train_comps, heldout, (train_report, heldout_report)


def labeler_summary(config, train_report: dict, heldout_report: dict) -> dict:
  return {
    "noise": train_report["labeler_noise"],
    "agreement_train": train_report["labeler_agreement"],
    "agreement_heldout": heldout_report["labeler_agreement"],
    "target": config.comparisons.labeler_agreement,
    "tied_pair_fraction": heldout_report["tied_pair_fraction"],
  }


def data_scaling(config, workdir, model, init_params, train_comps, heldout, main, log) -> list:
  """Held-out accuracy of the main reward model and of extra ones trained on
  eval.data_fractions of the training comparisons (scaling/frac_<f>/)."""
  row = lambda n, frac, ev: {
    "comparisons": n,
    "fraction": frac,
    "accuracy_vs_labeler": ev["accuracy_vs_labeler"],
    "accuracy_vs_gold": ev["accuracy_vs_gold"],
  }
  curve = [row(len(train_comps), 1.0, main)]
  for frac in config.eval.data_fractions:
    n = max(config.train.batch_size, int(frac * len(train_comps)))
    sub_dir = os.path.join(workdir, "scaling", f"frac_{frac:g}")
    sub_params, _ = train_rm(
      config, sub_dir, model, init_params, train_comps.subset(np.arange(n)), heldout, log
    )
    curve.append(row(n, frac, evaluate_rm(model, sub_params, heldout)))
  return sorted(curve, key=lambda r: r["comparisons"])


def plot(result: dict, workdir: str) -> None:
  """calibration.png (RM score vs gold score) and data_scaling.png."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  cal = result["calibration"]
  ax.plot([r["rm_score"] for r in cal], [r["gold"] for r in cal], "o-")
  ax.set_xlabel("reward-model score (bin mean)")
  ax.set_ylabel("gold score (bin mean)")
  ax.set_title("Reward-model calibration (held-out)")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "calibration.png"), dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  curve = result["data_scaling"]
  n = [r["comparisons"] * result["pairs_per_prompt"] for r in curve]
  finite = lambda ys: [(x, y) for x, y in zip(n, ys) if math.isfinite(y)]
  drawn = 0
  for key, marker, label in (
    ("accuracy_vs_labeler", "o-", "vs labeler"),
    ("accuracy_vs_gold", "s-", "vs gold"),
  ):
    pts = finite([r[key] for r in curve])
    if pts:
      ax.plot(*zip(*pts), marker, label=label)
      drawn += 1
  ceiling = result["labeler"]["agreement_heldout"]
  if math.isfinite(ceiling):
    ax.axhline(ceiling, ls="--", c="gray", label="labeler vs gold (ceiling)")
  ax.axhline(0.5, ls=":", c="k", lw=0.8)
  if drawn:
    ax.set_xscale("log")
    ax.set_xticks(n, [f"{x:,}" for x in n])  # the sizes trained, not 2x10^2 3x10^2 ...
    ax.minorticks_off()
    ax.legend(fontsize=8)
  else:
    ax.text(
      0.5,
      0.5,
      "no held-out pair with different gold scores",
      ha="center",
      transform=ax.transAxes,
      fontsize=8,
    )
  ax.set_xlabel("training comparisons (pairs)")
  ax.set_ylabel("held-out pairwise accuracy")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "data_scaling.png"), dpi=120)
  plt.close(fig)


def load_reward_model(workdir: str):
  """(model, params with the bias shift applied, config) of a finished RM workdir."""
  config = config_lib.load(os.path.join(workdir, "config.json"))
  norm_path = os.path.join(workdir, NORMALIZATION_FILE)
  if not os.path.exists(norm_path):
    raise FileNotFoundError(
      f"{workdir} has no {NORMALIZATION_FILE}: the reward-model run did not finish"
    )
  model = heads.ScalarHeadModel(model_lib.TransformerConfig.from_config(config.model))
  params, _ = train.restore_params(
    workdir, config, model, {"tokens": np.zeros((1, config.model.max_len), np.int32)}
  )
  with open(norm_path) as f:
    norm = json.load(f)
  return model, heads.shift_bias(params, norm["bias_shift"]), config
