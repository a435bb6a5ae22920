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
import os

import jax
import numpy as np

from gptjax import metrics, sampling
from gptjax.tasks import instructions, labeler, oracle
from gptjax.tasks.world import World
from gptjax.tokenizer import Tokenizer


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
    T = self.tokens.shape[-1]
    longest = int(self.token_mask.sum(-1).max(initial=1))
    keep = min(T, -(-longest // multiple) * multiple)
    return dataclasses.replace(
      self, tokens=self.tokens[..., :keep], token_mask=self.token_mask[..., :keep]
    )

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, "comparisons.tmp.npz")
    np.savez_compressed(
      tmp, tokens=self.tokens, token_mask=self.token_mask, ranking=self.ranking, gold=self.gold
    )
    with open(os.path.join(directory, "comparisons.jsonl.tmp"), "w") as f:
      for p, r, fam, rk, g in zip(
        self.prompts, self.responses, self.families, self.ranking, self.gold
      ):
        f.write(
          json.dumps(
            {"prompt": p, "family": fam, "responses": r, "ranking": rk.tolist(), "gold": g.tolist()}
          )
          + "\n"
        )
    os.replace(
      os.path.join(directory, "comparisons.jsonl.tmp"), os.path.join(directory, "comparisons.jsonl")
    )
    os.replace(tmp, os.path.join(directory, "comparisons.npz"))  # last: marks completion

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


def chat_prompt_ids(tokenizer: Tokenizer, prompt: str, system: str = "") -> list[int]:
  """A user turn rendered with the chat template, ending with <|assistant|>."""
  messages = ([{"role": "system", "content": system}] if system else []) + [
    {"role": "user", "content": prompt}
  ]
  return tokenizer.encode_chat(messages, add_generation_prompt=True)


def sample_responses(
  model,
  params,
  tokenizer: Tokenizer,
  prompts: list[str],
  k: int,
  *,
  max_new_tokens: int,
  rng,
  batch_size: int = 64,
  system: str = "",
  sampling_params=sampling.SamplingParams(),
  log=None,
):
  """K samples per prompt from the pure distribution (temperature 1 by default).

  Returns (prompt_ids [P] lists, responses [P][K] token lists incl. the stop
  token if emitted, texts [P][K]). `log` gets a progress line about every 10%.
  """
  prompt_ids = [chat_prompt_ids(tokenizer, p, system) for p in prompts]
  flat = [ids for ids in prompt_ids for _ in range(k)]  # prompt i -> rows i*k..i*k+k-1
  tokens, texts = [], []
  progress = metrics.CountProgress(len(flat), log, label="[comparisons] sampled ")
  for start in range(0, len(flat), batch_size):
    progress.update(start)
    chunk = flat[start : start + batch_size]
    gen = sampling.generate(
      model,
      params,
      chunk,
      max_new_tokens=max_new_tokens,
      rng=jax.random.fold_in(rng, start),
      eos_id=tokenizer.end_turn_id,
      pad_id=tokenizer.pad_id,
      sampling=sampling_params,
      truncate="left",
    )
    for row, m in zip(gen.tokens, gen.mask):
      ids = [int(t) for t in row[m]]
      tokens.append(ids)
      texts.append(tokenizer.decode([t for t in ids if t != tokenizer.end_turn_id]))
  progress.update(len(flat))
  group = lambda xs: [xs[i * k : (i + 1) * k] for i in range(len(prompts))]
  return prompt_ids, group(tokens), group(texts)


def pack_sequences(prompt_ids, responses, max_len: int, pad_id: int):
  """prompt + response per (prompt, k), right-padded to max_len (prompt cut from the left
  if needed). Returns tokens [P, K, T], mask [P, K, T]."""
  P, K = len(responses), len(responses[0])
  tokens = np.full((P, K, max_len), pad_id, np.int32)
  mask = np.zeros((P, K, max_len), bool)
  for i in range(P):
    for j in range(K):
      seq = (list(prompt_ids[i]) + list(responses[i][j]))[-max_len:]
      tokens[i, j, : len(seq)] = seq
      mask[i, j, : len(seq)] = True
  return tokens, mask


def make_comparisons(
  model,
  params,
  tokenizer: Tokenizer,
  world: World,
  examples: list[instructions.Example],
  *,
  k: int,
  max_new_tokens: int,
  labeler_noise: float | None,
  target_agreement: float,
  seed: int,
  batch_size: int = 64,
  log=print,
) -> tuple[Comparisons, dict]:
  """Samples, scores and ranks. `labeler_noise=None` calibrates it on these samples.

  Returns the comparisons and a report {'labeler_noise', 'labeler_agreement' (measured
  against gold on pairs with different gold scores), 'mean_gold', ...}.
  """
  prompts = [e.prompt for e in examples]
  prompt_ids, resp_ids, texts = sample_responses(
    model,
    params,
    tokenizer,
    prompts,
    k,
    max_new_tokens=max_new_tokens,
    rng=jax.random.PRNGKey(seed),
    batch_size=batch_size,
    log=log,
  )
  gold = np.array(
    [[oracle.gold_score(p, t, world) for t in ts] for p, ts in zip(prompts, texts)], np.float32
  )  # [P, K]
  if labeler_noise is None:
    labeler_noise = labeler.calibrate_noise(target_agreement, gold)
  ranking = labeler.rank_batch(gold, np.random.default_rng(seed), labeler_noise)
  ranking = np.asarray(ranking, np.int32)
  tokens, mask = pack_sequences(prompt_ids, resp_ids, model.cfg.max_len, tokenizer.pad_id)
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
