"""Gold-score evaluation of a language model on held-out task prompts.

Three ways to ask a model the same held-out questions:

  chat       zero-shot in the chat template (`<|user|> q <|end_turn|>
             <|assistant|>`), the answer ends at <|end_turn|>: SFT models.
  zero_shot  plain text 'Q: q\\nA:', the answer ends at the line's end:
             pretrained models (Q/A lines are one of the world templates).
  few_shot   k solved train-split demonstrations before the plain-text
             query (`gptjax.tasks.probes.few_shot_probes`): in-context learning.

Each answer is judged by the oracle (`gptjax.tasks.oracle.classify`): the mean
gold score per family, the hallucination rate (a concrete answer about an
entity absent from pretraining, family qa_unknown), the decline rate (refusals
of requests that should be declined) and the over-refusal rate (refusals of
benign tasks).

Degeneration (Holtzman et al. 2020, "The Curious Case of Neural Text
Degeneration"): on the same prompts, greedy decoding against nucleus (top-p)
sampling; repetition = mean fraction of repeated word bigrams in a
continuation, distinct-n = distinct word n-grams / all n-grams, pooled.

All generation goes through `gptjax.sampling.generate_batched`, in
fixed-size batches (the last one padded), so each mode compiles once.

`chat_prompt_ids` is the one way a question becomes a chat prompt: SFT's
demonstrations, the reward model's comparisons and PPO's rollouts all use it.
"""

import functools
from typing import Callable, Sequence

import jax
import numpy as np

from gptjax import sampling, sharding
from gptjax.tasks import instructions, oracle, probes
from gptjax.tasks.world import World
from gptjax.tokenizer import Tokenizer

MODES = ("chat", "zero_shot", "few_shot")
# A pretrained model is asked in all three, plain text first (it never saw
# the chat template); an imported instruct model in chat alone.
MODES_PRETRAINED = ("zero_shot", "few_shot", "chat")
BENIGN = tuple(f for f in instructions.FAMILIES if f not in ("decline", "qa_unknown"))


# ----------------------------------------------------------------------------
# Chat prompts.


def chat_messages(prompt: str, system: str = "") -> list[dict[str, str]]:
  """The conversation that asks `prompt`, after an optional system message."""
  system_turn = [{"role": "system", "content": system}] if system else []
  return system_turn + [{"role": "user", "content": prompt}]


def chat_prompt_ids(tokenizer: Tokenizer, prompt: str, system: str = "") -> list[int]:
  """`prompt` as a user turn in the chat template, ending with <|assistant|>:
  what a chat model continues with its answer."""
  return tokenizer.encode_chat(chat_messages(prompt, system), add_generation_prompt=True)


# ----------------------------------------------------------------------------
# Pure metrics.


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
  return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
  """Distinct word n-grams / all word n-grams over `texts` (1 = no reuse)."""
  grams = [g for t in texts for g in ngrams(t.lower().split(), n)]
  return len(set(grams)) / len(grams) if grams else 0.0


def degeneration_metrics(texts: Sequence[str]) -> dict[str, float]:
  """Repetition and diversity of a set of continuations."""
  return {
    "repetition": float(np.mean([oracle.repetition(t) for t in texts])),
    "distinct_1": distinct_n(texts, 1),
    "distinct_2": distinct_n(texts, 2),
    "distinct_3": distinct_n(texts, 3),
    "mean_words": float(np.mean([len(t.split()) for t in texts])),
  }


def family_metrics(judgements: Sequence[dict]) -> dict:
  """What one family's answers did, from `oracle.classify` dicts:

  score                     mean gold score
  correct                   strict correct rate (right, in form, not hedged)
  answer_rate               share that commit to an answer (`answered`)
  accuracy_when_answering   right content among those (nan if none answered)
  hallucination_rate        share that commit to a WRONG answer (`wrong_answer`:
                            a confabulation; any answer on qa_unknown)
  truncation_rate           share cut at max_new_tokens (if the judgements say)

  so a gain from abstaining (answer rate and hallucination down, accuracy
  when answering up, strict correct flat) reads differently from a gain in
  competence (strict correct up).
  """
  rate = lambda key: float(np.mean([j[key] for j in judgements])) if judgements else float("nan")
  out = {"score": rate("score"), "correct": rate("correct"), "n": len(judgements)}
  if judgements and "answered" in judgements[0]:
    answered = sum(float(j["answered"]) for j in judgements)
    # 'answered_correct' when given (expectations over samples, see best_of_n),
    # else from the flags: right content among committed answers.
    right = sum(
      float(j.get("answered_correct", bool(j["answered"]) and bool(j["content_correct"])))
      for j in judgements
    )
    out.update(
      answer_rate=rate("answered"),
      accuracy_when_answering=right / answered if answered > 0 else float("nan"),
      hallucination_rate=rate("wrong_answer"),
    )
  if judgements and "truncated" in judgements[0]:
    out["truncation_rate"] = rate("truncated")
  return out


def summarize(judgements: Sequence[dict]) -> dict:
  """Per-family metrics (`family_metrics`), plus the honesty/refusal rates.

  judgements: `oracle.classify` dicts (each with 'family').
  """
  by_family: dict[str, list[dict]] = {}
  for j in judgements:
    by_family.setdefault(j["family"], []).append(j)
  rate = lambda js, key: float(np.mean([j[key] for j in js])) if js else float("nan")
  families = {f: family_metrics(js) for f, js in sorted(by_family.items())}
  benign = [j for j in judgements if j["family"] in BENIGN]
  return {
    "families": families,
    "mean_score": float(np.mean([v["score"] for v in families.values()])),
    "hallucination_rate": rate(by_family.get("qa_unknown", []), "hallucinated"),
    "honest_idk_rate": rate(by_family.get("qa_unknown", []), "correct"),
    "decline_rate": rate(by_family.get("decline", []), "declined"),
    "over_refusal_rate": rate(benign, "declined"),
    "correct_rate": rate(judgements, "correct"),
    **{
      name: rate(judgements, key)
      for name, key in (
        ("answer_rate", "answered"),
        ("wrong_answer_rate", "wrong_answer"),
        ("truncation_rate", "truncated"),
      )
      if judgements and key in judgements[0]
    },
  }


# ----------------------------------------------------------------------------
# The evaluator.


class Evaluator:
  """Asks a model the held-out questions of its task families and scores the answers.

  Args:
    model: the Transformer (its cfg.max_len bounds prompt + answer).
    tokenizer, world: of the pretrained run.
    cfg: config.eval (n_per_family, seed, few_shot_k, max_new_tokens,
      batch_size, n_degeneration, degeneration_tokens, top_p).
    system: system message for chat prompts ('' = none).
    families: the task families asked (default all; a run's own:
      `runs.families_of(config)`).
    stop_check: called after every generated batch; a stage passes one that
      raises on a stop request (`train.check_stop`), so a stop signal during a
      long evaluation takes effect within a batch, not after it.
  """

  def __init__(
    self,
    model,
    tokenizer: Tokenizer,
    world: World,
    cfg,
    system: str = "",
    families: Sequence[str] = instructions.FAMILIES,
    stop_check: Callable[[], None] | None = None,
  ):
    self.model, self.tokenizer, self.world, self.cfg = model, tokenizer, world, cfg
    self.system, self.families, self.stop_check = system, tuple(families), stop_check

  @functools.cached_property
  def examples(self) -> list[instructions.Example]:
    """n_per_family held-out examples of each of `families`, family by family."""
    return [
      e
      for f in self.families
      for e in instructions.make_examples(
        self.world, f, self.cfg.n_per_family, self.cfg.seed, "heldout"
      )
    ]

  # --- prompts --------------------------------------------------------------

  def chat_ids(self, prompt: str) -> list[int]:
    return chat_prompt_ids(self.tokenizer, prompt, self.system)

  def plain_ids(self, text: str) -> list[int]:
    return [self.tokenizer.bos_id] + self.tokenizer.encode(text)

  def prompts(self, mode: str) -> list[list[int]]:
    """Token prompts of `self.examples` in one of MODES."""
    if mode == "chat":
      return [self.chat_ids(e.prompt) for e in self.examples]
    if mode == "zero_shot":
      return [self.plain_ids(probes.zero_shot_prompt(e)) for e in self.examples]
    if mode == "few_shot":
      texts = []
      for f in self.families:
        pairs = probes.few_shot_probes(
          self.world, f, self.cfg.n_per_family, self.cfg.few_shot_k, self.cfg.seed
        )
        texts += [text for text, _ in pairs]
      return [self.plain_ids(t) for t in texts]
    raise ValueError(f"evaluation mode {mode!r}; allowed: {MODES}")

  def stop_id(self, mode: str, open_ended: bool = False) -> int:
    """Chat answers end at <|end_turn|>; plain answers at the newline (or EOS
    when open-ended, for degeneration)."""
    if mode == "chat":
      return self.tokenizer.end_turn_id
    return self.tokenizer.eos_id if open_ended else self.tokenizer.newline_id

  # --- generation -----------------------------------------------------------

  def generate(
    self,
    params,
    prompts: list[list[int]],
    stop_id: int,
    max_new_tokens: int,
    params_sampling=sampling.GREEDY,
    seed: int = 0,
  ) -> list[str]:
    """Continuations of token prompts, in batches of cfg.batch_size, each cut
    at its stop token or at the document's EOS (plain text: a document ended)."""
    return self.generate_flagged(params, prompts, stop_id, max_new_tokens, params_sampling, seed)[0]

  def generate_flagged(
    self,
    params,
    prompts: list[list[int]],
    stop_id: int,
    max_new_tokens: int,
    params_sampling=sampling.GREEDY,
    seed: int = 0,
    interruptible: bool = True,
  ) -> tuple[list[str], list[bool]]:
    """`generate`'s texts and, per prompt, whether the answer was cut at
    max_new_tokens (it never emitted the stop token). `stop_check` runs after
    each batch unless interruptible is False."""
    check = self.stop_check if interruptible else None
    gen = sampling.generate_batched(
      self.model,
      params,
      prompts,
      batch_size=self.cfg.batch_size,
      max_new_tokens=max_new_tokens,
      rng=jax.random.PRNGKey(seed),
      eos_id=stop_id,
      pad_id=self.tokenizer.pad_id,
      sampling=params_sampling,
      truncate="left",
      progress=(lambda _: check()) if check else None,
    )
    stopped = ((gen.tokens == stop_id) & gen.mask).any(-1)
    truncated = [bool(x) for x in ~stopped & (gen.mask.sum(-1) >= max_new_tokens)]
    return gen.texts(self.tokenizer, cut_at=(self.tokenizer.eos_id,)), truncated

  def answer(self, mode: str, text: str) -> str:
    return text.strip() if mode == "chat" else probes.extract_answer(text)

  # --- evaluation -----------------------------------------------------------

  def judgements(self, params, mode: str) -> tuple[list[dict], list[str]]:
    """Oracle judgements (`oracle.classify`) of greedy answers to every held-out
    example in `mode`, in `self.examples` order, and the answers themselves."""
    texts, truncated = self.generate_flagged(
      params, self.prompts(mode), self.stop_id(mode), self.cfg.max_new_tokens
    )
    return [
      {**oracle.classify(e.prompt, self.answer(mode, t), self.world), "truncated": cut}
      for e, t, cut in zip(self.examples, texts, truncated)
    ], texts

  def evaluate_mode(self, params, mode: str) -> dict:
    """Gold scores of greedy answers to every held-out example in `mode`: the
    summary, 'scores' per example (in `self.examples` order, for paired
    comparisons such as win rates) and the first answer per family."""
    judgements, texts = self.judgements(params, mode)
    out = summarize(judgements)
    out["scores"] = [j["score"] for j in judgements]
    out["samples"] = {}
    for e, t in zip(self.examples, texts):  # the first answer per family
      out["samples"].setdefault(
        e.family, {"prompt": e.prompt, "answer": self.answer(mode, t), "gold": e.response}
      )
    return out

  def degeneration(self, params, mode: str) -> dict:
    """Greedy vs nucleus continuations of the same prompts (open-ended)."""
    n_fam = len(self.families)
    per = -(-self.cfg.n_degeneration // n_fam)
    order = [
      i * self.cfg.n_per_family + j
      for j in range(min(per, self.cfg.n_per_family))
      for i in range(n_fam)
    ][: self.cfg.n_degeneration]
    prompts = [self.prompts(mode)[i] for i in order]
    stop, n = self.stop_id(mode, open_ended=True), self.cfg.degeneration_tokens
    greedy = self.generate(params, prompts, stop, n)
    nucleus = self.generate(
      params, prompts, stop, n, sampling.SamplingParams(temperature=1.0, top_p=self.cfg.top_p)
    )
    return {
      "mode": mode,
      "greedy": degeneration_metrics(greedy),
      f"top_p_{self.cfg.top_p}": degeneration_metrics(nucleus),
      "example": {"greedy": greedy[0], "top_p": nucleus[0]},
    }

  def evaluate(
    self, params, modes: Sequence[str] = ("chat",), degeneration_mode: str | None = None
  ) -> dict:
    """{mode: summary} for each mode, plus 'degeneration' if asked."""
    params = sharding.local_copy(params)  # off the mesh
    out = {mode: self.evaluate_mode(params, mode) for mode in modes}
    if degeneration_mode:
      out["degeneration"] = self.degeneration(params, degeneration_mode)
    return out

  def chat_samples(self, params, prompts: Sequence[str]) -> list[str]:
    """'prompt -> greedy chat answer' lines, for logs during training (never
    interrupted by `stop_check`: the training loop saves, then stops)."""
    params = sharding.local_copy(params)  # off the mesh
    texts, _ = self.generate_flagged(
      params,
      [self.chat_ids(p) for p in prompts],
      self.tokenizer.end_turn_id,
      self.cfg.max_new_tokens,
      interruptible=False,
    )
    return [f"{p!r} -> {t.strip()!r}" for p, t in zip(prompts, texts)]


# ----------------------------------------------------------------------------
# Reports.


def flat_scores(result: dict) -> dict[str, float]:
  """'mode/family' -> score and 'mode/<rate>' scalars, for metrics.jsonl."""
  out = {}
  for mode, r in result.items():
    if mode == "degeneration":
      for kind, m in r.items():
        if isinstance(m, dict) and kind != "example":
          out.update({f"degeneration/{kind}/{k}": v for k, v in m.items()})
      continue
    out.update({f"{mode}/{f}": v["score"] for f, v in r["families"].items()})
    out.update(
      {
        f"{mode}/{k}": r[k]
        for k in ("mean_score", "hallucination_rate", "decline_rate", "over_refusal_rate")
      }
    )
  return out


def family_table(before: dict, after: dict) -> dict[str, dict[str, float]]:
  """family -> {pretrained_zero_shot, pretrained_few_shot, pretrained_chat, sft}."""
  columns = {
    "pretrained_zero_shot": before.get("zero_shot"),
    "pretrained_few_shot": before.get("few_shot"),
    "pretrained_chat": before.get("chat"),
    "sft": after.get("chat"),
  }
  rows = {}
  for name, r in columns.items():
    if r is None:
      continue
    for f, v in r["families"].items():
      rows.setdefault(f, {})[name] = v["score"]
    rows.setdefault("MEAN", {})[name] = r["mean_score"]
  return rows


def format_table(results: dict[str, dict]) -> str:
  """A text table of mean gold score per family: one column per (model, mode)."""
  columns = [
    (f"{name}/{mode}", r)
    for name, res in results.items()
    for mode, r in res.items()
    if mode in MODES
  ]
  present = {f for _, r in columns for f in r["families"]}
  families = [f for f in instructions.FAMILIES if f in present]
  score = lambda r, f: r["families"].get(f, {}).get("score", float("nan"))
  lines = [f"{'family':<20}" + "".join(f"{c:>22}" for c, _ in columns)]
  for f in families:
    lines.append(f"{f:<20}" + "".join(f"{score(r, f):>22.3f}" for _, r in columns))
  lines.append(f"{'MEAN':<20}" + "".join(f"{r['mean_score']:>22.3f}" for _, r in columns))
  for k in ("hallucination_rate", "decline_rate", "over_refusal_rate"):
    lines.append(f"{k:<20}" + "".join(f"{r[k]:>22.3f}" for _, r in columns))
  return "\n".join(lines)
