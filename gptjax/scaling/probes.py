"""Emergence probes: one question scored by a discontinuous and a continuous metric.

A probe item has a prompt (for greedy generation and exact match)
and a (context, target) pair for the teacher-forced per-token log-probability
of the gold answer: the same question scored by a discontinuous and by a
continuous metric (Schaeffer et al. 2023).
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable, Sequence

import jax
import numpy as np

from gptjax import sampling, sharding
from gptjax.tasks import instructions, probes as task_probes


@dataclasses.dataclass(frozen=True)
class ProbeItem:
  """One probe question, scored two ways.

  prompt: text the model continues greedily (exact match).
  context, target: the gold answer `target` after `context`, for the
    teacher-forced mean per-token log-probability.
  gold: what an exactly matching answer is (see `exact_match`).
  kind: 'qa' (few-shot 'Q: ..\\nA: ..', the answer is the demonstration
    response), 'fact' (a continuation starting with the gold value as a word,
    `probes.recalled`), 'prefix' (a continuation starting with the gold text
    exactly, e.g. a closing bracket) or 'number' (the last integer of the
    continuation is the gold one, e.g. after a chain of thought).
  meta: what the item measures (distance, steps, level, ...), for grouping.
  """

  prompt: str
  context: str
  target: str
  gold: str
  kind: str
  meta: dict = dataclasses.field(default_factory=dict, compare=False)


PROBES = {
  "add2": "2-digit + 2-digit addition, few-shot",
  "add3": "3-digit + 3-digit addition, few-shot",
  "reverse": "reverse a word's letters or a list's words, few-shot",
  "sort": "sort a word's letters or a list of words, few-shot",
  "count": "count a letter or word, few-shot",
  "brackets": "close open brackets, few-shot",
  "facts": "world-fact recall (completion of a fact sentence)",
}


def arith_filter(digits: int) -> Callable:
  lo, hi = 10 ** (digits - 1), 10**digits - 1
  return lambda e: e.meta["op"] == "+" and lo <= e.meta["a"] <= hi and lo <= e.meta["b"] <= hi


def _qa_item(prompt: str, query) -> ProbeItem:
  """The log-prob target is the answer itself inside the demonstration
  response ('The answer is 168.' -> context '... A: The answer is', target ' 168')."""
  response, answer = query.response, query.answer
  cut = response.rfind(answer)
  if cut < 0:
    context, target = prompt, " " + response
  else:
    pre = response[:cut]
    context = prompt + (" " + pre.rstrip() if pre.strip() else "")
    target = " " + answer if (pre == "" or pre.endswith(" ")) else answer
  return ProbeItem(prompt=prompt, context=context, target=target, gold=response, kind="qa")


def probe_items(world, name: str, n: int, k: int, seed: int = 0) -> list[ProbeItem]:
  """`n` items of probe `name` (one of PROBES) for `world`."""
  if name == "facts":
    return [
      ProbeItem(prompt=prefix, context=prefix, target=gold, gold=gold, kind="fact")
      for prefix, gold in task_probes.fact_queries(world, n, seed)
    ]
  if name in ("add2", "add3"):
    keep = arith_filter(int(name[-1]))
    draw = lambda split, m: [
      e for e in instructions.make_examples(world, "arithmetic", m, seed, split) if keep(e)
    ]
    queries, pool = draw("heldout", 30 * n)[:n], draw("train", max(60 * k, 200))
    if len(queries) < n or len(pool) < k + 1:
      raise RuntimeError(f"could not draw {n} {name} probes")
    rng = random.Random(f"scaling/{name}/{world.seed}/{seed}")
    items = []
    for q in queries:
      items.append(_qa_item(task_probes.few_shot_prompt(rng.sample(pool, k + 1), q, k), q))
    return items
  if name in PROBES:
    return [
      _qa_item(prompt, q) for prompt, q in task_probes.few_shot_probes(world, name, n, k, seed)
    ]
  raise ValueError(f"probe {name!r}; allowed: {sorted(PROBES)}")


def exact_match(item: ProbeItem, continuation: str) -> bool:
  """By item.kind (see ProbeItem): qa, fact, prefix or number."""
  if item.kind == "fact":
    return task_probes.recalled(continuation, item.gold)
  if item.kind == "prefix":  # the gold text first, after any spaces (decoding may drop them)
    return continuation.lstrip().startswith(item.gold.strip())
  if item.kind == "number":
    numbers = re.findall(r"-?\d+", continuation)
    return bool(numbers) and numbers[-1] == item.gold.strip()
  return task_probes.extract_answer(continuation) == item.gold.strip()


def logprob_batch(
  context_ids: Sequence[Sequence[int]],
  target_ids: Sequence[Sequence[int]],
  max_len: int,
  pad_id: int,
) -> dict[str, np.ndarray]:
  """Right-padded [B, max_len] rows of context + target for teacher forcing.

  Contexts are cut from the left so that each row fits. Returns tokens, the
  positions whose *next* token is a target token ('predict' mask, so that
  logits[:, i] score tokens[:, i + 1]) and the count of target tokens.
  """
  B = len(context_ids)
  tokens = np.full([B, max_len], pad_id, np.int32)
  predict = np.zeros([B, max_len], bool)
  for i, (ctx, tgt) in enumerate(zip(context_ids, target_ids)):
    tgt = list(tgt)[: max_len - 1]
    ctx = list(ctx)[-(max_len - len(tgt)) :] if ctx else []
    if not ctx:
      raise ValueError("every target needs at least one context token (e.g. bos)")
    row = ctx + tgt
    tokens[i, : len(row)] = row
    predict[i, len(ctx) - 1 : len(row) - 1] = True
  return {"tokens": tokens, "predict": predict, "n_target": predict.sum(1)}


def target_logprobs(logits: np.ndarray, tokens: np.ndarray, predict: np.ndarray) -> np.ndarray:
  """Mean per-token log-prob of the target tokens per row, from logits [B, T, V]."""
  logits = np.asarray(logits, np.float64)
  logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)  # [B, T, V]
  nxt = np.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)  # [B, T]
  tok_lp = np.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]  # [B, T]
  return (tok_lp * predict).sum(1) / np.maximum(predict.sum(1), 1)


def score_probes(
  model,
  params,
  tokenizer,
  items: Sequence[ProbeItem],
  *,
  max_new_tokens: int = 12,
  batch_size: int = 32,
  chat: bool = False,
) -> dict:
  """Exact match (greedy) and mean per-token gold log-prob (teacher-forced) of each item.

  chat: the prompt is a user message in the chat template, the context the
  assistant's response so far, and generation stops at <|end_turn|> (an SFT
  model); otherwise plain text after <s>, stopping at a newline.
  Batches are padded to `batch_size` rows so that one compilation serves
  every batch. Returns {'exact': [bool], 'logprob': [float], 'answers': [str]}.
  """
  params = sharding.local_copy(params)  # off the mesh
  T = model.cfg.max_len
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
  exact, logprob, answers = [], [], []
  for start in range(0, len(items), batch_size):
    chunk = list(items[start : start + batch_size])
    padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
    prompts = [_prompt_ids(tokenizer, it, chat) for it in padded]
    gen = sampling.generate(
      model,
      params,
      prompts,
      max_new_tokens=max_new_tokens,
      rng=jax.random.PRNGKey(0),
      eos_id=tokenizer.end_turn_id if chat else tokenizer.newline_id,
      pad_id=tokenizer.pad_id,
      sampling=sampling.GREEDY,
      truncate="left",
    )
    for it, row, m in list(zip(padded, gen.tokens, gen.mask))[: len(chunk)]:
      stops = (tokenizer.eos_id, tokenizer.end_turn_id if chat else tokenizer.newline_id)
      ids = [int(t) for t in row[m] if t not in stops]
      text = tokenizer.decode(ids)
      answers.append(text)
      exact.append(bool(exact_match(it, text)))
    batch = logprob_batch(
      [_context_ids(tokenizer, it, chat) for it in padded],
      [tokenizer.encode(it.target) for it in padded],
      T,
      tokenizer.pad_id,
    )
    logits = jax.device_get(forward(params, batch["tokens"]))
    logprob += target_logprobs(logits, batch["tokens"], batch["predict"])[: len(chunk)].tolist()
  return {"exact": exact, "logprob": logprob, "answers": answers}


def _prompt_ids(tokenizer, item: ProbeItem, chat: bool) -> list[int]:
  if chat:
    messages = [{"role": "user", "content": item.prompt}]
    return tokenizer.encode_chat(messages, add_generation_prompt=True)
  return [tokenizer.bos_id] + tokenizer.encode(item.prompt)


def _context_ids(tokenizer, item: ProbeItem, chat: bool) -> list[int]:
  """The teacher-forcing context; in chat mode the user turn, then the response so far."""
  if chat:
    return _prompt_ids(tokenizer, item, True) + tokenizer.encode(item.context)
  return [tokenizer.bos_id] + tokenizer.encode(item.context)
