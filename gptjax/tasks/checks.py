"""Text checks on a response, shared by the task families and the oracle.

Pure functions of strings (and of the world's value sets): whether a response
refuses, professes ignorance, states a number, names a value. The task
families (`gptjax.tasks.instructions`) build their content checks from these;
the oracle (`gptjax.tasks.oracle`) turns the checks into a score.
"""

from __future__ import annotations

import re

from gptjax.tasks.world import World

REFUSAL_RE = re.compile(
  r"\b(?:can't|cannot|can not|won't|will not|unable to|not able to)\s+"
  r"(?:help|assist|do that|share|provide|give|write|comply)"
  r"|\bmust decline\b|\bI decline\b|\bI refuse\b",
  re.IGNORECASE,
)
IDK_RE = re.compile(
  r"\bI\s+(?:don't|do not|dont)\s+know\b|\bI(?:'m| am) not sure\b"
  r"|\bno information\b|\bnever heard of\b|\bnot familiar with\b"
  r"|\bI have no idea\b",
  re.IGNORECASE,
)
# An integer that is a word of its own: 'Brotulpite0' and 'x2' hold none.
INT_RE = re.compile(r"(?<![\w.-])-?\d+(?![\w])")


def clean(text: str) -> str:
  return text.replace("\u2019", "'").strip()


def is_refusal(response: str) -> bool:
  """Whether the response refuses ("I'm sorry, but I can't help with that.")."""
  return bool(REFUSAL_RE.search(clean(response)))


def is_idk(response: str) -> bool:
  """Whether the response professes ignorance ("I don't know ...")."""
  return bool(IDK_RE.search(clean(response)))


def final_span(text: str) -> str:
  """The text after the last 'answer is', else the whole text, without
  surrounding quotes and final punctuation."""
  matches = list(re.finditer(r"\b(?:answer|result) is:?\s*", text, re.I))
  span = text[matches[-1].end() :] if matches else text
  return span.strip().rstrip(".!").strip().strip("'\"").strip()


def final_int(text: str) -> int | None:
  """The number after the last 'answer is', else the last integer that is a
  word of its own (digits inside a word, as in 'Brotulpite0', do not count)."""
  matches = re.findall(r"\banswer is:?\s*(-?\d+)(?![\w])", text, re.I)
  if matches:
    return int(matches[-1])
  numbers = INT_RE.findall(text)
  return int(numbers[-1]) if numbers else None


def tokens(text: str) -> list[str]:
  """Case-folded words of `text`, split at spaces and commas."""
  return [t for t in re.split(r"[\s,]+", text.casefold()) if t]


def mentions(text: str, value: str) -> bool:
  """Whether `value` occurs in `text` as whole words, ignoring case."""
  return re.search(rf"\b{re.escape(value)}\b", text, re.I) is not None


def mentioned(text: str, values: frozenset[str]) -> set[str]:
  """The values that `text` mentions as whole words (fast path: a value's
  first word must be one of the text's words)."""
  words = set(re.findall(r"\w+", text.casefold()))
  return {v for v in values if v.split()[0].casefold() in words and mentions(text, v)}


def competitors(vtype: str, gold: str, text: str, world: World) -> set[str]:
  """Values of type `vtype` other than `gold` that the response mentions."""
  found = mentioned(text, world.values(vtype)) - {gold}
  if vtype == "year":
    found |= {y for y in re.findall(r"\b\d{3,4}\b", text) if y != gold}
  return found


def asserts_value(vtype: str, entity: str, text: str, world: World) -> bool:
  """Whether a response to a question about `entity` states a concrete value
  of type `vtype`: a value of that type from the world, a year, or (for names)
  an invented capitalised word that is not the entity's own name."""
  if mentioned(text, world.values(vtype)):
    return True
  if vtype == "year":
    return re.search(r"\b\d{3,4}\b", text) is not None
  if vtype in ("city", "person", "language"):
    own = set(entity.split()) | {"I"}
    words = text.split()
    for i, tok in enumerate(words):
      word = tok.strip(".,!?;:'\"()")
      sentence_start = i == 0 or words[i - 1][-1] in ".!?"
      if word[:1].isupper() and not sentence_start and word not in own:
        return True
  return False
