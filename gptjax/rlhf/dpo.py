"""Direct Preference Optimization (Rafailov et al. 2023): the policy is its own reward model.

DPO skips the reward model and PPO: for a preferred response y_w and a
dispreferred y_l to the same prompt x it minimises

  -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

whose optimum is the KL-regularised RLHF optimum for the Bradley-Terry
reward beta * log(pi / ref). beta * (log pi - log ref) is the *implicit
reward*; its pairwise accuracy on held-out comparisons is comparable with
the reward model's.

Data: the SAME comparisons the reward model was trained on (read from the RM
workdir, `comparisons/{train,heldout}/`, with the RM's own prompt selection
`rm.skip_tied_prompts`), from the same SFT model, which is the frozen
reference. A prompt with K ranked responses gives C(K, 2) pairs, all in one
batch element (K forward passes), as in the ranking loss; pairs the labeler
tied (equal ranks) carry no preference and are masked out. Log-probs are
summed over the response tokens only (the answer and its <|end_turn|>);
prompt and padding tokens are masked. The reference log-probs are computed
once and cached in the workdir.

Variants (`dpo.loss`): 'sigmoid' is DPO, with `dpo.label_smoothing` eps > 0
the conservative cDPO (Mitchell 2023: labels flipped with probability eps,
which suits a labeler at ~73% agreement); 'ipo' is IPO (Azar et al. 2023),
the squared loss (h - 1/(2 beta))^2 on the log-ratio margin h, which keeps
the margin bounded instead of pushing it to infinity on deterministic
preferences.

Workdir layout (an LM run: `runs.load_run`, chat and evaluation load it as
they load an SFT run):
  config.json        the DPO config plus the SFT run's model and data sections
  tokenizer.model    the SFT run's
  checkpoints/, metrics.jsonl, tb/   the shared train loop's
  reference_logprobs.npz             the frozen reference's log-probs (cache)
  eval.json          win rate vs SFT (paired bootstrap, W/T/L), per-family
                     gold, honesty and refusal rates, implicit-reward
                     accuracy, KL to SFT and gold of T = 1 samples
"""

import dataclasses
import functools
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax import (
  config as config_lib,
  evaluation,
  files,
  heads,
  runs,
  sampling,
  sharding,
  tokenizer as tokenizer_lib,
  train,
)
from gptjax.reward_model import comparisons as comp_lib, training as rm_training
from gptjax.rlhf import stats
from gptjax.tasks import labeler, oracle

LOSSES = ("sigmoid", "ipo")
REFERENCE_FILE = "reference_logprobs.npz"

# ----------------------------------------------------------------------------
# Pure functions.


def response_mask(
  tokens: np.ndarray, token_mask: np.ndarray, assistant_header: int | Sequence[int]
) -> np.ndarray:
  """[..., T] bool: the response tokens of chat rows (prompt + response, right-padded).

  The response starts after the row's first assistant header (the
  tokenizer's `assistant_header`: <|assistant|>, or ChatML's several tokens
  <|im_start|> assistant \\n): the prompt ends with it (the generation
  prompt) and user text never encodes to its control token, so this holds
  also when the prompt was cut from the left to fit the context.
  """
  T = tokens.shape[-1]
  start = tokenizer_lib.response_starts(tokens, assistant_header)  # [...]
  return (np.arange(T) >= start[..., None]) & token_mask.astype(bool)


def ranks_of(ranking: np.ndarray) -> np.ndarray:
  """ranking [P, K] (response indices, best first) -> rank [P, K] (0 = best).

  A labeler that says "tie" gives the tied responses equal ranks; every
  function below takes ranks, so ties need no other representation.
  """
  P, K = ranking.shape
  rank = np.empty((P, K), np.int32)
  rank[np.arange(P)[:, None], ranking] = np.arange(K)
  return rank


def preference_pairs(rank) -> jax.Array:
  """rank [B, K] -> [B, K, K] float32: 1 where response a is preferred to c.

  Equal ranks (ties) give 0 both ways: a tie is no preference.
  """
  rank = jnp.asarray(rank)
  return (rank[:, :, None] < rank[:, None, :]).astype(jnp.float32)


def sequence_logprobs(logits, tokens, resp_mask) -> jax.Array:
  """Sum of log p(token) over response tokens: logits [N, T, V], tokens and resp_mask
  [N, T] -> [N]. Position t's logits predict token t + 1."""
  nll = optax.softmax_cross_entropy_with_integer_labels(
    logits[:, :-1].astype(jnp.float32), tokens[:, 1:]
  )  # [N, T-1]
  return -(nll * resp_mask[:, 1:]).sum(-1)


def dpo_loss(logp, ref_logp, prefer, beta: float, loss: str = "sigmoid", label_smoothing=0.0):
  """DPO / cDPO / IPO over all preferred pairs of each prompt, as totals.

  logp, ref_logp [B, K]: summed response log-probs under the policy and the
  reference; prefer [B, K, K]: 1 where a is preferred to c (see
  `preference_pairs`). Returns (sum of pair losses, number of pairs, metric
  totals per pair): the implicit reward r = beta * (logp - ref_logp),
  'reward_accuracy' (r_w > r_l), 'reward_margin' (r_w - r_l), 'chosen_reward'
  (r_w) and 'rejected_reward' (r_l).
  """
  r = logp - ref_logp  # [B, K] log-ratio
  h = r[:, :, None] - r[:, None, :]  # [B, K, K]: h[a, c] = r_a - r_c
  if loss == "sigmoid":
    eps = label_smoothing
    pair = -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
  elif loss == "ipo":
    pair = (h - 1.0 / (2.0 * beta)) ** 2
  else:
    raise ValueError(f"dpo.loss={loss!r}; allowed: {LOSSES}")
  totals = lambda x: (prefer * x).sum()
  return (
    totals(pair),
    prefer.sum(),
    {
      "reward_accuracy": totals((h > 0).astype(jnp.float32)),
      "reward_margin": totals(beta * h),
      "chosen_reward": totals(beta * r[:, :, None]),
      "rejected_reward": totals(beta * r[:, None, :]),
    },
  )


def packed_token_logprobs(model, params, rows: dict, train: bool = False, rng=None) -> jax.Array:
  """log p of each response token of packed rows (`heads.pack_rows` with
  response_mask packed alike): [R, W] -> [R, W-1], 0 off the responses. Row
  t's logits predict token t + 1; a target whose response_mask is set lies in
  its predecessor's sequence (a response follows its prompt), so no
  prediction crosses a boundary."""
  tokens = rows["tokens"]  # [R, W]
  logits = model.apply(
    {"params": params},
    tokens,
    rows["positions"],
    rows["token_mask"],
    rows["segment_ids"],
    deterministic=not train,
    rngs={"dropout": rng} if train else None,
  )  # [R, W, V]
  nll = optax.softmax_cross_entropy_with_integer_labels(
    logits[:, :-1].astype(jnp.float32), tokens[:, 1:]
  )  # [R, W-1]
  return -nll * rows["response_mask"][:, 1:].astype(jnp.float32)


def packed_logprobs(model, params, batch: dict, train: bool = False, rng=None) -> jax.Array:
  """`sequence_logprobs` of a packed batch: response log-probs summed per
  sequence ('sequence') -> [B, K] (B, K from batch['rank'])."""
  B, K = batch["rank"].shape
  per_token = packed_token_logprobs(model, params, batch, train, rng)  # [R, W-1]
  sums = jax.ops.segment_sum(
    per_token.reshape(-1), batch["sequence"][:, 1:].reshape(-1), num_segments=B * K
  )
  return sums.reshape(B, K)


def dpo_loss_fn(model, beta: float, loss: str = "sigmoid", label_smoothing: float = 0.0):
  """The DPO loss for the shared train loop.

  batch: {'tokens', 'token_mask', 'response_mask' [B, K, T], 'ref_logp' [B, K],
  'rank' [B, K]}. The K responses of a prompt are one batch element.
  Or packed (`comparisons.packed_prompt_batches`, what the stage trains on):
  the B*K sequences in rows [R, W] with 'positions', 'segment_ids' and
  'sequence' (which of the B*K each token belongs to).
  """

  def loss_fn(params, batch, rng, train: bool):
    if "sequence" in batch:
      return dpo_loss(
        packed_logprobs(model, params, batch, train, rng),
        batch["ref_logp"],
        preference_pairs(batch["rank"]),
        beta,
        loss,
        label_smoothing,
      )
    B, K, T = batch["tokens"].shape
    tokens = batch["tokens"].reshape(B * K, T)
    logits = model.apply(
      {"params": params},
      tokens,
      None,
      batch["token_mask"].reshape(B * K, T),
      deterministic=not train,
      rngs={"dropout": rng} if train else None,
    )  # [B*K, T, V]
    mask = batch["response_mask"].reshape(B * K, T).astype(jnp.float32)
    logp = sequence_logprobs(logits, tokens, mask).reshape(B, K)
    prefer = preference_pairs(batch["rank"])
    return dpo_loss(logp, batch["ref_logp"], prefer, beta, loss, label_smoothing)

  return loss_fn


# ----------------------------------------------------------------------------
# Data: comparisons -> DPO arrays.


@functools.partial(jax.jit, static_argnames=("model",))
def _token_logprobs_jit(model, params, rows):
  return packed_token_logprobs(model, params, rows)


LOGITS_BUDGET = 256 * 2**20  # bytes of float32 logits [rows, T, V] per batch of `logprobs_of`


def logprobs_batch(seq_len: int, vocab_size: int, most: int = 64) -> int:
  """Rows per batch whose logits fit LOGITS_BUDGET (at least 1, at most `most`):
  64 for gptjax's presets, 5 for SmolLM2's 49,152-token vocabulary at T = 256
  (64 rows there are 3.2 GB of logits, and as much again for their softmax)."""
  return int(max(1, min(most, LOGITS_BUDGET // (seq_len * vocab_size * 4))))


def logprobs_of(
  model, params, tokens, token_mask, resp_mask, batch: int | None = None
) -> np.ndarray:
  """Summed response log-probs of every right-padded row: [..., T] arrays ->
  [...] float32. The rows are packed (`heads.pack_rows`: the small preset's
  comparisons fill ~30% of their width) and scored `batch` packed rows at a
  time (default `logprobs_batch`), the last batch padded
  (`sampling.padded_batches`): one compilation."""
  shape, T = tokens.shape[:-1], tokens.shape[-1]
  batch = batch or logprobs_batch(T, model.cfg.vocab_size)
  flat = [x.reshape(-1, T) for x in (tokens, token_mask, resp_mask)]
  n = len(flat[0])
  if not n:
    return np.zeros(shape, np.float32)
  packed = heads.pack_rows(flat[0], flat[1], T, response_mask=flat[2])
  keys = ("tokens", "token_mask", "positions", "segment_ids", "response_mask")
  R = len(packed["tokens"])
  per_token = np.zeros((R, T - 1), np.float32)
  for start, index in sampling.padded_batches(R, batch):
    k = min(batch, R - start)
    rows = {key: packed[key][index] for key in keys}
    per_token[start : start + k] = np.asarray(_token_logprobs_jit(model, params, rows))[:k]
  out = np.zeros(n, np.float64)
  np.add.at(out, packed["sequence"][:, 1:].ravel(), per_token.ravel())  # 0 off the responses
  return out.astype(np.float32).reshape(shape)


def dpo_arrays(
  comps: comp_lib.Comparisons, assistant_header: int | Sequence[int]
) -> dict[str, np.ndarray]:
  """The per-prompt arrays a DPO batch is cut from (without 'ref_logp')."""
  return {
    "tokens": comps.tokens,
    "token_mask": comps.token_mask,
    "response_mask": response_mask(comps.tokens, comps.token_mask, assistant_header),
    "rank": comps.rank if getattr(comps, "rank", None) is not None else ranks_of(comps.ranking),
  }


def with_reference(arrays: dict, ref_logp: np.ndarray) -> dict:
  return {**arrays, "ref_logp": ref_logp.astype(np.float32)}


def reference_logprobs(path: str, key: dict, compute) -> dict[str, np.ndarray]:
  """The reference's log-probs, computed once: loaded from `path` when stored
  with the same `key` (SFT run and step, data shapes), else computed and saved."""
  stamp = repr(sorted(key.items()))
  if os.path.exists(path):
    stored = np.load(path)
    if str(stored["key"]) == stamp:
      return {k: stored[k] for k in stored.files if k != "key"}
  out = compute()
  with files.atomic_path(path) as tmp:
    np.savez(tmp, key=np.array(stamp), **out)
  return out


# ----------------------------------------------------------------------------
# The stage.


def validate(config) -> None:
  config_lib.validate_train(config.train)
  d = config.dpo
  config_lib.require(d.loss in LOSSES, "dpo.loss", d.loss, f"one of {LOSSES}")
  config_lib.require(d.beta > 0, "dpo.beta", d.beta, "> 0")
  config_lib.require(
    0 <= d.label_smoothing < 0.5, "dpo.label_smoothing", d.label_smoothing, "[0, 0.5)"
  )
  config_lib.require(d.epochs > 0, "dpo.epochs", d.epochs, "> 0")
  config_lib.require(config.eval.n_boot > 0, "eval.n_boot", config.eval.n_boot, "> 0")


def resolve(config, sft: runs.LoadedRun, sft_dir: str, rm_dir: str, n_prompts: int):
  """The DPO config plus the SFT run's model and data sections (so the workdir
  is an LM run of its own) and the step count derived from dpo.epochs."""
  out = config_lib.copy(config)
  out.sft, out.reward_model = sft_dir, rm_dir
  out.model = config_lib.copy(sft.config.model)
  out.data = config_lib.copy(sft.config.data)
  out.train.steps = max(1, math.ceil(config.dpo.epochs * n_prompts / config.train.batch_size))
  out.train.ckpt_every = min(out.train.ckpt_every, out.train.steps)
  return out


def load_comparisons(rm_dir: str, log=print):
  """(train, held-out) comparisons of a reward-model workdir, with the RM's
  own prompt selection applied to the training split."""
  rm_config = config_lib.load(os.path.join(rm_dir, "config.json"))
  load = lambda split: rm_training.with_ranks(
    comp_lib.Comparisons.load(os.path.join(rm_dir, "comparisons", split)),
    os.path.join(rm_dir, "comparisons", split),
  ).trimmed()
  train_c, heldout = load("train"), load("heldout")
  if rm_config.rm.get("skip_tied_prompts", False):
    n = len(train_c)
    train_c = rm_training.labelled_informative(train_c)
    log(f"[dpo] the reward model's selection: {len(train_c):,} of {n:,} training prompts")
  return train_c, heldout


def build_task(config, model, train_arrays: dict, heldout_arrays: dict, init_params) -> train.Task:
  """The DPO loss over prompts (x K responses), warm-started from the SFT
  params, trained on packed rows (`comparisons.task_batches`); the held-out
  batches are scored as stored."""
  t, d = config.train, config.dpo
  B = t.batch_size
  take = lambda arrays, index: {k: v[index] for k, v in arrays.items()}
  train_batch, tokens_per_step = comp_lib.task_batches(config, train_arrays)

  def heldout_batches():
    n = (len(heldout_arrays["tokens"]) // B) * B  # whole batches (equal shards)
    for start in range(0, n, B):
      yield take(heldout_arrays, np.arange(start, start + B))

  return train.Task(
    name="dpo",
    model=model,
    loss_fn=dpo_loss_fn(model, d.beta, d.loss, d.label_smoothing),
    train_batch=train_batch,
    example_batch={"tokens": train_arrays["tokens"][:1, 0]},
    tokens_per_step=round(tokens_per_step),
    eval_sets={"heldout": heldout_batches},
    init_params=lambda rng: init_params,
  )


def run(config, workdir: str, sft_dir: str | None = None, rm_dir: str | None = None, log=print):
  """SFT policy + the RM's comparisons -> DPO -> evaluation. Returns eval.json's dict."""
  sft_dir, rm_dir = sft_dir or config.sft, rm_dir or config.reward_model
  if not sft_dir or not rm_dir:
    raise ValueError("DPO needs --sft=<SFT workdir> and --reward_model=<RM workdir>")
  sft_dir, rm_dir = os.path.abspath(sft_dir), os.path.abspath(rm_dir)

  def resolve_upstream(c):
    sft = runs.load_run(sft_dir)
    comps = load_comparisons(rm_dir, log)
    return resolve(c, sft, sft_dir, rm_dir, len(comps[0])), (sft, comps)

  with runs.prepare_stage(
    config, workdir, validate=validate, resolve=resolve_upstream, tokenizer_from=sft_dir
  ) as stage:
    sft, (train_c, heldout) = stage.upstream
    return _optimise(stage.config, stage.workdir, sft, train_c, heldout, log)


def _optimise(config, workdir: str, sft: runs.LoadedRun, train_c, heldout, log) -> dict:
  """Reference log-probs -> DPO on the shared loop -> evaluation -> eval.json."""
  header = sft.tokenizer.assistant_header
  arrays = {"train": dpo_arrays(train_c, header), "heldout": dpo_arrays(heldout, header)}
  ref = reference_logprobs(
    os.path.join(workdir, REFERENCE_FILE),
    {"sft": sft.workdir, "step": sft.step, **{k: a["tokens"].shape for k, a in arrays.items()}},
    lambda: {
      k: logprobs_of(sft.model, sft.params, *(a[r] for r in _ROW_KEYS)) for k, a in arrays.items()
    },
  )
  log(
    f"[dpo] {len(train_c):,} training prompts x {train_c.tokens.shape[1]} responses, "
    f"{int(preference_pairs(arrays['train']['rank']).sum()):,} preference pairs; "
    f"{config.train.steps} steps, beta {config.dpo.beta}, loss {config.dpo.loss}"
  )
  task = build_task(
    config,
    sft.model,
    with_reference(arrays["train"], ref["train"]),
    with_reference(arrays["heldout"], ref["heldout"]),
    # A copy: the train step donates its state, and on a CPU the initial state
    # can alias these buffers; the reference must survive for evaluation.
    jax.tree_util.tree_map(jnp.array, sft.params),
  )
  state, summary = train.run(config, workdir, task, log=log)

  result = evaluate(config, sft, state.params, log)
  r = config.dpo.beta * (
    logprobs_of(sft.model, state.params, *(arrays["heldout"][k] for k in _ROW_KEYS))
    - ref["heldout"]
  )  # [P, K] implicit rewards
  result["implicit_reward"] = {
    "accuracy_vs_labeler": rm_training.accuracy_vs_ranks(
      r, arrays["heldout"]["rank"], heldout.gold
    ),
    "accuracy_vs_gold": comp_lib.gold_accuracy(r, heldout.gold),
  }
  result.update(steps=summary["steps"], last_eval=summary.get("last_eval", {}))
  runs.write_json(os.path.join(workdir, "eval.json"), result)
  log(
    f"[dpo] implicit reward on held-out comparisons: accuracy "
    f"{result['implicit_reward']['accuracy_vs_labeler']:.3f} vs labeler, "
    f"{result['implicit_reward']['accuracy_vs_gold']:.3f} vs gold"
  )
  return result


_ROW_KEYS = ("tokens", "token_mask", "response_mask")


# ----------------------------------------------------------------------------
# Evaluation: the same held-out prompts and judge as the RLHF stage.


def win_tie_loss(a, b) -> np.ndarray:
  """[N, 3] indicators of a > b, a == b, a < b per prompt (the tolerance of
  `stats.win_rate`)."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  return np.stack([a > b + 1e-9, np.abs(a - b) <= 1e-9, a < b - 1e-9], 1).astype(float)


def win_summary(outcome: np.ndarray) -> dict:
  """`stats.win_rate`'s dict from per-prompt [N, 3] win/tie/loss probabilities
  (indicators give exactly `stats.win_rate`; expectations give expected counts)."""
  w = outcome[:, 0] + 0.5 * outcome[:, 1]
  p, n = float(w.mean()), len(w)
  half = 1.96 * math.sqrt(max(w.var(), 1e-12) / n)
  counts = outcome.sum(0)
  exact = np.allclose(counts, counts.round())
  c = [int(round(x)) if exact else round(float(x), 2) for x in counts]
  return {"win_rate": p, "ci95": [p - half, p + half], "n": n, **dict(zip(_WTL, c))}


_WTL = ("wins", "ties", "losses")


def versus_sft(name: str, sft_judgements, judgements, n_boot: int, seed=0, outcome=None) -> dict:
  """A method's oracle judgements against SFT's on the same prompts (paired by
  index): the keys of the RLHF stage's eval.json where they mean the same
  thing, with `name` in place of 'rlhf', plus the paired bootstrap.

  Judgements are `oracle.classify` dicts (or their expectations, see
  `best_of_n`); the summaries are `evaluation.summarize`'s. outcome: optional
  [N, 3] win/tie/loss probabilities per prompt (default: from the scores).
  "correct_vs_sft" is the paired bootstrap of the strict correct rate
  (method - SFT, the same resampled prompts): whether a win came with more
  correct answers or despite fewer, beyond the choice of prompts.
  """
  g_sft = np.array([j["score"] for j in sft_judgements])
  g = np.array([j["score"] for j in judgements])
  outcome = win_tie_loss(g, g_sft) if outcome is None else np.asarray(outcome, float)
  wins = outcome[:, 0] + 0.5 * outcome[:, 1]
  families = np.array([j["family"] for j in sft_judgements])
  boot = stats.paired_bootstrap(g, g_sft, n_boot, seed, wins=wins)
  correct = stats.paired_bootstrap(
    [float(j["correct"]) for j in judgements], [float(j["correct"]) for j in sft_judgements],
    n_boot, seed,
  )  # fmt: skip
  summaries = {"sft": evaluation.summarize(sft_judgements), name: evaluation.summarize(judgements)}
  win = win_summary(outcome)
  return {
    "method": name,
    "win_rate_vs_sft": win,
    "bootstrap_vs_sft": {**boot, **{k: win[k] for k in _WTL}},
    "correct_vs_sft": {k: correct[k] for k in ("mean_diff", "mean_diff_ci95", "n", "n_boot")},
    "win_rate_vs_sft_per_family": {
      f: float(wins[families == f].mean()) for f in sorted(set(families))
    },
    "gold_mean": {"sft": float(g_sft.mean()), name: float(g.mean())},
    **{k: {kk: v for kk, v in s.items() if kk != "families"} for k, s in summaries.items()},
    "families": {
      f: {k: s["families"][f]["score"] for k, s in summaries.items()}
      for f in summaries["sft"]["families"]
    },
    "families_detail": {k: s["families"] for k, s in summaries.items()},
  }


def sample(policy: runs.LoadedRun, prompts: list[str], n: int, cfg, seed: int, stop_check=None):
  """n answers per prompt at temperature 1 (the pure distribution), at most
  cfg.max_new_tokens each, in batches of cfg.batch_size rows. Returns
  `comparisons.sample_responses`'s (prompt ids, response ids, texts)."""
  settings = comp_lib.ComparisonSettings(
    k=n,
    max_new_tokens=cfg.max_new_tokens,
    labeler_noise=None,  # unused: nothing is labelled
    target_agreement=labeler.TARGET_AGREEMENT,
    batch_size=cfg.batch_size,
  )
  return comp_lib.sample_responses(
    policy, prompts, settings, rng=jax.random.PRNGKey(seed), stop_check=stop_check
  )


def sampled_kl_and_gold(sft: runs.LoadedRun, policy_params, world, examples, cfg, seed) -> dict:
  """Per-response KL(policy || SFT) and gold of T = 1 samples: `cfg.kl_samples`
  samples per prompt from the policy; KL estimated by the mean of
  log pi(y|x) - log ref(y|x) over samples (unbiased, per response)."""
  policy = dataclasses.replace(sft, params=policy_params)
  prompts = [e.prompt for e in examples]
  prompt_ids, resp, texts = sample(policy, prompts, cfg.kl_samples, cfg, seed)
  tokens, mask = comp_lib.pack_sequences(
    prompt_ids, resp, sft.model.cfg.max_len, sft.tokenizer.pad_id
  )
  rows = (tokens, mask, response_mask(tokens, mask, sft.tokenizer.assistant_header))
  log_ratio = logprobs_of(sft.model, policy_params, *rows) - logprobs_of(
    sft.model, sft.params, *rows
  )  # [P, S]
  gold = [[oracle.gold_score(p, t, world) for t in ts] for p, ts in zip(prompts, texts)]
  return {
    "kl_to_sft": float(log_ratio.mean()),
    "kl_to_sft_stderr": float(log_ratio.std() / math.sqrt(log_ratio.size)),
    "gold_mean_t1": float(np.mean(gold)),
    "n_samples": int(log_ratio.size),
  }


def evaluate(config, sft: runs.LoadedRun, params, log=print, name: str = "dpo") -> dict:
  """Greedy answers of SFT and a policy (DPO's, or any other on SFT's
  architecture, e.g. curated SFT) to the held-out prompts, judged by the
  oracle (the primary metric), plus KL to SFT and gold of T = 1 samples
  (secondary). config: needs eval (with n_boot, kl_samples) and seed."""
  world = runs.world_of(sft.config)
  ev = evaluation.Evaluator(
    sft.model, sft.tokenizer, world, config.eval, families=runs.families_of(sft.config)
  )
  params = sharding.local_copy(params)  # off the mesh
  j_sft, _ = ev.judgements(sft.params, "chat")
  j_dpo, texts = ev.judgements(params, "chat")
  result = versus_sft(name, j_sft, j_dpo, config.eval.n_boot, config.seed)
  result["samples"] = {
    e.family: {"prompt": e.prompt, "answer": t.strip(), "gold": e.response}
    for e, t in reversed(list(zip(ev.examples, texts)))  # the first per family wins
  }
  result["sampled"] = sampled_kl_and_gold(sft, params, world, ev.examples, config.eval, config.seed)
  b, s = result["bootstrap_vs_sft"], result["sampled"]
  log(
    f"[{name}] win rate vs SFT {b['win_rate']:.3f} [{b['win_rate_ci95'][0]:.3f}, "
    f"{b['win_rate_ci95'][1]:.3f}] (W/T/L {b['wins']}/{b['ties']}/{b['losses']}, n={b['n']}); "
    f"gold {b['mean_b']:.3f} -> {b['mean_a']:.3f}; KL to SFT {s['kl_to_sft']:.2f} nats; "
    f"T=1 gold {s['gold_mean_t1']:.3f}"
  )
  return result
