"""Comparison data for the reward model: K sampled answers per prompt, ranked.

For each instruction prompt the SFT policy samples K responses (temperature
1, the shared sampler); the oracle scores them; the labeler ranks them with
noise calibrated so that its pairwise agreement with the gold order matches
`labeler_agreement` (InstructGPT's inter-labeler agreement was ~73%). The
reward model learns from the rankings alone; gold scores are kept only for
evaluation.

Stored as `comparisons.npz` (token arrays, rankings, gold scores) and
`comparisons.jsonl` (the texts, one prompt per line) so later runs reuse them.
"""

import dataclasses
import json
import math
import os

import jax
import numpy as np

from gptjax import files, heads, metrics, runs, sampling, sft as sft_lib, sharding
from gptjax.evaluation import chat_prompt_ids
from gptjax.tasks import instructions, labeler, oracle
from gptjax.tasks.world import World


@dataclasses.dataclass(frozen=True)
class ComparisonSettings:
  """How comparisons are sampled and labelled (config.comparisons, resolved)."""

  k: int  # responses per prompt
  max_new_tokens: int
  labeler_noise: float | None  # None: calibrate it to `target_agreement` on the samples
  target_agreement: float  # the labeler's pairwise agreement with the gold order
  batch_size: int = 64  # rows per sampling batch
  system: str = ""  # system message of the chat prompts ('' = none)
  sampling_params: sampling.SamplingParams = sampling.SamplingParams()  # the pure distribution

  @classmethod
  def from_config(cls, c, labeler_noise: float | None) -> "ComparisonSettings":
    """From config.comparisons (k, max_new_tokens, labeler_agreement, sample_batch)."""
    return cls(
      k=c.k,
      max_new_tokens=c.max_new_tokens,
      labeler_noise=labeler_noise,
      target_agreement=c.labeler_agreement,
      batch_size=c.sample_batch,
    )


@dataclasses.dataclass
class Comparisons:
  tokens: np.ndarray  # [P, K, T] int32: chat prompt + response (+ end_turn), right-padded
  token_mask: np.ndarray  # [P, K, T] bool
  ranking: np.ndarray  # [P, K] int32: the labeler's order, best first
  gold: np.ndarray  # [P, K] float32: oracle scores (evaluation only)
  prompts: list  # [P] str
  responses: list  # [P][K] str
  families: list  # [P] str

  def __len__(self):
    return len(self.prompts)

  def subset(self, index) -> "Comparisons":
    index = np.asarray(index)
    pick = lambda xs: [xs[i] for i in index]
    return Comparisons(
      self.tokens[index],
      self.token_mask[index],
      self.ranking[index],
      self.gold[index],
      pick(self.prompts),
      pick(self.responses),
      pick(self.families),
    )

  def trimmed(self, multiple: int = 16) -> "Comparisons":
    """The same comparisons with the time axis cut to the longest sequence,
    rounded up to `multiple` (never beyond the stored length).

    Right padding is causally invisible and the score is read at the last
    real token, so scores are unchanged; the saving is large because samples
    are much shorter than the context (small preset: 74 of 256 tokens).
    """
    longest = int(self.token_mask.sum(-1).max(initial=1))
    keep = sampling.bucketed(longest, multiple, self.tokens.shape[-1])
    return dataclasses.replace(
      self, tokens=self.tokens[..., :keep], token_mask=self.token_mask[..., :keep]
    )

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    rows = zip(self.prompts, self.responses, self.families, self.ranking, self.gold)
    files.write_text(
      os.path.join(directory, "comparisons.jsonl"),
      "".join(
        json.dumps(
          {"prompt": p, "family": f, "responses": r, "ranking": k.tolist(), "gold": g.tolist()}
        )
        + "\n"
        for p, r, f, k, g in rows
      ),
    )
    # comparisons.npz last: its presence marks a complete save
    with files.atomic_path(os.path.join(directory, "comparisons.npz")) as tmp:
      np.savez_compressed(
        tmp, tokens=self.tokens, token_mask=self.token_mask, ranking=self.ranking, gold=self.gold
      )

  @classmethod
  def load(cls, directory: str) -> "Comparisons":
    path = os.path.join(directory, "comparisons.npz")
    if not os.path.exists(path):
      raise FileNotFoundError(f"No comparisons in {directory} (expected comparisons.npz)")
    arrays = np.load(path)
    with open(os.path.join(directory, "comparisons.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    out = cls(
      arrays["tokens"],
      arrays["token_mask"],
      arrays["ranking"],
      arrays["gold"],
      [r["prompt"] for r in rows],
      [r["responses"] for r in rows],
      [r["family"] for r in rows],
    )
    for rk in out.ranking:
      labeler.validate_ranking(rk, out.ranking.shape[1])
    return out

  @staticmethod
  def exists(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, "comparisons.npz"))


def sample_responses(
  policy: runs.LoadedRun,
  prompts: list[str],
  settings: ComparisonSettings,
  *,
  rng,
  log=None,
  stop_check=None,
):
  """K samples per prompt from `policy` (its model, params and tokenizer).

  Returns (prompt_ids [P] lists, responses [P][K] token lists incl. the stop
  token if emitted, texts [P][K] without it). `log` gets a progress line about
  every 10%; `stop_check` (e.g. `train.check_stop`) runs after every batch, so
  a stop signal ends a long sampling phase within a batch.
  """
  tok, k = policy.tokenizer, settings.k
  prompt_ids = [chat_prompt_ids(tok, p, settings.system) for p in prompts]
  flat = [ids for ids in prompt_ids for _ in range(k)]  # prompt i -> rows i*k..i*k+k-1
  progress = metrics.CountProgress(len(flat), log, label="[comparisons] sampled ")
  gen = sampling.generate_batched(
    policy.model,
    policy.params,
    flat,
    batch_size=settings.batch_size,
    max_new_tokens=settings.max_new_tokens,
    rng=rng,
    eos_id=tok.end_turn_id,
    pad_id=tok.pad_id,
    sampling=settings.sampling_params,
    truncate="left",
    progress=lambda done: (progress.update(done), stop_check and stop_check()),
  )
  group = lambda xs: [xs[i * k : (i + 1) * k] for i in range(len(prompts))]
  return prompt_ids, group(gen.response_ids()), group(gen.texts(tok))


def prompt_batches(arrays: dict, batch_size: int, seed: int, multiple: int = 16):
  """A Task's batches of prompts (x K responses) from per-prompt arrays ([P, K, T]
  sequences, [P, K] labels): batch `step` holds prompts `sft.batch_rows(step)`.

  Its [B, K, T] arrays are cut after the batch's longest sequence, rounded up
  to `multiple` (`sampling.bucketed`): right padding is causally invisible and
  the losses read real positions only (the score at the last real token, DPO's
  masked sums), so the loss is the full width's while the step computes on the
  batch's real width (small preset: mean sequence 33 tokens, stored 112,
  batches of 16 prompts x 8 ~73 wide), in a few compiled shapes. The width
  comes from the whole batch, so every process's rows of it agree.

  Returns (train_batch(step), local_batch(step, rows), mean width over an
  epoch's batches: the tokens a step computes on, for tokens/s).
  """
  tokens, mask = arrays["tokens"], arrays["token_mask"]
  P, T = tokens.shape[0], tokens.shape[-1]
  order = lambda step: sft_lib.batch_rows(step, batch_size, P, seed)  # [B]
  width = lambda index: sampling.bucketed(int(mask[index].sum(-1).max(initial=1)), multiple, T)

  def take(index, keep: int) -> dict:
    return {k: v[index][..., :keep] if v.ndim == 3 else v[index] for k, v in arrays.items()}

  epoch = range(max(1, P // batch_size))
  return (
    lambda step: take(order(step), width(order(step))),
    lambda step, rows: take(order(step)[rows], width(order(step))),
    float(np.mean([width(order(s)) for s in epoch])),
  )


def packed_prompt_batches(
  arrays: dict, batch_size: int, seed: int, *, groups: int = 1, row_multiple: int = 8
):
  """`prompt_batches`' batches (the same prompts step by step) with their B x K
  sequences packed into rows of the stored width (`heads.pack_rows`, in
  `groups` equal groups: the train step's micro-batches), which the losses
  read back per sequence ('last': the reward model's score; 'sequence': DPO's
  sums). A batch then computes on about its real tokens: the small preset's
  16 prompts x 8 answers are 128 x 33 real tokens, 73 columns wide cut to the
  batch's longest (`prompt_batches`), ~38 rows of 112 packed.

  arrays: [P, K, T] 'tokens', 'token_mask' and any other per-token arrays
  (packed alike), and [P, K] labels. Every array a batch returns is the
  whole global batch (rows [groups * R, T], labels [B, K]: no `local_batch`;
  `sharding.shard_batch` keeps each process's rows of each). Returns
  (train_batch(step), the mean tokens a step computes on over an epoch,
  padding included: for tokens/s).
  """
  P, K, T = arrays["tokens"].shape
  flat = lambda v, index: v[index].reshape(-1, T)
  other = [k for k, v in arrays.items() if v.shape[:2] != (P, K) or v.ndim not in (2, 3)]
  if other:
    raise ValueError(f"packed batches take [P, K, T] and [P, K] arrays; {other} are neither")

  def batch(step: int) -> dict:
    index = sft_lib.batch_rows(step, batch_size, P, seed)  # [B]
    per_token = {k: flat(v, index) for k, v in arrays.items() if v.ndim == 3}
    packed = heads.pack_rows(
      per_token.pop("tokens"),
      per_token.pop("token_mask"),
      T,
      groups=groups,
      row_multiple=row_multiple,
      **per_token,
    )
    labels = {k: v[index] for k, v in arrays.items() if v.ndim == 2}
    return {**packed, "last": packed["last"].reshape(batch_size, K), **labels}

  epoch = range(max(1, P // batch_size))
  return batch, float(np.mean([batch(s)["tokens"].size for s in epoch]))


def task_batches(config, arrays: dict):
  """`packed_prompt_batches` for a train Task of `config`: groups = its
  micro-batches (train.grad_accum), rows a multiple of 8 and of the batch
  shards (data x fsdp of config.mesh)."""
  data, fsdp, _ = sharding.mesh_shape(config.mesh, len(sharding.mesh_devices(config.mesh)))
  return packed_prompt_batches(
    arrays,
    config.train.batch_size,
    config.seed,
    groups=config.train.grad_accum,
    row_multiple=math.lcm(8, data * fsdp),
  )


def pack_sequences(prompt_ids, responses, max_len: int, pad_id: int, multiple: int = 16):
  """prompt + response per (prompt, k), right-padded to the longest sequence
  rounded up to `multiple`, at most max_len (a prompt cut from the left if
  needed): right padding is causally invisible, so the programs that score
  these rows compute on their real width. Returns tokens [P, K, T], mask [P, K, T]."""
  P, K = len(responses), len(responses[0])
  seqs = [[(list(prompt_ids[i]) + list(r))[-max_len:] for r in responses[i]] for i in range(P)]
  T = sampling.bucketed(max(len(q) for row in seqs for q in row), multiple, max_len)
  tokens = np.full((P, K, T), pad_id, np.int32)
  mask = np.zeros((P, K, T), bool)
  for i in range(P):
    for j in range(K):
      seq = seqs[i][j]
      tokens[i, j, : len(seq)] = seq
      mask[i, j, : len(seq)] = True
  return tokens, mask


def make_comparisons(
  policy: runs.LoadedRun,
  world: World,
  examples: list[instructions.Example],
  settings: ComparisonSettings,
  *,
  seed: int,
  log=print,
  stop_check=None,
) -> tuple[Comparisons, dict]:
  """Samples, scores and ranks. `settings.labeler_noise=None` calibrates it on these samples.

  Returns the comparisons and a report {'labeler_noise', 'labeler_agreement' (measured
  against gold on pairs with different gold scores), 'mean_gold', ...}.
  """
  prompts, k = [e.prompt for e in examples], settings.k
  prompt_ids, resp_ids, texts = sample_responses(
    policy, prompts, settings, rng=jax.random.PRNGKey(seed), log=log, stop_check=stop_check
  )
  gold = np.array(
    [[oracle.gold_score(p, t, world) for t in ts] for p, ts in zip(prompts, texts)], np.float32
  )  # [P, K]
  labeler_noise = settings.labeler_noise
  if labeler_noise is None:
    # The noise is calibrated on the policy's own score gaps; a policy whose
    # samples all tie (e.g. an undertrained one) has none, and then the noise
    # orders nothing: calibrate on the synthetic candidates instead, and say so.
    sample = gold
    if np.ptp(gold, axis=1).max(initial=0.0) <= 0:
      log(
        "[comparisons] every prompt's samples tie in gold score: labeler noise calibrated "
        "on synthetic candidates"
      )
      sample = labeler.synthetic_score_sample(world, n=400, k=k, seed=seed)
    labeler_noise = labeler.calibrate_noise(settings.target_agreement, sample)
  ranking = labeler.rank_batch(gold, np.random.default_rng(seed), labeler_noise)
  ranking = np.asarray(ranking, np.int32)
  tokens, mask = pack_sequences(
    prompt_ids, resp_ids, policy.model.cfg.max_len, policy.tokenizer.pad_id
  )
  comps = Comparisons(tokens, mask, ranking, gold, prompts, texts, [e.family for e in examples])
  report = {
    "labeler_noise": float(labeler_noise),
    "labeler_agreement": float(labeler.pairwise_agreement(ranking, gold)),
    "mean_gold": float(gold.mean()),
    "tied_pair_fraction": tied_fraction(gold),
    "n_prompts": len(prompts),
    "k": k,
  }
  log(
    f"[comparisons] {len(prompts)} prompts x {k}: labeler agreement with gold "
    f"{report['labeler_agreement']:.3f} (noise {labeler_noise:.3f}), mean gold "
    f"{report['mean_gold']:.3f}, tied pairs {report['tied_pair_fraction']:.2f}"
  )
  return comps, report


def tied_fraction(gold: np.ndarray) -> float:
  """Fraction of pairs within a prompt whose gold scores are equal (uninformative)."""
  K = gold.shape[1]
  iu = np.triu_indices(K, 1)
  diffs = (gold[:, :, None] - gold[:, None, :])[:, iu[0], iu[1]]
  return float(np.mean(np.abs(diffs) < 1e-9))


def pairwise_accuracy(
  scores: np.ndarray, ranking: np.ndarray, gold: np.ndarray | None = None
) -> float:
  """Fraction of pairs (better, worse) in `ranking` that `scores` [P, K] order correctly.

  With `gold`, only pairs whose gold scores differ count: the labeler breaks
  gold ties at random, and agreeing with a coin flip measures nothing.
  """
  K = scores.shape[1]
  correct = total = 0
  for p, (s, rk) in enumerate(zip(scores, ranking)):
    for i in range(K):
      for j in range(i + 1, K):
        if gold is not None and abs(gold[p, rk[i]] - gold[p, rk[j]]) < 1e-9:
          continue
        correct += s[rk[i]] > s[rk[j]]
        total += 1
  return correct / total if total else float("nan")


def gold_accuracy(scores: np.ndarray, gold: np.ndarray) -> float:
  """Pairwise accuracy against the gold order, on pairs with different gold scores."""
  diff_gold = gold[:, :, None] - gold[:, None, :]
  diff_pred = scores[:, :, None] - scores[:, None, :]
  informative = diff_gold > 1e-9
  n = informative.sum()
  return float(((diff_pred > 0) & informative).sum() / n) if n else float("nan")
