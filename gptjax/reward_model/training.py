"""Reward modelling as a composition: SFT policy -> comparisons -> ranking loss -> eval.

`experiments/reward_model.py` is its command line; the RLHF stage loads the
result with `load_reward_model`.

Workdir layout:
  config.json, tokenizer.model      the resolved config and the policy's tokenizer
  comparisons/{train,heldout}/      sampled, labelled comparisons (reused if present);
                                    labels.npz: the labeler's ranks, ties equal
  checkpoints/, metrics.jsonl       the main reward model (all training comparisons)
  reward_model.json                 normalisation (SFT samples -> mean 0, std 1), the
                                    early-stopping step
  eval.json, calibration.png, data_scaling.png
  scaling/frac_<f>/                 extra reward models for the data-scaling curve

Design (issue 15):
- The labeler may say "tie" (`labeler.label`); tied pairs are masked in the
  ranking loss, prompts it tied throughout are left out, and eval.json
  counts the informative pairs.
- The RM's prompts and PPO's are disjoint: train-split prompts are cut in
  two by a hash of their text (`prompt_part`), 'rm' and 'rl'.
- Early stopping: the last `rm.validation_fraction` of the training prompts
  is a validation set (never trained on); the checkpoint with the best
  agreement with the labeler on it (evaluated every rm.eval_every steps, the
  earliest on a tie) is the reward model. With rm.patience = n, training
  ends once n evaluations in a row bring no better agreement (train.Task.done):
  the kept checkpoint is the one the full run would keep unless a later
  evaluation would have beaten it. The held-out comparisons (another
  seed, held-out split) are only ever used for the final report.
- Scores are normalised to mean 0, std 1 on the SFT policy's samples (the
  training responses): beta and the truncation penalty are then in units of
  the RM's spread on the policy it starts from.
"""

import dataclasses
import hashlib
import json
import math
import os

import jax
import numpy as np

from gptjax import (
  config as config_lib,
  files,
  heads,
  losses,
  metrics as metrics_lib,
  model as model_lib,
  runs,
  train,
)
from gptjax.reward_model import comparisons as comp_lib
from gptjax.tasks import instructions, labeler
from gptjax.tokenizer import load_from as load_tokenizer

NORMALIZATION_FILE = "reward_model.json"
LABELS_FILE = "labels.npz"
PARTS = ("rm", "rl")  # the two halves of the train-split prompts


# ----------------------------------------------------------------------------
# Prompts: the reward model's and PPO's are disjoint.


def prompt_part(prompt: str) -> str:
  """'rm' or 'rl': which half of the train-split prompts `prompt` belongs to
  (a hash of its text, so the halves never share a prompt)."""
  h = hashlib.sha256(prompt.strip().encode()).digest()[0]
  return PARTS[h & 1]


def examples_for(
  world, n: int, seed: int, split: str, part: str | None = None, families=None
) -> list:
  """`n` examples of the instruction mixture of `families` (default all;
  reference demonstrations are irrelevant here: only the prompts are used).
  part 'rm' / 'rl' keeps the train-split prompts of that half
  (`prompt_part`); None keeps all."""
  if part is None:
    return instructions.make_mixture(world, n, seed, split, families)
  if part not in PARTS:
    raise ValueError(f"part must be one of {PARTS} or None, got {part!r}")
  out, draw = [], 2 * n + 16
  for attempt in range(6):
    pool = instructions.make_mixture(world, draw, seed + 7_919 * attempt, split, families)
    out += [e for e in pool if prompt_part(e.prompt) == part]
    if len(out) >= n:
      return out[:n]
  raise RuntimeError(f"could not draw {n} '{part}' prompts of the {split} split")


# ----------------------------------------------------------------------------
# Comparisons with the labeler's ties.


@dataclasses.dataclass
class RankedComparisons(comp_lib.Comparisons):
  """Comparisons plus the labeler's ranks [P, K] (0 = best, ties equal);
  `ranking` is a permutation consistent with them (ties in random order)."""

  rank: np.ndarray = None

  def subset(self, index) -> "RankedComparisons":
    base = comp_lib.Comparisons.subset(self, index)
    return RankedComparisons(**vars(base), rank=self.rank[np.asarray(index)])


def with_ranks(comps: comp_lib.Comparisons, directory: str | None = None) -> RankedComparisons:
  """`comps` with the labeler's ranks from `directory`/labels.npz, or (old
  workdirs, no ties) the ranks of its permutation."""
  path = directory and os.path.join(directory, LABELS_FILE)
  if path and os.path.exists(path):
    rank = np.load(path)["rank"]
  else:
    rank = np.asarray(losses.ranks_from_ranking(comps.ranking))
  if rank.shape != comps.ranking.shape:
    raise ValueError(f"{path}: ranks {rank.shape} do not match comparisons {comps.ranking.shape}")
  return RankedComparisons(**vars(comps), rank=rank.astype(np.int32))


def relabel(comps, report: dict, c, noise: float | None, seed: int) -> RankedComparisons:
  """The labeler's judgement with ties (`labeler.label`, margin
  comparisons.tie_margin) of sampled comparisons; the noise is calibrated on
  their gold scores (unless given) so that its agreement on the pairs it
  orders is comparisons.labeler_agreement. Updates `report` in place."""
  margin = c.get("tie_margin", 0.0)
  if noise is None and np.ptp(comps.gold, axis=1).max(initial=0.0) > margin:
    noise = labeler.calibrate_noise(c.labeler_agreement, comps.gold, tie_margin=margin)
  noise = report["labeler_noise"] if noise is None else noise
  rng = np.random.default_rng((seed, 15))
  rank = labeler.label_batch(comps.gold, rng, noise, margin).astype(np.int32)
  ties = labeler.tie_statistics(rank, comps.gold)
  report.update(
    labeler_noise=float(noise),
    labeler_agreement=ties["agreement"],
    tie_margin=margin,
    informative_pairs=ties["informative_pairs"],
    pairs=ties["pairs"],
    tied_gold_differs=ties["tied_gold_differs"],
    tied_gold_equal=ties["tied_gold_equal"],
  )
  ranked = RankedComparisons(**vars(comps), rank=rank)
  ranked.ranking = labeler.ranking_of(rank, rng)
  return ranked


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
  patience = config.rm.get("patience", 0)
  config_lib.require(
    isinstance(patience, int) and patience >= 0, "rm.patience", patience, "an integer >= 0"
  )
  for f in config.eval.data_fractions:
    config_lib.require(
      0 < f < 1, "eval.data_fractions", list(config.eval.data_fractions), "fractions in (0, 1)"
    )


def steps_for(n_prompts: int, batch_size: int, epochs: float) -> int:
  return max(1, math.ceil(epochs * n_prompts / batch_size))


def batch_arrays(comps: comp_lib.Comparisons) -> dict:
  """The per-prompt arrays the ranking loss reads: tokens, token_mask [P, K, T],
  ranking [P, K] and (labels with ties) rank [P, K]."""
  out = {"tokens": comps.tokens, "token_mask": comps.token_mask, "ranking": comps.ranking}
  if getattr(comps, "rank", None) is not None:
    out["rank"] = comps.rank  # ties masked in the loss
  return out


def build_task(
  config,
  model,
  train_comps: comp_lib.Comparisons,
  heldout: comp_lib.Comparisons,
  init_params,
  name: str = "reward_model",
):
  """Ranking loss over the K responses of each prompt, warm-started from the
  trunk, trained on packed rows (`comparisons.packed_prompt_batches`); the
  validation batches are scored as stored."""
  t = config.train
  B = t.batch_size

  train_batch, tokens_per_step = comp_lib.task_batches(config, batch_arrays(train_comps))

  def heldout_batches():
    n = max(1, len(heldout) // B) * B  # whole batches only (sharding needs equal splits)
    whole = batch_arrays(heldout)
    for start in range(0, n, B):
      yield {k: v[np.arange(start, start + B) % len(heldout)] for k, v in whole.items()}

  return train.Task(
    name=name,
    model=model,
    loss_fn=losses.reward_loss_fn(model),
    train_batch=train_batch,
    example_batch={"tokens": train_comps.tokens[:1, 0]},
    tokens_per_step=round(tokens_per_step),
    eval_sets={} if heldout is None else {"validation": heldout_batches},
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


def accuracy_vs_ranks(scores: np.ndarray, rank: np.ndarray, gold: np.ndarray | None = None):
  """Fraction of the pairs the labeler ordered (unequal ranks) that `scores`
  [P, K] order the same way; with `gold`, only those whose gold differs too
  (the labeler ceiling's pairs)."""
  i, j = np.triu_indices(rank.shape[1], 1)
  ordered = rank[:, i] != rank[:, j]
  if gold is not None:
    ordered &= np.abs(gold[:, i] - gold[:, j]) > 1e-9
  agree = (scores[:, i] > scores[:, j]) == (rank[:, i] < rank[:, j])
  return float((agree & ordered).sum() / ordered.sum()) if ordered.any() else float("nan")


def evaluate_rm(model, params, heldout: comp_lib.Comparisons) -> dict:
  """Held-out pairwise accuracy: vs the labeler on the pairs it ordered whose
  gold differs (the pairs where the labeler's own agreement, the ceiling, is
  measured), on all pairs it ordered, and vs gold on all gold-differing pairs."""
  scores = score_all(model, params, heldout)
  rank = getattr(heldout, "rank", None)
  if rank is None:
    rank = np.asarray(losses.ranks_from_ranking(heldout.ranking))
  return {
    "accuracy_vs_labeler": accuracy_vs_ranks(scores, rank, heldout.gold),
    "accuracy_vs_labeler_all_pairs": accuracy_vs_ranks(scores, rank),
    "accuracy_vs_gold": comp_lib.gold_accuracy(scores, heldout.gold),
    "scores": scores,
  }


def _comparisons(
  config,
  policy,
  world,
  split: str,
  n: int,
  seed: int,
  directory: str,
  noise: float | None,
  log,
  stop_check=None,
) -> tuple[comp_lib.Comparisons, dict]:
  """The split's comparisons (reused when stored with the same recipe, else
  sampled and stored), cut to the samples' own length for training and scoring."""
  report_path = os.path.join(directory, "report.json")
  c = config.comparisons
  part = "rm" if split == "train" else None  # PPO draws from the other half
  families = runs.families_of(policy.config)
  recipe = {
    "families": list(families),
    "policy": policy.workdir,
    "policy_step": policy.step,
    "split": split,
    "part": part,
    "n": n,
    "seed": seed,
    "k": c.k,
    "max_new_tokens": c.max_new_tokens,
    "noise": noise,
    "target_agreement": c.labeler_agreement,
    "tie_margin": c.get("tie_margin", 0.0),
  }
  if comp_lib.Comparisons.exists(directory) and os.path.exists(report_path):
    with open(report_path) as f:
      report = json.load(f)
    if report.get("recipe") == recipe:
      log(f"[reward_model] reusing comparisons in {directory}")
      return with_ranks(comp_lib.Comparisons.load(directory), directory).trimmed(), report
    log(f"[reward_model] settings changed since {directory} was written: sampling anew")
  examples = examples_for(world, n, seed, split, part, families)
  comps, report = comp_lib.make_comparisons(
    policy,
    world,
    examples,
    comp_lib.ComparisonSettings.from_config(c, noise),
    seed=seed,
    log=log,
    stop_check=stop_check,
  )
  comps = relabel(comps, report, c, noise, seed)
  log(
    f"[reward_model] labeler with ties (margin {report['tie_margin']}): agreement "
    f"{report['labeler_agreement']:.3f} on the {report['informative_pairs']:,} of "
    f"{report['pairs']:,} pairs it ordered (noise {report['labeler_noise']:.3f})"
  )
  report["recipe"] = recipe
  comps.save(directory)
  with files.atomic_path(os.path.join(directory, LABELS_FILE)) as tmp:
    np.savez(tmp, rank=comps.rank)
  runs.write_json(report_path, report)
  return comps.trimmed(), report


def load_init(config, sft_dir: str):
  """(model, params) of the reward model before training: a trunk + a fresh head."""
  init_dir = config.rm.init_from or sft_dir
  init_run = runs.load_run(init_dir)
  policy_tokenizer = load_tokenizer(sft_dir)
  if init_run.tokenizer.fingerprint != policy_tokenizer.fingerprint:
    raise ValueError(
      f"rm.init_from={init_dir} uses a different tokenizer from the SFT "
      f"policy {sft_dir}; a reward model must read the policy's tokens"
    )
  model = heads.ScalarHeadModel(init_run.model.cfg)
  head = heads.init_head(model, jax.random.PRNGKey(config.seed))
  return model, heads.from_lm_params(init_run.params, head), init_run.config


def split_validation(comps, fraction: float):
  """(train, validation): the last `fraction` of the prompts (at least one)
  are the early-stopping set; fraction 0 gives (comps, None)."""
  if fraction <= 0:
    return comps, None
  n_val = max(1, int(round(fraction * len(comps))))
  if n_val >= len(comps):
    raise ValueError(f"rm.validation_fraction={fraction} leaves no training prompt")
  return comps.subset(np.arange(len(comps) - n_val)), comps.subset(
    np.arange(len(comps) - n_val, len(comps))
  )


def best_step(records: list[dict], key: str = "validation/accuracy") -> tuple[int, float] | None:
  """(step, value) of the eval record with the highest `key` (the earliest
  on a tie), or None if no record has it."""
  scored = [(r[key], -r["step"]) for r in records if key in r and math.isfinite(r[key])]
  if not scored:
    return None
  value, neg_step = max(scored)
  return -neg_step, value


def patience_spent(evals: list[dict], patience: int, key: str = "validation/accuracy") -> bool:
  """Whether the last `patience` evaluations all came after the best one
  (`best_step`: a later tie is no improvement); patience 0 never stops."""
  best = best_step(evals, key)
  return patience > 0 and best is not None and sum(e["step"] > best[0] for e in evals) >= patience


def train_rm(config, workdir: str, model, init_params, train_comps, validation, log):
  """Trains one reward model with the shared loop, evaluating agreement with
  the labeler on `validation` every rm.eval_every steps (a checkpoint each
  time); returns (params of the best such checkpoint, summary with
  'best_step' and 'best_validation_accuracy')."""
  cfg = config_lib.copy(config)
  t = cfg.train
  t.steps = steps_for(len(train_comps), t.batch_size, cfg.rm.epochs)
  every = min(cfg.rm.get("eval_every", t.steps), t.steps)
  t.eval_every = t.ckpt_every = every
  t.keep_checkpoints = t.steps // every + 2  # every candidate stays on disk
  task = build_task(cfg, model, train_comps, validation, init_params)
  if validation is not None:
    task.done = lambda evals: patience_spent(evals, cfg.rm.get("patience", 0))
  state, summary = train.run(cfg, workdir, task, log=log)
  best = best_step(metrics_lib.read_metrics(workdir, "eval"))
  if best is None or best[0] == summary["steps"]:
    params = state.params
    best = best or (summary["steps"], float("nan"))
  else:
    params, _ = train.restore_params(workdir, cfg, model, task.example_batch, step=best[0])
  ended = f", training ended by rm.patience at step {summary['steps']} of {t.steps}"
  log(
    f"[reward_model] early stopping: step {best[0]} of {summary['steps']} "
    f"(validation agreement with the labeler {best[1]:.3f}"
    + (ended if summary["early_stopped"] else "")
    + ")"
  )
  return params, {
    **summary,
    "planned_steps": t.steps,
    "best_step": best[0],
    "best_validation_accuracy": best[1],
  }


def normalize(params, mean: float, std: float) -> dict:
  """Head params whose scores are (score - mean) / std: w / std, (b - mean) / std."""
  if not std > 0:
    raise ValueError(f"cannot normalise reward-model scores by std {std}")
  return {**params, "head_w": params["head_w"] / std, "head_b": (params["head_b"] - mean) / std}


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
    all_train, used = train_comps, training_prompts(config, train_comps, log)
    train_comps, validation = split_validation(used, config.rm.get("validation_fraction", 0.0))
    validation = heldout if validation is None else validation
    params, summary = train_rm(config, workdir, model, init_params, train_comps, validation, log)
    params, mean, std = normalize_on(model, params, all_train, workdir, summary["best_step"])
    main = evaluate_rm(model, params, heldout)
    curve = data_scaling(
      config, workdir, model, init_params, train_comps, validation, heldout, main, log
    )
    result = {
      **counts(config, all_train, train_comps, validation, heldout),
      "labeler": labeler_summary(config, *reports),
      "accuracy_vs_labeler": main["accuracy_vs_labeler"],
      "accuracy_vs_labeler_all_pairs": main["accuracy_vs_labeler_all_pairs"],
      "accuracy_vs_gold": main["accuracy_vs_gold"],
      "sft_score_mean": mean,
      "sft_score_std": std,
      "bias_shift": -mean,
      "calibration": calibration(main["scores"], heldout.gold, config.eval.calibration_bins),
      "data_scaling": curve,
      "steps": summary["steps"],
      "planned_steps": summary["planned_steps"],
      "best_step": summary["best_step"],
      "best_validation_accuracy": summary["best_validation_accuracy"],
      "validation_loss": summary.get("last_eval", {}).get("validation/loss"),
    }
    runs.write_json(os.path.join(workdir, "eval.json"), result)
    plot(result, workdir)
  log(
    f"[reward_model] held-out accuracy: {result['accuracy_vs_labeler']:.3f} vs labeler, "
    f"{result['accuracy_vs_gold']:.3f} vs gold (labeler's own agreement "
    f"{result['labeler']['agreement_heldout']:.3f}); SFT score std {std:.3f}"
  )
  return result


def normalize_on(model, params, comps, workdir: str, best: int):
  """(params scoring `comps` (the SFT policy's own samples) with mean 0 and
  std 1, the raw mean, the raw std); the normalisation is written to
  reward_model.json, which `load_reward_model` applies."""
  scores = score_all(model, params, comps)
  mean, std = float(scores.mean()), float(scores.std())
  runs.write_json(
    os.path.join(workdir, NORMALIZATION_FILE),
    {
      "bias_shift": -mean,
      "sft_score_mean": mean,
      "sft_score_std": std,
      "scale": 1.0 / std,
      "best_step": best,
    },
  )
  return normalize(params, mean, std), mean, std


def informative_pairs(comps) -> int:
  """Pairs the labeler ordered (not tied): what the ranking loss learns from."""
  return int((comps.rank[:, :, None] < comps.rank[:, None, :]).sum())


def counts(config, sampled, train_comps, validation, heldout) -> dict:
  k = config.comparisons.k
  return {
    "k": k,
    "n_train_prompts": len(train_comps),
    "n_validation_prompts": len(validation),
    "n_sampled_prompts": len(sampled),
    "n_heldout_prompts": len(heldout),
    "pairs_per_prompt": k * (k - 1) // 2,
    "informative_train_pairs": informative_pairs(train_comps),
    "informative_heldout_pairs": informative_pairs(heldout),
  }


def labelled_informative(comps: RankedComparisons) -> RankedComparisons:
  """The prompts where the labeler ordered at least one pair (not all tied):
  the others add nothing to the tie-masked loss. Chosen from the labels
  alone (the gold scores stay unseen)."""
  return comps.subset(np.flatnonzero(np.ptp(comps.rank, axis=1) > 0))


def training_prompts(config, comps: RankedComparisons, log) -> RankedComparisons:
  """All sampled prompts, or (rm.skip_tied_prompts) those the labeler did
  not tie throughout."""
  if not config.rm.skip_tied_prompts:
    return comps
  kept = labelled_informative(comps)
  log(
    f"[reward_model] training on the {len(kept):,} of {len(comps):,} prompts "
    "where the labeler preferred one response to another (rm.skip_tied_prompts)"
  )
  if not len(kept):
    raise ValueError(
      "The labeler tied every training prompt's responses, so the rankings "
      "hold no preference: raise comparisons.n_prompts or comparisons.k, or "
      "train the SFT policy longer"
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
  stop_check = lambda: train.check_stop("reward_model", "while sampling comparisons", workdir)
  train_comps, train_report = _comparisons(
    config, policy, world, "train", c.n_prompts, c.seed, directory("train"), noise, log, stop_check
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
    stop_check,
  )
  log(
    f"[reward_model] sequences cut to {train_comps.tokens.shape[-1]} (train) and "
    f"{heldout.tokens.shape[-1]} (held-out) of {config.model.max_len} tokens"
  )
  return train_comps, heldout, (train_report, heldout_report)


def labeler_summary(config, train_report: dict, heldout_report: dict) -> dict:
  """The labeler's noise and agreement (its ceiling for the RM), gold ties
  and its own ties on both splits."""
  get = lambda r, k: r.get(k, float("nan"))
  return {
    "noise": train_report["labeler_noise"],
    "tie_margin": get(train_report, "tie_margin"),
    "agreement_train": train_report["labeler_agreement"],
    "agreement_heldout": heldout_report["labeler_agreement"],
    "target": config.comparisons.labeler_agreement,
    "tied_pair_fraction": heldout_report["tied_pair_fraction"],  # gold ties
    "informative_pairs_train": get(train_report, "informative_pairs"),
    "pairs_train": get(train_report, "pairs"),
    "tied_gold_differs": get(heldout_report, "tied_gold_differs"),
  }


def data_scaling(
  config, workdir, model, init_params, train_comps, validation, heldout, main, log
) -> list:
  """Held-out accuracy of the main reward model and of extra ones trained on
  eval.data_fractions of the training comparisons (scaling/frac_<f>/), each
  early-stopped on the same validation prompts."""
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
      config, sub_dir, model, init_params, train_comps.subset(np.arange(n)), validation, log
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
  files.save_figure(fig, os.path.join(workdir, "calibration.png"), dpi=120)

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
  files.save_figure(fig, os.path.join(workdir, "data_scaling.png"), dpi=120)


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
  if "scale" in norm:  # mean 0, std 1 on the SFT samples
    return model, normalize(params, norm["sft_score_mean"], norm["sft_score_std"]), config
  return model, heads.shift_bias(params, norm["bias_shift"]), config  # older runs: centred only
