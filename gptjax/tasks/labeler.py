"""A simulated human labeler: ranks K responses by gold score, with noise.

The labeler perturbs each gold score with independent noise of scale `noise`
and sorts, best first (ties broken at random). With Gumbel noise this is the
Plackett-Luce model with logits score / noise, so the chance that it orders a
pair correctly is exactly sigmoid(|s_i - s_j| / noise): the Bradley-Terry
model that the reward model's ranking loss assumes. `calibrate_noise` picks
the scale whose expected pairwise agreement with the gold order equals the
~73% inter-labeler agreement InstructGPT reported.

Ties (`label`, `label_batch`). A labeler may also say "tie": responses of
equal gold quality look alike to it (two different wrong answers are both
wrong), so it perceives one noisy score per distinct gold value, and it ties
responses whose perceived scores lie within `tie_margin` of each other
(grouped along the sorted perceptions, so ties are transitive: a weak
order, written as ranks with equal values for tied responses). Its
agreement is counted on the pairs it does order and whose gold differs;
`calibrate_noise(..., tie_margin=m)` keeps that at the target (~73%).

The reward model learns only from these rankings; the oracle's scores are
never shown to it.
"""

from __future__ import annotations

import math
import random
import re
from typing import Sequence

import numpy as np

from gptjax.tasks.instructions import ENGLISH_WORDS, REFUSAL, Example, make_mixture
from gptjax.tasks.oracle import gold_score
from gptjax.tasks.world import RELATIONS, World, make_world

NOISE_KINDS = ("gumbel", "gaussian")
TARGET_AGREEMENT = 0.73


def validate_ranking(ranking: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
  """Checks that `ranking` is a permutation of 0..k-1; returns it as ints.

  Raises:
    ValueError: naming the problem (shape, length, range, duplicate, missing).
  """
  r = np.asarray(ranking)
  if r.ndim != 1:
    raise ValueError(f"ranking must be 1-D, got shape {r.shape}")
  if r.size and not np.issubdtype(r.dtype, np.integer):
    raise ValueError(f"ranking must hold integers, got dtype {r.dtype}")
  if len(r) != k:
    raise ValueError(f"ranking has {len(r)} entries, expected k={k}: {r.tolist()}")
  bad = [int(i) for i in r if not 0 <= i < k]
  if bad:
    raise ValueError(f"ranking index {bad[0]} out of range [0, {k}): {r.tolist()}")
  values, counts = np.unique(r, return_counts=True)
  if (counts > 1).any():
    dup = int(values[counts > 1][0])
    missing = sorted(set(range(k)) - set(values.tolist()))
    raise ValueError(f"ranking has duplicate index {dup} (missing {missing}): {r.tolist()}")
  return r.astype(np.int64)


def _noise(rng: np.random.Generator, shape, kind: str) -> np.ndarray:
  if kind == "gumbel":
    return rng.gumbel(size=shape)
  if kind == "gaussian":
    return rng.normal(size=shape)
  raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")


def rank(
  scores: np.ndarray, rng: np.random.Generator, noise: float, kind: str = "gumbel"
) -> np.ndarray:
  """Ranks K responses by noisy score.

  Args:
    scores: [K] gold scores.
    rng: numpy Generator.
    noise: noise scale (0 = the gold order, ties broken at random).
    kind: 'gumbel' (Plackett-Luce) or 'gaussian' (Thurstone).

  Returns:
    [K] int permutation: indices of the responses, best first.
  """
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 1:
    raise ValueError(f"scores must be 1-D [K], got shape {scores.shape}")
  if noise < 0:
    raise ValueError(f"noise must be >= 0, got {noise}")
  noisy = scores + noise * _noise(rng, scores.shape, kind)
  tiebreak = rng.random(scores.shape)
  return np.lexsort((tiebreak, -noisy))  # primary key: -noisy


def rank_batch(
  scores: np.ndarray, rng: np.random.Generator, noise: float, kind: str = "gumbel"
) -> np.ndarray:
  """`rank` for each row of [N, K] scores -> [N, K] rankings."""
  return np.stack([rank(s, rng, noise, kind) for s in np.asarray(scores)])


def label(
  scores: np.ndarray,
  rng: np.random.Generator,
  noise: float,
  tie_margin: float = 0.0,
  kind: str = "gumbel",
) -> np.ndarray:
  """The labeler's judgement of K responses, ties allowed.

  Args:
    scores: [K] gold scores.
    rng: numpy Generator.
    noise: noise scale of the perception (0 = the gold order).
    tie_margin: perceived gaps at most this wide are ties (0: only equal gold).
    kind: 'gumbel' or 'gaussian'.

  Returns:
    [K] int ranks, 0 = best; tied responses share a rank (dense: 0, 1, 2 ...).
  """
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 1:
    raise ValueError(f"scores must be 1-D [K], got shape {scores.shape}")
  if noise < 0 or tie_margin < 0:
    raise ValueError(f"noise and tie_margin must be >= 0, got {noise}, {tie_margin}")
  values, inverse = np.unique(scores, return_inverse=True)  # one perception per gold value
  perceived = values + noise * _noise(rng, values.shape, kind)
  order = np.argsort(-perceived, kind="stable")  # best first
  gaps = -np.diff(perceived[order])  # >= 0
  group = np.concatenate([[0], np.cumsum(gaps > tie_margin)])
  rank_of_value = np.empty(len(values), np.int64)
  rank_of_value[order] = group
  return rank_of_value[inverse.ravel()]


def label_batch(
  scores: np.ndarray,
  rng: np.random.Generator,
  noise: float,
  tie_margin: float = 0.0,
  kind: str = "gumbel",
) -> np.ndarray:
  """`label` for each row of [N, K] scores -> [N, K] ranks."""
  return np.stack([label(s, rng, noise, tie_margin, kind) for s in np.asarray(scores)])


def ranking_of(ranks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """[N, K] ranks (ties equal) -> [N, K] permutations, best first, tied
  responses in random order (the form `Comparisons.ranking` stores)."""
  ranks = np.atleast_2d(ranks)
  tiebreak = rng.random(ranks.shape)
  return np.stack([np.lexsort((t, r)) for r, t in zip(ranks, tiebreak)]).astype(np.int32)


def tie_statistics(ranks: np.ndarray, scores: np.ndarray) -> dict:
  """How a labeler with ties judged [N, K] responses against their gold scores.

  Returns {'agreement' (on pairs with different gold that it ordered),
  'informative_pairs' (pairs it ordered), 'pairs', 'tied_gold_differs'
  (share of pairs with different gold that it tied), 'tied_gold_equal'
  (share of gold-equal pairs it tied)}.
  """
  ranks, scores = np.atleast_2d(ranks), np.atleast_2d(scores)
  if ranks.shape != scores.shape:
    raise ValueError(f"ranks {ranks.shape} and scores {scores.shape} must have the same shape")
  i, j = np.triu_indices(ranks.shape[1], 1)
  ordered = ranks[:, i] != ranks[:, j]
  differ = np.abs(scores[:, i] - scores[:, j]) > 1e-9
  agree = ordered & differ & ((ranks[:, i] < ranks[:, j]) == (scores[:, i] > scores[:, j]))
  share = lambda num, den: float(num.sum() / den.sum()) if den.sum() else float("nan")
  return {
    "agreement": share(agree, ordered & differ),
    "informative_pairs": int(ordered.sum()),
    "pairs": int(ordered.size),
    "tied_gold_differs": share(~ordered & differ, differ),
    "tied_gold_equal": share(~ordered & ~differ, ~differ),
  }


def pairwise_agreement(rankings: np.ndarray, scores: np.ndarray) -> float:
  """Fraction of pairs with different gold scores that the rankings order
  the same way as the gold scores.

  Args:
    rankings: [N, K] (or [K]) permutations, best first.
    scores: [N, K] (or [K]) gold scores.
  """
  rankings, scores = np.atleast_2d(rankings), np.atleast_2d(scores)
  if rankings.shape != scores.shape:
    raise ValueError(
      f"rankings {rankings.shape} and scores {scores.shape} must have the same shape"
    )
  k = scores.shape[1]
  agree = total = 0
  for ranking, s in zip(rankings, scores):
    position = np.empty(k, dtype=np.int64)
    position[validate_ranking(ranking, k)] = np.arange(k)
    i, j = np.triu_indices(k, 1)
    differ = s[i] != s[j]
    gold_i_better = s[i] > s[j]
    ranked_i_better = position[i] < position[j]
    agree += int(((gold_i_better == ranked_i_better) & differ).sum())
    total += int(differ.sum())
  return agree / total if total else float("nan")


def _score_gaps(score_sample: np.ndarray) -> np.ndarray:
  """|s_i - s_j| over all within-row pairs with different scores."""
  s = np.atleast_2d(np.asarray(score_sample, dtype=np.float64))
  i, j = np.triu_indices(s.shape[1], 1)
  gaps = np.abs(s[:, i] - s[:, j]).ravel()
  return gaps[gaps > 0]


def _p_exceeds(z: np.ndarray, kind: str) -> np.ndarray:
  """P(D > -z * noise) for D the difference of two noises of scale `noise`:
  sigmoid(z) (Gumbel: the difference is logistic) or Phi(z / sqrt 2)."""
  if kind == "gumbel":
    return 0.5 * (1.0 + np.tanh(z / 2.0))  # = sigmoid(z), overflow-free
  if kind == "gaussian":
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / 2.0))
  raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")


def expected_agreement(
  noise: float, score_sample: np.ndarray, kind: str = "gumbel", tie_margin: float = 0.0
) -> float:
  """Expected pairwise agreement with the gold order, on pairs with different
  gold scores that the labeler does not tie.

  A pair with gold gap g is ordered correctly when g + D > m and wrongly when
  g + D < -m (D the noise difference, m = tie_margin); agreement = sum of the
  first / sum of both over the pairs. Exact for tie_margin 0 (Gumbel:
  sigmoid(gap / noise)); with a margin it treats each pair alone (the
  grouping of `label` can chain a pair into a tie through a third response).
  """
  gaps = _score_gaps(score_sample)
  if gaps.size == 0:
    raise ValueError("score_sample has no pair with different scores")
  if noise == 0:
    return 1.0 if (gaps > tie_margin).any() else float("nan")
  right = _p_exceeds((gaps - tie_margin) / noise, kind)
  wrong = _p_exceeds((-gaps - tie_margin) / noise, kind)
  return float(right.sum() / max((right + wrong).sum(), 1e-300))


def calibrate_noise(
  target_agreement: float = TARGET_AGREEMENT,
  score_sample: np.ndarray | None = None,
  kind: str = "gumbel",
  tol: float = 1e-6,
  tie_margin: float = 0.0,
) -> float:
  """The noise scale whose expected agreement equals `target_agreement`.

  Args:
    target_agreement: in (0.5, 1).
    score_sample: [N, K] gold scores of K responses per prompt,
      representative of what will be ranked (ideally the SFT policy's own
      samples). None uses `synthetic_score_sample()` on the default world.
    kind: 'gumbel' or 'gaussian'.
    tol: bisection tolerance on log(noise).
    tie_margin: the labeler's tie margin (`label`); agreement is counted on
      the pairs it does not tie.

  Returns:
    The noise scale (expected agreement decreases monotonically with noise,
    from 1 at 0 to 0.5 as noise grows, so bisection finds it).
  """
  if not 0.5 < target_agreement < 1.0:
    raise ValueError(f"target_agreement must be in (0.5, 1), got {target_agreement}")
  if score_sample is None:
    score_sample = synthetic_score_sample()
  lo, hi = math.log(1e-6), math.log(1e6)
  while hi - lo > tol:
    mid = (lo + hi) / 2
    if expected_agreement(math.exp(mid), score_sample, kind, tie_margin) > target_agreement:
      lo = mid
    else:
      hi = mid
  return math.exp((lo + hi) / 2)


# ----------------------------------------------------------------------------
# Synthetic candidates: a stand-in for policy samples of mixed quality.

_FILLER = (
  "I hope this helps. Let me know if you have any other questions. "
  "This is an interesting question and there is a lot more that "
  "could be said about it."
)


def _wrong_answer(example: Example, world: World, rng: random.Random) -> str:
  """A plausible but wrong answer of the same type."""
  gold = example.answer
  if example.family in ("qa_known", "qa_unknown"):
    pool = sorted(world.values(example.meta["vtype"]) - {example.meta["value"]})
    return rng.choice(pool)
  if example.family == "format" and example.meta["inner"].family == "qa_known":
    inner = example.meta["inner"]
    pool = sorted(world.values(inner.meta["vtype"]) - {inner.meta["value"]})
    wrong = rng.choice(pool)
    return wrong.upper() if example.meta["format"] == "uppercase" else wrong
  if re.fullmatch(r"-?\d+", gold):
    return str(int(gold) + rng.choice((-1, 1)) * rng.randint(1, 10))
  if example.family == "brackets":
    return " ".join(rng.choice("()[]{}") for _ in gold.split())
  if example.family == "decline":
    return rng.choice(ENGLISH_WORDS)
  words = gold.split(", ") if ", " in gold else gold.split()
  if len(words) > 1:
    shuffled = words[1:] + words[:1]
    return (", " if ", " in gold else " ").join(shuffled)
  chars = list(gold)
  for _ in range(10):
    rng.shuffle(chars)
    if "".join(chars) != gold:
      break
  return "".join(chars) + ("" if "".join(chars) != gold else "x")


def synthetic_candidates(example: Example, world: World, rng: random.Random) -> list[str]:
  """Responses of graded quality: the demonstration, a wrong answer,
  "I don't know", a refusal, a rambling and a repetitive version."""
  demo = example.response
  if example.family == "qa_unknown":
    wrong = RELATIONS[example.meta["attr"]].fact.format(
      e=example.meta["entity"], v=_wrong_answer(example, world, rng)
    )
  elif example.family == "decline":
    wrong = f"Sure. Here it is: {_wrong_answer(example, world, rng)}."
  else:
    wrong = demo.replace(example.answer, _wrong_answer(example, world, rng))
  return [demo, wrong, "I don't know.", REFUSAL, f"{demo} {_FILLER}", " ".join([demo] * 4)]


def synthetic_score_sample(
  world: World | None = None, n: int = 2000, k: int = 4, seed: int = 0
) -> np.ndarray:
  """[n, k] gold scores of k random synthetic candidates per train prompt."""
  world = world or make_world(0)
  rng = random.Random(f"score_sample/{seed}")
  out = np.zeros((n, k))
  for row, example in enumerate(make_mixture(world, n, seed, "train")):
    pool = synthetic_candidates(example, world, rng)
    picks = [rng.choice(pool) for _ in range(k)]
    out[row] = [gold_score(example.prompt, r, world) for r in picks]
  return out
