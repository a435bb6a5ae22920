"""Where a policy's competence lies: pass@k under the oracle, and which
examples fit a token budget.

RLHF can only turn what a policy sometimes does into what it usually does, so
the gap between pass@1 and pass@k of the SFT policy, per family and level, is
the room RLHF has (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", give the unbiased estimator used here).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from gptjax.tasks import oracle
from gptjax.tasks.instructions import Example
from gptjax.tasks.world import World


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k).

  Raises:
    ValueError: unless 0 <= c <= n and 1 <= k <= n.
  """
  if not (0 <= c <= n and 1 <= k <= n):
    raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_table(
  prompts: Sequence[str],
  samples: Sequence[Sequence[str]],
  world: World,
  ks: Sequence[int] = (1, 16),
) -> dict[str, dict]:
  """pass@k under the oracle ('passes' = strictly correct, `Judgement.correct`)
  per family and level, per family and over all prompts.

  Args:
    prompts: [P] task prompts.
    samples: [P][n] sampled responses per prompt (n >= max(ks)).
    world: the world the prompts are about.
    ks: the k's to report.

  Returns:
    {'family/level' | 'family' | 'all': {'n_prompts', 'pass@k' for each k,
    'mean_score' (mean gold over all samples), 'best_score' (mean over
    prompts of the best sample's gold)}}, keys sorted.
  """
  if len(prompts) != len(samples):
    raise ValueError(f"{len(prompts)} prompts but {len(samples)} sample lists")
  rows: dict[str, list[dict]] = {}
  for prompt, texts in zip(prompts, samples):
    if len(texts) < max(ks):
      raise ValueError(f"pass@{max(ks)} needs >= {max(ks)} samples per prompt, got {len(texts)}")
    judgements = [oracle.judge(prompt, t, world) for t in texts]
    c = sum(j.correct for j in judgements)
    scores = [j.score for j in judgements]
    row = {f"pass@{k}": pass_at_k(len(texts), c, k) for k in ks}
    row.update(mean_score=float(np.mean(scores)), best_score=max(scores))
    j = judgements[0]
    for key in (f"{j.family}/{j.level}", j.family, "all"):
      rows.setdefault(key, []).append(row)
  return {
    key: {"n_prompts": len(rs), **{m: float(np.mean([r[m] for r in rs])) for m in rs[0]}}
    for key, rs in sorted(rows.items())
  }


def format_pass_at_k(table: dict[str, dict]) -> str:
  """A text table of `pass_at_k_table`'s result."""
  metrics = [m for m in next(iter(table.values())) if m != "n_prompts"]
  lines = [f"{'family/level':<20}{'n':>5}" + "".join(f"{m:>12}" for m in metrics)]
  for key, row in table.items():
    cells = "".join(f"{row[m]:>12.3f}" for m in metrics)
    lines.append(f"{key:<20}{row['n_prompts']:>5}{cells}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------
# Token budgets.


def chat_length(tokenizer, system: str = "") -> Callable[[Example], int]:
  """Tokens of an example as one chat conversation (bos, optional system
  turn, user turn, assistant turn with its <|end_turn|>): what SFT packs."""

  def length(example: Example) -> int:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [
      {"role": "user", "content": example.prompt},
      {"role": "assistant", "content": example.response},
    ]
    return len(tokenizer.encode_chat(messages))

  return length


def fit_budget(
  examples: Sequence[Example], length: Callable[[Example], int], budget: int
) -> tuple[list[Example], list[Example]]:
  """(kept, dropped): the examples whose `length` is at most `budget`, in
  order, and the others (so a stage can count and report its drops)."""
  kept, dropped = [], []
  for e in examples:
    (kept if length(e) <= budget else dropped).append(e)
  return kept, dropped


def length_report(
  examples: Sequence[Example], length: Callable[[Example], int], budget: int | None = None
) -> dict[str, dict]:
  """Per family: n, mean / p50 / p95 / max length (and, with a budget, how
  many exceed it)."""
  by_family: dict[str, list[int]] = {}
  for e in examples:
    by_family.setdefault(e.family, []).append(length(e))
  out = {}
  for family, ls in by_family.items():
    a = np.asarray(ls)
    row = {
      "n": len(a),
      "mean": float(a.mean()),
      "p50": float(np.percentile(a, 50)),
      "p95": float(np.percentile(a, 95)),
      "max": int(a.max()),
    }
    if budget is not None:
      row["over_budget"] = int((a > budget).sum())
    out[family] = row
  return out
