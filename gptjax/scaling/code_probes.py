"""Probes for the code-data ablation: long-range dependencies, state tracking, reasoning.

Every generator returns `ProbeItem`s (`gptjax.scaling.probes`), scored by
`score_probes` under exact match and the per-token log-prob of the gold
continuation; `item.meta` holds what the probe varies (distance, steps, level).
All data is held out from pretraining: synthetic sequences and programs are
generated here, real code comes from the stdlib test suites (the code source's
'test' split, never trained on) and prose from the English validation split.

  nested_items      synthetic bracket sequences with letter fillers: the
                    closer of an opener `distance` items back
  closer_items      real text (code or prose): the closer of a bracket or
                    quote whose opener lies `span` characters back
  state_items       variable values through k assignments, as Python or English
  arithmetic_items  arithmetic problems for an SFT model, answered directly or
                    after a chain of thought (the gold chain teacher-forced)
"""

from __future__ import annotations

import io
import random
import tokenize
from typing import Iterable, Sequence

from gptjax.scaling.probes import ProbeItem, arith_filter
from gptjax.tasks import instructions

OPEN_TO_CLOSE = {"(": ")", "[": "]", "{": "}"}
FILLERS = "abcdefgh"
STATE_NAMES = {"code": ("a", "b", "c", "d"), "english": ("Anna", "Ben", "Cara", "Dan")}


# ----------------------------------------------------------------------------
# Long-range dependencies.


def _balanced(rng: random.Random, n: int) -> list[str]:
  """n filler items: letters and closed depth-1 groups like '[ a b ]'."""
  out: list[str] = []
  while len(out) < n:
    room = n - len(out)
    if room >= 3 and rng.random() < 0.3:
      opener = rng.choice(list(OPEN_TO_CLOSE))
      inner = [rng.choice(FILLERS) for _ in range(rng.randint(1, min(3, room - 2)))]
      out += [opener, *inner, OPEN_TO_CLOSE[opener]]
    else:
      out.append(rng.choice(FILLERS))
  return out


def nested_items(distances: Sequence[int], n: int, seed: int = 0) -> list[ProbeItem]:
  """n items per distance d: a short balanced prefix, an opener, d filler items
  (letters and closed groups), then the opener's closer as the gold
  continuation. Items are space-separated, e.g. '( a [ b ] c' -> ' )'."""
  rng = random.Random(f"nested/{seed}")
  items = []
  for d in distances:
    if d < 1:
      raise ValueError(f"nested distances must be >= 1, got {d}")
    for _ in range(n):
      opener = rng.choice(list(OPEN_TO_CLOSE))
      seq = _balanced(rng, rng.randint(2, 4)) + [opener] + _balanced(rng, d)
      context, gold = " ".join(seq), OPEN_TO_CLOSE[opener]
      items.append(ProbeItem(context, context, " " + gold, gold, "prefix", {"distance": d}))
  return items


def code_brackets(text: str) -> list[tuple[int, int]]:
  """(opener offset, closer offset) of every bracket pair in Python source,
  found with the `tokenize` module (so brackets inside strings and comments
  do not count). Unparseable source gives []."""
  line_starts = [0]
  for line in text.splitlines(keepends=True):
    line_starts.append(line_starts[-1] + len(line))
  pairs, stack = [], []
  try:
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
      if tok.type != tokenize.OP or tok.string not in "()[]{}":
        continue
      offset = line_starts[tok.start[0] - 1] + tok.start[1]
      if tok.string in OPEN_TO_CLOSE:
        stack.append((tok.string, offset))
      elif stack and OPEN_TO_CLOSE[stack[-1][0]] == tok.string:
        pairs.append((stack.pop()[1], offset))
  except (tokenize.TokenError, IndentationError, SyntaxError):
    return []
  return pairs


PROSE_PAIRS = {"(": ")", "\u201c": "\u201d"}


def prose_brackets(text: str, max_span: int = 400) -> list[tuple[int, int]]:
  """(opener, closer) offsets of parentheses and quotation marks within a
  paragraph: curly quotes pair explicitly, straight double quotes alternate."""
  pairs = []
  start = 0
  for para in text.split("\n\n"):
    stack, quote = [], None
    for i, ch in enumerate(para):
      if ch in PROSE_PAIRS:
        stack.append((ch, i))
      elif stack and PROSE_PAIRS[stack[-1][0]] == ch:
        pairs.append((start + stack.pop()[1], start + i))
      elif ch == '"':
        if quote is None:
          quote = i
        else:
          pairs.append((start + quote, start + i))
          quote = None
    start += len(para) + 2
  return [(o, c) for o, c in pairs if 0 < c - o <= max_span]


def closer_items(
  docs: Iterable[tuple[str, str]],
  kind: str,
  spans: Sequence[int],
  n: int,
  seed: int = 0,
  lead: int = 80,
) -> list[ProbeItem]:
  """Up to n items per span bin of real text: the context runs from `lead`
  characters before an opener to just before its closer; the closer is gold.

  kind: 'code' (pairs by `code_brackets`) or 'prose' (`prose_brackets`).
  spans: upper edges of the bins of opener-to-closer distance in characters
  (the lower edge is the previous one); meta records the span and the text
  between opener and closer, so a scorer can measure it in tokens.
  """
  find = {"code": code_brackets, "prose": prose_brackets}[kind]
  bins: dict[int, list[tuple[str, int, int]]] = {hi: [] for hi in spans}
  edges = list(zip([0, *spans[:-1]], spans))
  for doc_id, text in docs:
    for o, c in find(text):
      for lo, hi in edges:
        if lo < c - o <= hi and "\x00" not in text[o:c]:
          bins[hi].append((text, o, c))
  rng = random.Random(f"closers/{kind}/{seed}")
  items = []
  for _, hi in edges:
    for text, o, c in rng.sample(bins[hi], min(n, len(bins[hi]))):
      context = text[max(0, o - lead) : c]
      meta = {"span": c - o, "between": text[o + 1 : c], "bin": hi}
      items.append(ProbeItem(context, context, text[c], text[c], "prefix", meta))
  return items


# ----------------------------------------------------------------------------
# State tracking.


def state_program(rng: random.Random, steps: int, n_vars: int = 3) -> tuple[list, str, int]:
  """A straight-line program of `steps` assignments over n_vars variables, each
  `x = <digit>` or `x = y` (y already assigned). Returns (assignments as
  (target, source) with source an int or a variable index, queried variable
  index, its final value). The query is the last assignment's target when
  that is a copy, so the answer depends on more than the last line."""
  values: dict[int, int] = {}
  program = []
  for i in range(steps):
    target = rng.randrange(n_vars)
    assigned = [v for v in values if v != target]
    if assigned and (i == steps - 1 or rng.random() < 0.5):
      source = ("var", rng.choice(assigned))
      values[target] = values[source[1]]
    else:
      source = ("const", rng.randrange(10))
      values[target] = source[1]
    program.append((target, source))
  query = program[-1][0]
  return program, query, values[query]


def render_state(program, query: int, form: str) -> str:
  """The program as Python ('a = 3\\nb = a\\nassert b ==') or English ('Anna
  has 3 apples. Ben has as many apples as Anna. So Ben has')."""
  names = STATE_NAMES[form]
  lines = []
  for target, (what, v) in program:
    t = names[target]
    if form == "code":
      lines.append(f"{t} = {v if what == 'const' else names[v]}")
    elif what == "const":
      lines.append(f"{t} has {v} apples.")
    else:
      lines.append(f"{t} has as many apples as {names[v]}.")
  if form == "code":
    return "\n".join(lines) + f"\nassert {names[query]} =="
  return " ".join(lines) + f" So {names[query]} has"


def state_items(form: str, steps: Sequence[int], n: int, seed: int = 0) -> list[ProbeItem]:
  """n items per number of assignments, in `form` ('code' or 'english'); the
  gold continuation is ' <value>'. The same seed gives the same programs in
  both forms."""
  if form not in STATE_NAMES:
    raise ValueError(f"state form {form!r}; allowed: {sorted(STATE_NAMES)}")
  items = []
  for k in steps:
    rng = random.Random(f"state/{seed}/{k}")
    for _ in range(n):
      program, query, value = state_program(rng, k)
      text = render_state(program, query, form)
      items.append(ProbeItem(text, text, f" {value}", str(value), "fact", {"steps": k}))
  return items


# ----------------------------------------------------------------------------
# Multi-step reasoning after SFT.


def arithmetic_items(
  world, digits: Sequence[int], n: int, cot: bool, seed: int = 0
) -> list[ProbeItem]:
  """n held-out addition problems per operand size (digits), in the chat
  template's terms: the prompt is the user message; the log-prob context is
  the gold response up to its final answer ('57 + 30 = 87. 87 + 8 = 95. The
  answer is' with cot, 'The answer is' without), the target ' <answer>'.
  Exact match: the last number the model writes is the answer."""
  family = "arithmetic_cot" if cot else "arithmetic"
  items = []
  for d in digits:
    keep = arith_filter(d)
    pool = instructions.make_examples(world, family, 40 * n, seed, "heldout")
    chosen = [e for e in pool if keep(e)][:n]
    if len(chosen) < n:
      raise RuntimeError(f"could not draw {n} {d}-digit {family} problems")
    for e in chosen:
      cut = e.response.rfind(e.answer)
      context = e.response[:cut].rstrip()
      meta = {"digits": d, "cot": cot}
      items.append(ProbeItem(e.prompt, context, " " + e.answer, e.answer, "number", meta))
  return items
