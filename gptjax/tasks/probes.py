"""Plain-text probes for pretrained (not chat-tuned) models.

Few-shot prompts measure in-context learning (and, with arithmetic_cot
demonstrations, chain-of-thought); fact queries measure how much of the
world a model recalled from pretraining. No chat tokens: only text a
pretrained model has seen the like of ("Q: ...\\nA: ..." lines are one of
the world-document templates).

Example:
  world = make_world(0)
  demos = make_examples(world, "arithmetic", 8, seed=0, split="train")
  query = make_examples(world, "arithmetic", 1, seed=0, split="heldout")[0]
  text = few_shot_prompt(demos, query, k=4)   # model continues after "A:"
  answer = extract_answer(model_continuation)
  ok = classify(query.prompt, answer, world)["correct"]
"""

from __future__ import annotations

import random
from typing import Sequence

from gptjax.tasks.instructions import Example, make_examples
from gptjax.tasks.world import World


def format_qa(prompt: str, response: str | None = None) -> str:
  """'Q: <prompt>\\nA: <response>' (or the open 'Q: <prompt>\\nA:')."""
  return f"Q: {prompt}\nA:" + ("" if response is None else f" {response}")


def zero_shot_prompt(query: Example) -> str:
  """The query alone, in plain-text Q/A form, for the model to continue."""
  return format_qa(query.prompt)


def few_shot_prompt(examples: Sequence[Example], query: Example, k: int) -> str:
  """k solved demonstrations, a blank line apart, then the open query.

  Demonstrations with the same prompt as the query are skipped.

  Raises:
    ValueError: if fewer than k usable demonstrations are given.
  """
  demos = [e for e in examples if e.prompt != query.prompt][:k]
  if len(demos) < k:
    raise ValueError(
      f"few_shot_prompt needs k={k} demonstrations other than the query, got {len(demos)}"
    )
  shots = [format_qa(e.prompt, e.response) + "\n\n" for e in demos]
  return "".join(shots) + zero_shot_prompt(query)


def extract_answer(continuation: str) -> str:
  """The model's answer: its continuation up to the first blank line or the
  next 'Q:' line, stripped."""
  text = continuation.split("\n\n")[0].split("\nQ:")[0]
  return text.strip()


def few_shot_probes(
  world: World, family: str, n: int, k: int, seed: int = 0
) -> list[tuple[str, Example]]:
  """n (prompt text, query) pairs: k train-split demonstrations (different
  for each query) before each held-out query."""
  queries = make_examples(world, family, n, seed, "heldout")
  pool = make_examples(world, family, max(4 * k, k + 1), seed, "train")
  rng = random.Random(f"few_shot/{world.seed}/{family}/{seed}")
  return [(few_shot_prompt(rng.sample(pool, len(pool)), q, k), q) for q in queries]


def fact_queries(
  world: World, n: int | None = None, seed: int = 0, statuses: Sequence[str] = ("known",)
) -> list[tuple[str, str]]:
  """Knowledge probes: (prefix, gold continuation) pairs from the canonical
  fact sentences, e.g. ('The capital of Varona is', ' Lurim').

  Score by exact match (the greedy continuation starts with the gold
  continuation, see `recalled`) or by the gold continuation's log-prob.

  Args:
    world: the world.
    n: number of facts (sampled without replacement); None = all.
    seed: which facts, and their order.
    statuses: entity statuses to probe; ('unknown', 'heldout') gives a
      chance-level control.
  """
  facts = world.facts(*statuses)
  rng = random.Random(f"fact_queries/{world.seed}/{seed}")
  rng.shuffle(facts)
  if n is not None:
    facts = facts[:n]
  out = []
  for entity, attr in facts:
    sentence = entity.fact(attr)
    value = entity.attrs[attr]
    cut = sentence.rindex(value)
    out.append((sentence[:cut].rstrip(), " " + value))
  return out


def recalled(continuation: str, gold: str) -> bool:
  """Exact-match recall: the continuation starts with the gold value as a
  whole word."""
  text, gold = continuation.strip(), gold.strip()
  return text.startswith(gold) and (len(text) == len(gold) or not text[len(gold)].isalnum())


def recall_rate(queries: Sequence[tuple[str, str]], continuations: Sequence[str]) -> float:
  """Fraction of fact queries whose continuation recalls the gold value."""
  if len(queries) != len(continuations):
    raise ValueError(f"{len(queries)} queries but {len(continuations)} continuations")
  hits = sum(recalled(c, gold) for (_, gold), c in zip(queries, continuations))
  return hits / len(queries) if queries else float("nan")
