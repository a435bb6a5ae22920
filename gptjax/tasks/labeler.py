"""A simulated human labeler: ranks K responses by gold score, with noise.

The labeler perturbs each gold score with independent noise of scale `noise`
and sorts, best first (ties broken at random). With Gumbel noise this is the
Plackett-Luce model with logits score / noise, so the chance that it orders a
pair correctly is exactly sigmoid(|s_i - s_j| / noise): the Bradley-Terry
model that the reward model's ranking loss assumes. `calibrate_noise` picks
the scale whose expected pairwise agreement with the gold order equals the
~73% inter-labeler agreement InstructGPT reported.

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


def expected_agreement(noise: float, score_sample: np.ndarray, kind: str = "gumbel") -> float:
  """Exact expected pairwise agreement of `rank` at this noise level.

  Gumbel: the difference of two Gumbels is logistic, P = sigmoid(gap/noise).
  Gaussian: the difference is N(0, 2 noise^2), P = Phi(gap / (noise sqrt 2)).
  """
  gaps = _score_gaps(score_sample)
  if gaps.size == 0:
    raise ValueError("score_sample has no pair with different scores")
  if noise == 0:
    return 1.0
  z = gaps / noise
  if kind == "gumbel":
    p = 0.5 * (1.0 + np.tanh(z / 2.0))  # = sigmoid(z), overflow-free
  elif kind == "gaussian":
    p = 0.5 * (1.0 + np.vectorize(math.erf)(z / 2.0))
  else:
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {kind!r}")
  return float(p.mean())


def calibrate_noise(
  target_agreement: float = TARGET_AGREEMENT,
  score_sample: np.ndarray | None = None,
  kind: str = "gumbel",
  tol: float = 1e-6,
) -> float:
  """The noise scale whose expected agreement equals `target_agreement`.

  Args:
    target_agreement: in (0.5, 1).
    score_sample: [N, K] gold scores of K responses per prompt,
      representative of what will be ranked (ideally the SFT policy's own
      samples). None uses `synthetic_score_sample()` on the default world.
    kind: 'gumbel' or 'gaussian'.
    tol: bisection tolerance on log(noise).

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
    if expected_agreement(math.exp(mid), score_sample, kind) > target_agreement:
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
