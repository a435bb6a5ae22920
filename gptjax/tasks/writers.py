"""A pool of demonstration writers, as InstructGPT's contractors and
AlpacaFarm's annotators differ.

SFT learns the mixture of their styles, so its samples differ in quality and
the preferred style (concise and correct) is in its distribution, though not
always its mode; that spread is what a reward model can rank and RLHF can
sharpen. Every writer knows the right answer; they differ in how they say it:

  writer           task families                    share
  concise          the reference demonstration      0.40
  verbose          "Sure! <answer> Hope this helps!"              0.15
  format_ignoring  the right content in another form ("168" for
                   "The answer is 168.", letters in uppercase,
                   the inner answer to "Answer in one word:")     0.15
  hedging          "<answer>, but I'm not sure."                  0.15
  abstaining       "I don't know." on the upper half of a
                   family's levels, else hedging                   0.15

On qa_unknown and decline every writer gives the reference answer (the
honest "I don't know anything about X." / the refusal), the verbose one with
its opener and closer. The oracle's order over the styles is fixed in
`gptjax.tasks.oracle` (RUBRIC_VERSION) and tested.

This module reads examples and family records by their fields only (it does
not import `instructions`, which imports it).
"""

from __future__ import annotations

import dataclasses
import random
import types
from typing import Any, Callable, Mapping

WRITERS = ("concise", "verbose", "format_ignoring", "hedging", "abstaining")
WRITER_SHARES: Mapping[str, float] = types.MappingProxyType(
  {"concise": 0.4, "verbose": 0.15, "format_ignoring": 0.15, "hedging": 0.15, "abstaining": 0.15}
)
OPENERS = ("Sure!", "Well,", "Okay.")
CLOSERS = ("Hope this helps!", "Glad to help!", "Any more questions?")
ABSTENTIONS = ("I don't know.", "I'm not sure how to solve this.")
HEDGE = ", but I'm not sure."


def sentence(example) -> str:
  """The reference as a sentence: bare answers ('malot', '} ] )') become
  'The answer is malot.'; sentences stay as they are."""
  r = example.response
  return r if r.endswith(".") else f"The answer is {r}."


def _concise(example, family, rng: random.Random) -> str:
  return example.response


def _verbose(example, family, rng: random.Random) -> str:
  return f"{rng.choice(OPENERS)} {sentence(example)} {rng.choice(CLOSERS)}"


def _format_ignoring(example, family, rng: random.Random) -> str:
  if family.kind != "task" or family.unformatted is None:
    return example.response
  return family.unformatted(example)


def _hedging(example, family, rng: random.Random) -> str:
  if family.kind != "task":
    return example.response
  return sentence(example)[:-1] + HEDGE


def _abstaining(example, family, rng: random.Random) -> str:
  if family.kind != "task":
    return example.response
  if example.level in family.hard_levels:
    return rng.choice(ABSTENTIONS)
  return _hedging(example, family, rng)


STYLES: dict[str, Callable[[Any, Any, random.Random], str]] = {
  "concise": _concise,
  "verbose": _verbose,
  "format_ignoring": _format_ignoring,
  "hedging": _hedging,
  "abstaining": _abstaining,
}


def check_shares(shares: Mapping[str, float]) -> None:
  """Raises ValueError unless `shares` maps known writers to weights >= 0
  with a positive sum."""
  unknown = sorted(set(shares) - set(WRITERS))
  if unknown:
    raise ValueError(f"writers: unknown writer(s) {unknown}; allowed: {WRITERS}")
  if any(v < 0 for v in shares.values()) or not sum(shares.values()) > 0:
    raise ValueError(f"writers: shares must be >= 0 with a positive sum, got {dict(shares)}")


def rewrite(example, family, shares: Mapping[str, float], rng: random.Random):
  """`example` with its demonstration rewritten by a writer drawn from
  `shares` ({writer: weight}); `family` is the example's Family record."""
  check_shares(shares)
  names = [w for w in WRITERS if shares.get(w, 0) > 0]
  writer = rng.choices(names, [shares[w] for w in names])[0]
  response = STYLES[writer](example, family, rng)
  return dataclasses.replace(example, response=response, writer=writer)
