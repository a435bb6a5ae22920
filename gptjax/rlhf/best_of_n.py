"""Best-of-n: sample n answers from the SFT policy and keep the one a scorer prefers.

The simplest use of a reward model (Nakano et al. 2021; Stiennon et al. 2020;
Gao et al. 2022) and the baseline PPO must beat at equal KL. On the held-out
prompts of the RLHF evaluation (`evaluation.Evaluator.examples`, the same
prompts and judge as PPO and DPO) the SFT policy samples N = max(ns) answers
per prompt at temperature 1 (the pure distribution), and for each n in `ns`
two pickers choose:

  reward_model  the highest reward-model score (the RM stage's model, bias-
                shifted as `load_reward_model` returns it): what RLHF's
                reward can buy without any policy update;
  oracle        the highest gold score: the ceiling of reranking n samples
                (pass@n with graded credit).

Subsampling. A best-of-n estimate for n < N uses all N samples: the pick of a
uniformly random n-subset is sample i with probability C(p_i, n - 1) / C(N, n),
where p_i is the number of samples i beats (by the picker's key, ties to the
lower index). Averaging over these weights is the exact expectation over all
C(N, n) subsets -- unbiased, and of lower variance than one subset. Gold
scores, oracle flags and win/tie/loss against greedy SFT are averaged the
same way, so W/T/L are expected counts.

KL. The best-of-n distribution's KL to the policy is at most
log n - (n - 1) / n nats (Stiennon et al. 2020, Hilton 2023; exact when the
scorer never ties), reported as `kl_bound` -- a bound, not a measurement.

eval.json: {"ns", "n_samples", "reward_model": {n: ...}, "oracle": {n: ...},
"table": [...]}, where each {n: ...} holds `dpo.versus_sft`'s keys (those of
the RLHF stage's eval.json, with 'best_of_<n>' in place of 'rlhf') plus
kl_bound and the pick's mean reward-model score.
"""

import math
import os

import numpy as np

from gptjax import config as config_lib, evaluation, heads, runs, train
from gptjax.reward_model import comparisons as comp_lib, training as rm_training
from gptjax.rlhf import dpo
from gptjax.tasks import competence, oracle

PICKERS = ("reward_model", "oracle")

# ----------------------------------------------------------------------------
# Pure functions.


def kl_bound(n: int) -> float:
  """log n - (n - 1) / n: the upper bound on KL(best-of-n || policy), in nats."""
  if n < 1:
    raise ValueError(f"best-of-n needs n >= 1, got {n}")
  return math.log(n) - (n - 1) / n


def pick_weights(keys, n: int) -> np.ndarray:
  """keys [N] -> [N]: P(sample i is the best-of-n pick of a uniformly random n-subset).

  The pick is the subset's largest key, ties going to the lower index (what
  `np.argmax` does on the subset in index order). With p_i = the number of
  samples i beats, i is picked iff the other n - 1 members come from those
  p_i: probability C(p_i, n - 1) / C(N, n). n = N puts all weight on the
  overall argmax; n = 1 is uniform.
  """
  keys = np.asarray(keys, float)
  N = len(keys)
  if not 1 <= n <= N:
    raise ValueError(f"best-of-{n} needs 1 <= n <= {N} samples")
  order = np.lexsort((-np.arange(N), keys))  # ascending: smaller key, then higher index
  beats = np.empty(N, np.int64)
  beats[order] = np.arange(N)
  return np.array([math.comb(int(p), n - 1) for p in beats], float) / math.comb(N, n)


def pick(keys, n: int | None = None) -> int:
  """Index of the best-of-n pick among the first n samples (all if n is None)."""
  keys = np.asarray(keys, float)
  return int(np.argmax(keys[: n or len(keys)]))


def expected_judgement(judgements: list[dict], weights: np.ndarray) -> dict:
  """The weighted mean of oracle judgements (`oracle.classify` dicts) of one
  prompt's samples: numeric and boolean fields become expectations, so
  `evaluation.summarize` of such dicts gives expected rates."""
  out = {"family": judgements[0]["family"]}
  for key, value in judgements[0].items():
    if isinstance(value, (bool, int, float, np.number, np.bool_)) and key != "family":
      out[key] = float(sum(w * float(j[key]) for w, j in zip(weights, judgements)))
  return out


def expected_outcome(gold, greedy: float, weights) -> np.ndarray:
  """[3]: P(pick beats / ties / loses to the greedy answer) under `weights`."""
  return np.asarray(weights) @ dpo.win_tie_loss(gold, np.full(len(gold), greedy))


# ----------------------------------------------------------------------------
# Sampling and scoring.


def _judge(prompt: str, text: str, world) -> dict:
  """`oracle.classify` plus 'answered_correct' (a committed, right answer), so
  that expectations over picks give accuracy when answering exactly."""
  j = oracle.classify(prompt, text, world)
  return {**j, "answered_correct": bool(j["answered"] and j["content_correct"])}


def sample_and_score(
  sft: runs.LoadedRun, rm, world, examples, cfg, n: int, seed: int, stop_check=None
):
  """n samples per prompt at T = 1 with oracle judgements and reward-model scores.

  rm: (model, params, config) as `load_reward_model` returns it. Returns
  (judgements [P][n] dicts, RM scores [P, n], texts [P][n]).
  """
  prompts = [e.prompt for e in examples]
  prompt_ids, resp, texts = dpo.sample(sft, prompts, n, cfg, seed, stop_check)
  judgements = [[_judge(p, t, world) for t in ts] for p, ts in zip(prompts, texts)]
  rm_model, rm_params, _ = rm
  tokens, mask = comp_lib.pack_sequences(
    prompt_ids, resp, rm_model.cfg.max_len, sft.tokenizer.pad_id
  )  # [P, n, T]
  flat = lambda x: x.reshape(-1, x.shape[-1])
  scores = heads.score_batched(rm_model, rm_params, flat(tokens), flat(mask), cfg.batch_size)
  return judgements, scores.reshape(len(prompts), n), texts


# ----------------------------------------------------------------------------
# The stage.


def validate(config) -> None:
  ns = list(config.best_of_n.ns)
  config_lib.require(
    bool(ns) and all(isinstance(n, int) and n >= 1 for n in ns),
    "best_of_n.ns",
    ns,
    "positive integers",
  )
  config_lib.require(config.eval.n_boot > 0, "eval.n_boot", config.eval.n_boot, "> 0")


def report(name, greedy, judgements, gold, rm, keys, n, n_boot, seed) -> dict:
  """versus_sft of the expected best-of-n pick by `keys` [P, N], plus its KL bound."""
  weights = [pick_weights(k, n) for k in keys]  # [P] of [N]
  picked = [expected_judgement(js, w) for js, w in zip(judgements, weights)]
  outcome = np.stack(
    [expected_outcome(g, j["score"], w) for g, j, w in zip(gold, greedy, weights)]
  )  # [P, 3]
  out = dpo.versus_sft(f"best_of_{n}", greedy, picked, n_boot, seed, outcome)
  out["picker"], out["n"], out["kl_bound"] = name, n, kl_bound(n)
  out["rm_score_mean"] = float(np.mean([w @ r for w, r in zip(weights, rm)]))
  return out


def run(config, workdir: str, sft_dir: str | None = None, rm_dir: str | None = None, log=print):
  """SFT samples on the held-out prompts, reranked by the RM and by the oracle.
  Returns eval.json's dict."""
  validate(config)
  sft_dir, rm_dir = sft_dir or config.sft, rm_dir or config.reward_model
  if not sft_dir or not rm_dir:
    raise ValueError("best-of-n needs --sft=<SFT workdir> and --reward_model=<RM workdir>")
  workdir = train.prepare_workdir(workdir)
  sft = runs.load_run(os.path.abspath(sft_dir))
  rm = rm_training.load_reward_model(os.path.abspath(rm_dir))
  world = runs.world_of(sft.config)
  # The stage has nothing to save: a stop signal ends it within a batch (exit 130, rerun anew).
  stop_check = lambda: train.check_stop("best_of_n", "while sampling", workdir)
  ev = evaluation.Evaluator(
    sft.model,
    sft.tokenizer,
    world,
    config.eval,
    families=runs.families_of(sft.config),
    stop_check=stop_check,
  )
  greedy, _ = ev.judgements(sft.params, "chat")
  ns = sorted(set(config.best_of_n.ns))
  N = ns[-1]
  log(f"[best_of_n] sampling {N} answers to each of {len(ev.examples)} held-out prompts ...")
  judgements, rm, texts = sample_and_score(
    sft, rm, world, ev.examples, config.eval, N, config.best_of_n.seed, stop_check
  )
  gold = np.array([[j["score"] for j in js] for js in judgements])  # [P, N]
  result = {"ns": ns, "n_samples": N, "sft_dir": sft.workdir, "reward_model_dir": rm_dir}
  # The room RLHF has: SFT's pass@1 vs pass@N per family and level, from the same samples.
  result["pass_at_k"] = competence.pass_at_k_table(
    [e.prompt for e in ev.examples], texts, world, ks=sorted({1, N})
  )
  for name, keys in (("reward_model", rm), ("oracle", gold)):
    result[name] = {
      str(n): report(name, greedy, judgements, gold, rm, keys, n, config.eval.n_boot, config.seed)
      for n in ns
    }
  result["table"] = [
    {
      "method": f"best_of_{n}_{name}",
      "win_rate": r["win_rate_vs_sft"]["win_rate"],
      "ci95": r["bootstrap_vs_sft"]["win_rate_ci95"],
      **{k: r["win_rate_vs_sft"][k] for k in ("wins", "ties", "losses")},
      "gold_mean": r["gold_mean"][f"best_of_{n}"],
      "kl_bound": r["kl_bound"],
    }
    for name in PICKERS
    for n, r in ((int(k), v) for k, v in result[name].items())
  ]
  runs.write_json(os.path.join(workdir, "eval.json"), result)
  log(f"[best_of_n] greedy SFT gold {result['oracle'][str(N)]['gold_mean']['sft']:.3f}")
  for row in result["table"]:
    log(
      f"[best_of_n] {row['method']:<24} gold {row['gold_mean']:.3f}  win rate vs greedy SFT "
      f"{row['win_rate']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]  W/T/L "
      f"{row['wins']}/{row['ties']}/{row['losses']}  KL <= {row['kl_bound']:.2f}"
    )
  return result
