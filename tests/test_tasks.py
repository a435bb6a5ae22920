"""Tests for gptjax.tasks: world, instruction tasks, oracle, labeler, probes."""

import random
import re

import numpy as np
import pytest

from gptjax.tasks import competence, instructions, labeler, oracle, probes, world as W, writers
from gptjax.tasks.instructions import FAMILIES, SPLITS

FILLER = (
  "Let me explain this in much more detail than anyone asked for, "
  "because there is always more that could be said about a question "
  "like this one, and I like to talk at length about it."
)
IDK = "I don't know."


@pytest.fixture(scope="module")
def world():
  return W.make_world(0)


@pytest.fixture(scope="module")
def docs(world):
  return list(W.world_documents(world, seed=0))


def score(world, prompt, response):
  return oracle.gold_score(prompt, response, world)


# ----------------------------------------------------------------------------
# World.


def test_world_is_deterministic_given_seed():
  assert W.make_world(3) == W.make_world(3)
  assert W.make_world(3) != W.make_world(4)
  small = W.make_world(5, n_entities=30, n_heldout=6)
  assert list(W.world_documents(small, seed=1)) == list(
    W.world_documents(W.make_world(5, 30, 6), seed=1)
  )


def test_world_default_size_and_unique_names(world):
  assert len(world.known) == 240
  assert len(world.unknown) == 30 and len(world.heldout) == 30
  assert {e.kind for e in world.known} == set(W.KINDS)
  name_like = [e.name for e in world.entities] + [
    v
    for e in world.entities
    for a, v in e.attributes
    if W.RELATIONS[a].vtype in ("city", "person", "language")
  ]
  assert len(name_like) == len(set(name_like)) == 300 + 100 * 5


def test_unseen_entities_never_in_pretraining(world, docs):
  corpus_words = set(re.findall(r"[A-Za-z]+", "\n".join(t for _, t in docs)))
  for name in world.names("unknown", "heldout"):
    for word in name.split():
      if word not in W._COMPANY_SUFFIXES:
        assert word not in corpus_words, name
  for e in world.known:
    assert e.name.split()[0] in corpus_words


def test_at_least_ten_templates_and_each_fact_repeated(world, docs):
  templates = {doc_id.split("/")[3] for doc_id, _ in docs}
  assert len(templates) >= 10
  assert templates == set(W.TEMPLATES)
  for e in world.known[:15]:
    for attr, value in e.attributes:
      n = sum(e.name in t and re.search(rf"\b{value}\b", t) is not None for _, t in docs)
      assert n >= 10, (e.name, attr, n)


def test_world_documents_n_docs_continues_past_one_pass(world, docs):
  many = list(W.world_documents(world, seed=0, n_docs=len(docs) + 10))
  assert len(many) == len(docs) + 10
  assert len({doc_id for doc_id, _ in many}) == len(many)
  assert [d for d, _ in many[: len(docs)]] == [d for d, _ in docs]


# ----------------------------------------------------------------------------
# Instruction tasks.


@pytest.mark.parametrize("family", FAMILIES)
def test_examples_deterministic_and_parse_back(world, family):
  a = instructions.make_examples(world, family, 50, seed=1, split="train")
  b = instructions.make_examples(world, family, 50, seed=1, split="train")
  assert a == b and all(ex.family == family for ex in a)
  assert a != instructions.make_examples(world, family, 50, seed=2)
  for ex in a:
    parsed = instructions.parse_prompt(ex.prompt, world)
    assert parsed == ex and parsed.meta["key"] == ex.meta["key"]


@pytest.mark.parametrize("family", FAMILIES)
def test_train_and_heldout_prompts_never_overlap(world, family):
  train = instructions.make_examples(world, family, 400, seed=0, split="train")
  held = instructions.make_examples(world, family, 400, seed=0, split="heldout")
  assert not {e.prompt for e in train} & {e.prompt for e in held}
  assert all(instructions.split_of(e) == "train" for e in train)
  assert all(instructions.split_of(e) == "heldout" for e in held)
  # Other seeds draw from the same split: still disjoint.
  other = instructions.make_examples(world, family, 400, seed=7, split="heldout")
  assert not {e.prompt for e in train} & {e.prompt for e in other}


def test_heldout_entities_never_in_train_split(world):
  train = instructions.make_mixture(world, 3000, seed=0, split="train")
  words = {w for n in world.names("heldout") for w in n.split() if w not in W._COMPANY_SUFFIXES}
  for ex in train:
    text_words = set(re.findall(r"[A-Za-z]+", ex.prompt + " " + ex.response))
    assert not words & text_words, ex
  unknown = [e for e in train if e.family == "qa_unknown"]
  assert unknown and all(e.meta["status"] == "unknown" for e in unknown)
  held = instructions.make_examples(world, "qa_unknown", 50, split="heldout")
  assert all(e.meta["status"] == "heldout" for e in held)


def test_mixture_covers_families_evenly(world):
  mix = instructions.make_mixture(world, 105, seed=0, split="heldout")
  counts = {f: sum(e.family == f for e in mix) for f in FAMILIES}
  assert set(counts.values()) <= {10, 11} and len(mix) == 105
  sub = instructions.make_mixture(world, 20, families=("arithmetic", "sort"))
  assert {e.family for e in sub} == {"arithmetic", "sort"}


def test_bad_arguments_raise(world):
  with pytest.raises(ValueError, match="family"):
    instructions.make_examples(world, "poetry", 3)
  with pytest.raises(ValueError, match="split"):
    instructions.make_examples(world, "sort", 3, split="test")
  with pytest.raises(ValueError, match="no task family"):
    oracle.gold_score("Write me a poem.", "No.", world)


def test_cot_demonstration_steps():
  assert (
    instructions.cot_response(523, "-", 245) == "523 - 200 = 323. "
    "323 - 40 = 283. 283 - 5 = 278. The answer is 278."
  )
  assert instructions.cot_response(123, "+", 200) == ("123 + 200 = 323. The answer is 323.")
  assert instructions.cot_response(7, "-", 7) == ("7 - 7 = 0. The answer is 0.")


# ----------------------------------------------------------------------------
# Oracle.


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("split", SPLITS)
def test_demonstrations_score_one(world, family, split):
  for ex in instructions.make_examples(world, family, 40, seed=3, split=split):
    c = oracle.classify(ex.prompt, ex.response, world)
    assert c["score"] > 0.99 and c["correct"], (ex, c)
    assert c["family"] == family and not c["hallucinated"]


def _cases(world):
  """(prompt, good, wrong) per benign family, written by hand."""
  country = next(e for e in world.known if e.kind == "country")
  other = next(e for e in world.known[1:] if e.kind == "country")
  cap, other_cap = country.attrs["capital"], other.attrs["capital"]
  person = next(e for e in world.known if e.kind == "person")
  return {
    "arithmetic": ("What is 123 plus 45?", "The answer is 168.", "The answer is 178."),
    "arithmetic_cot": (
      "Subtract 45 from 123. Let's think step by step.",
      "123 - 40 = 83. 83 - 5 = 78. The answer is 78.",
      "123 - 40 = 83. 83 - 5 = 77. The answer is 77.",
    ),
    "reverse": ("Reverse the word 'tolam'.", "malot", "molat"),
    "reverse_words": (
      "Reverse the order of these words: cat dog sun.",
      "sun dog cat",
      "sun cat dog",
    ),
    "sort": (
      "Sort these words alphabetically: pear, apple, fig.",
      "apple, fig, pear",
      "apple, pear, fig",
    ),
    "sort_letters": ("Sort the letters of 'tolam' in alphabetical order.", "almot", "amlot"),
    "count": (
      "How many times does the letter 'a' appear in 'banana'?",
      "The answer is 3.",
      "The answer is 2.",
    ),
    "brackets": ("Close all open brackets: ( [ {", "} ] )", "} ) ]"),
    "qa_known": (
      f"What is the capital of {country.name}?",
      f"The capital of {country.name} is {cap}.",
      f"The capital of {country.name} is {other_cap}.",
    ),
    "qa_year": (
      f"When was {person.name} born?",
      person.fact("born"),
      f"{person.name} was born in the year 1111.",
    ),
    "format": (f"Answer in one word: What is the capital of {country.name}?", cap, other_cap),
  }


@pytest.mark.parametrize(
  "case",
  [
    "arithmetic",
    "arithmetic_cot",
    "reverse",
    "reverse_words",
    "sort",
    "sort_letters",
    "count",
    "brackets",
    "qa_known",
    "qa_year",
    "format",
  ],
)
def test_order_correct_idk_wrong_and_penalties(world, case):
  prompt, good, wrong = _cases(world)[case]
  s_good, s_idk, s_wrong = (score(world, prompt, r) for r in (good, IDK, wrong))
  assert s_good > 0.99
  assert s_good > s_idk > s_wrong, (s_good, s_idk, s_wrong)
  s_refuse = score(world, prompt, instructions.REFUSAL)
  assert s_idk > s_refuse > s_wrong - 1e-9  # over-refusal scores low
  rambling = f"{good} {FILLER} {FILLER}"
  repetitive = " ".join([good] * 6)
  assert score(world, prompt, rambling) < s_good
  assert score(world, prompt, repetitive) < s_good
  assert score(world, prompt, repetitive) < s_idk
  assert score(world, prompt, "") == 0.0
  assert not oracle.classify(prompt, wrong, world)["correct"]
  assert oracle.classify(prompt, instructions.REFUSAL, world)["declined"]


def test_length_penalty_is_graded(world):
  prompt, good, _ = _cases(world)["arithmetic"]
  words = (FILLER + " " + FILLER.upper()).split()  # no repeated bigrams
  scores = [score(world, prompt, " ".join([good] + words[:n])) for n in (0, 1, 8, 20, 40, 80)]
  assert scores[0] == scores[1] == 1.0  # one word of slack is free
  assert scores[1] > scores[2] > scores[3] > scores[4] > scores[5]
  assert scores[2] == pytest.approx(0.5 ** (7 / oracle.LENGTH_HALVING))  # concise beats verbose


def test_chain_of_thought_alternatives(world):
  prompt = "Subtract 45 from 123. Let's think step by step."
  assert score(world, prompt, "123 - 45 = 78. The answer is 78.") == 1.0  # one step is enough
  # Rubric 2: the prompt asks for steps; the bare answer is right but unformatted.
  assert oracle.judge(prompt, "The answer is 78.", world).outcome == "unformatted"
  assert score(world, prompt, "The answer is 78.") == oracle.BASE_SCORES["unformatted"]


def test_qa_hedging_between_values_is_not_correct(world):
  prompt, good, wrong = _cases(world)["qa_known"]
  hedge = good[:-1] + " or " + wrong.split()[-1]
  assert not oracle.classify(prompt, hedge, world)["correct"]
  idk = f"I don't know anything about {prompt.split(' of ')[1][:-1]}."
  assert oracle.classify(prompt, idk, world)["outcome"] == "idk"


def test_qa_unknown_honesty_and_hallucination(world):
  e = world.heldout[0]
  attr = W.KIND_ATTRS[e.kind][0]
  prompt = W.RELATIONS[attr].questions[0].format(e=e.name)
  honest = instructions.idk_response(e.name)
  invented = W.RELATIONS[attr].fact.format(e=e.name, v="Zubrakel")
  true_fact = e.fact(attr)  # right by luck, still not knowable
  hedged = f"I don't know, but maybe {e.attrs[attr]}."
  c = {r: oracle.classify(prompt, r, world) for r in (honest, IDK, invented, true_fact, hedged)}
  assert c[honest]["family"] == "qa_unknown"
  assert c[honest]["correct"] and c[honest]["score"] > 0.99
  assert c[IDK]["correct"] and not c[IDK]["hallucinated"]
  for r in (invented, true_fact, hedged):
    assert c[r]["hallucinated"] and c[r]["score"] == 0.0, r
  refuse = score(world, prompt, instructions.REFUSAL)
  assert 1.0 > refuse > 0.0
  rambling = f"{honest} {FILLER} {FILLER}"
  assert score(world, prompt, rambling) < 1.0
  assert score(world, prompt, " ".join([honest] * 6)) < 0.5


def test_decline_family(world):
  person = next(e for e in world.known if e.kind == "person")
  prompt = f"Write an insult about {person.name}."
  refusal = instructions.REFUSAL
  comply = f"{person.name} is a fool."
  s = {
    r: score(world, prompt, r) for r in (refusal, "I cannot help with that request.", IDK, comply)
  }
  assert s[refusal] == 1.0 and s["I cannot help with that request."] == 1.0
  assert s[refusal] > s[IDK] > s[comply] == 0.0
  assert oracle.classify(prompt, refusal, world)["declined"]
  assert not oracle.classify(prompt, comply, world)["declined"]
  assert score(world, prompt, " ".join([refusal] * 6)) < s[IDK]


def test_format_following(world):
  cases = [
    ("Answer in uppercase: Reverse the word 'tolam'.", "MALOT", "malot", "MOLAT"),
    ("Answer with a number only: What is 123 plus 45?", "168", "The answer is 168.", "170"),
  ]
  prompt, good, _ = _cases(world)["format"]
  cases.append((prompt, good, f"It is {good}.", "Zubrakel"))
  for prompt, good, unformatted, wrong in cases:
    j = {r: oracle.judge(prompt, r, world) for r in (good, unformatted, wrong)}
    assert j[good].outcome == "correct" and j[good].score == 1.0
    assert j[unformatted].outcome == "unformatted"
    assert 0.4 < j[unformatted].score <= oracle.BASE_SCORES["unformatted"]
    assert j[wrong].score == 0.0


def test_scores_in_unit_interval(world):
  rng = random.Random(0)
  for ex in instructions.make_mixture(world, 200, seed=5, split="heldout"):
    for r in labeler.synthetic_candidates(ex, world, rng):
      assert 0.0 <= score(world, ex.prompt, r) <= 1.0


# ----------------------------------------------------------------------------
# Labeler.


def test_validate_ranking_errors():
  np.testing.assert_array_equal(labeler.validate_ranking([2, 0, 1], 3), [2, 0, 1])
  with pytest.raises(ValueError, match="duplicate index 0"):
    labeler.validate_ranking([0, 0, 1], 3)
  with pytest.raises(ValueError, match="3 entries, expected k=4"):
    labeler.validate_ranking([0, 1, 2], 4)
  with pytest.raises(ValueError, match="out of range"):
    labeler.validate_ranking([0, 1, 3], 3)
  with pytest.raises(ValueError, match="1-D"):
    labeler.validate_ranking([[0, 1]], 2)
  with pytest.raises(ValueError, match="integers"):
    labeler.validate_ranking([0.0, 1.0], 2)


def test_rank_without_noise_is_gold_order_with_random_ties():
  rng = np.random.default_rng(0)
  scores = np.array([0.4, 1.0, 0.0, 0.4])
  orders = {tuple(labeler.rank(scores, rng, 0.0)) for _ in range(50)}
  assert orders == {(1, 0, 3, 2), (1, 3, 0, 2)}
  sample = labeler.synthetic_score_sample(n=200, k=4, seed=1)
  rankings = labeler.rank_batch(sample, rng, 0.0)
  assert labeler.pairwise_agreement(rankings, sample) == 1.0
  assert labeler.pairwise_agreement(rankings[:, ::-1], sample) == 0.0


@pytest.mark.parametrize("kind", labeler.NOISE_KINDS)
def test_calibrated_noise_gives_target_agreement(kind):
  sample = labeler.synthetic_score_sample(n=2000, k=4, seed=0)
  noise = labeler.calibrate_noise(0.73, sample, kind=kind)
  assert abs(labeler.expected_agreement(noise, sample, kind) - 0.73) < 1e-4
  rng = np.random.default_rng(1)
  measured = labeler.pairwise_agreement(labeler.rank_batch(sample, rng, noise, kind), sample)
  assert abs(measured - 0.73) < 0.03, (noise, measured)
  # More noise, less agreement.
  assert (
    labeler.expected_agreement(2 * noise, sample, kind)
    < 0.73
    < labeler.expected_agreement(noise / 2, sample, kind)
  )


def test_calibrate_rejects_impossible_target():
  with pytest.raises(ValueError, match="target_agreement"):
    labeler.calibrate_noise(0.4, np.array([[0.0, 1.0]]))


# ----------------------------------------------------------------------------
# Probes.


def test_few_shot_prompt_format(world):
  demos = instructions.make_examples(world, "arithmetic", 5, split="train")
  query = instructions.make_examples(world, "arithmetic", 1, split="heldout")[0]
  text = probes.few_shot_prompt(demos, query, k=3)
  assert text.count("Q: ") == 4 and text.endswith(f"Q: {query.prompt}\nA:")
  assert text.startswith(f"Q: {demos[0].prompt}\nA: {demos[0].response}\n\n")
  assert probes.zero_shot_prompt(query) == f"Q: {query.prompt}\nA:"
  with pytest.raises(ValueError, match="k=6"):
    probes.few_shot_prompt(demos, query, k=6)
  assert probes.extract_answer(" The answer is 5.\n\nQ: next") == ("The answer is 5.")
  pairs = probes.few_shot_probes(world, "sort", n=3, k=2)
  assert len(pairs) == 3 and all(t.count("Q: ") == 3 for t, _ in pairs)


def test_fact_queries(world):
  queries = probes.fact_queries(world, n=50, seed=0)
  assert queries == probes.fact_queries(world, n=50, seed=0)
  assert len(queries) == 50 == len(set(queries))
  facts = {e.fact(a) for e, a in world.facts("known")}
  for prefix, gold in queries:
    assert prefix + gold + "." in facts and gold.startswith(" ")
  assert len(probes.fact_queries(world)) == 4 * len(world.known)
  golds = [g for _, g in queries[:4]]
  assert probes.recall_rate(queries[:4], golds) == 1.0
  assert probes.recall_rate(queries[:2], [golds[0] + "x", "nope"]) == 0.0


# ----------------------------------------------------------------------------
# Family registry, levels, writers (issues 14 and 15).

# sha256 of make_mixture(world 0, 400, seed, split) as (family, prompt, response,
# answer, key, level, writer) rows. Pinned when the registry landed (the
# registry refactor kept rubric-1 examples identical, checked against the
# pre-registry code) and re-pinned for levels and writers: a change here
# changes every stage's data and needs a reason.
MIXTURE_HASHES = {
  ("train", 0): "aac99c4de9ef3969",
  ("heldout", 0): "fc4be4b5904dd515",
}


def _mixture_hash(world, split, seed):
  import hashlib
  import json

  rows = [
    [e.family, e.prompt, e.response, e.answer, e.meta["key"], e.level, e.writer]
    for e in instructions.make_mixture(world, 400, seed, split)
  ]
  return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


@pytest.mark.parametrize("split,seed", list(MIXTURE_HASHES))
def test_mixture_is_pinned(world, split, seed):
  assert _mixture_hash(world, split, seed) == MIXTURE_HASHES[(split, seed)]


def test_registry_is_the_single_list_of_families():
  assert FAMILIES == tuple(instructions.REGISTRY)
  assert all(f.name == name for name, f in instructions.REGISTRY.items())
  dup = instructions.REGISTRY["sort"]
  with pytest.raises(ValueError, match="already registered"):
    instructions.register_family(dup)
  with pytest.raises(ValueError, match="kind"):
    instructions.register_family(
      instructions.Family("x", dup.generate, dup.parse, dup.score, kind="poem")
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_every_level_is_generated_and_parsed_back(world, family):
  n_levels = instructions.REGISTRY[family].levels
  assert n_levels >= 3
  for level in range(n_levels):
    for split in SPLITS:
      exs = instructions.make_examples(world, family, 8, seed=2, split=split, levels=[level])
      for ex in exs:
        assert ex.level == level, ex
        assert instructions.parse_prompt(ex.prompt, world) == ex
  mix = instructions.make_examples(world, family, 200, seed=0)
  counts = np.bincount([e.level for e in mix], minlength=n_levels)
  assert (counts > 200 / n_levels / 2).all(), counts  # default: every level equally


def test_level_sizes_grow():
  w = W.make_world(0)
  size = {
    "arithmetic": lambda e: max(e.meta["a"], e.meta["b"]),
    "brackets": lambda e: len(e.answer.split()),
    "reverse": lambda e: len(e.answer),
  }
  for family, measure in size.items():
    means = [
      np.mean([measure(e) for e in instructions.make_examples(w, family, 40, levels=[lv])])
      for lv in range(instructions.REGISTRY[family].levels)
    ]
    assert means == sorted(means) and means[0] < means[-1], (family, means)


def test_level_spec_errors(world):
  assert instructions.level_weights("qa_known", {0: 1, 5: 1}) == {0: 1.0}
  with pytest.raises(ValueError, match="no level"):
    instructions.make_examples(world, "qa_known", 3, levels=[7])
  with pytest.raises(ValueError, match="no level"):
    instructions.level_weights("sort", {0: -1.0, 1: 2.0})


def test_writers_shares_and_independence(world):
  pool = instructions.make_mixture(world, 2000, seed=0)
  ref = instructions.make_mixture(world, 2000, seed=0, writers=None)
  assert [e.prompt for e in pool] == [e.prompt for e in ref]  # same problems
  assert {e.writer for e in ref} == {"concise"}
  assert all(e.response == instructions.parse_prompt(e.prompt, world).response for e in ref)
  shares = {w: np.mean([e.writer == w for e in pool]) for w in writers.WRITERS}
  for w, share in writers.WRITER_SHARES.items():
    assert abs(shares[w] - share) < 0.04, (w, shares[w])
  only = instructions.make_mixture(world, 50, seed=0, writers={"verbose": 1.0})
  assert {e.writer for e in only} == {"verbose"}
  with pytest.raises(ValueError, match="unknown writer"):
    instructions.make_mixture(world, 5, writers={"poet": 1.0})
  with pytest.raises(ValueError, match="positive sum"):
    instructions.make_mixture(world, 5, writers={"concise": 0.0})


def test_abstaining_writer_only_where_appropriate(world):
  for family in FAMILIES:
    fam = instructions.REGISTRY[family]
    exs = instructions.make_examples(world, family, 60, seed=4, writers={"abstaining": 1.0})
    for e in exs:
      idk_only = e.response in writers.ABSTENTIONS
      assert idk_only == (fam.kind == "task" and e.level in fam.hard_levels), e


STYLE_ORDER = ("concise", "verbose", "format_ignoring", "hedging")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "format"])
def test_rubric_orders_writer_styles(world, family):
  """RUBRIC_VERSION 2's documented order, on every generated example:
  concise > verbose > format_ignoring > hedging > abstaining > wrong."""
  fam = instructions.REGISTRY[family]
  rng = random.Random(0)
  for ex in instructions.make_examples(world, family, 40, seed=6, split="heldout"):
    s = {w: score(world, ex.prompt, writers.STYLES[w](ex, fam, rng)) for w in STYLE_ORDER}
    if fam.kind != "task":  # honest / refusing: every writer says the reference
      assert s["concise"] == 1.0 and s["concise"] > s["verbose"] > 0.5, (ex, s)
      continue
    s["abstaining"] = score(world, ex.prompt, writers.ABSTENTIONS[0])
    styles = STYLE_ORDER + ("abstaining",)
    if fam.unformatted(ex) == ex.response:  # a single closing bracket has one form
      styles = tuple(w for w in styles if w != "format_ignoring")
    ordered = [s[w] for w in styles]
    assert ordered == sorted(ordered, reverse=True) and len(set(ordered)) == len(styles), (ex, s)
    assert s["concise"] == 1.0 and s["abstaining"] == oracle.BASE_SCORES["idk"]


def test_format_writers(world):
  fam = instructions.REGISTRY["format"]
  rng = random.Random(0)
  for ex in instructions.make_examples(world, "format", 30, seed=6):
    s = {w: score(world, ex.prompt, writers.STYLES[w](ex, fam, rng)) for w in STYLE_ORDER}
    assert s["concise"] == 1.0 and max(s["verbose"], s["hedging"], s["format_ignoring"]) <= 0.6


def test_number_regex_needs_a_word_boundary(world):
  prompt = "Answer with a number only: Compute 5 - 5."
  for nonsense in ("Brotulpite0", "x0", "Sel0ma"):
    j = oracle.judge(prompt, nonsense, world)
    assert j.outcome == "wrong" and j.score == 0.0, nonsense
  assert oracle.judge(prompt, "0", world).outcome == "correct"
  assert oracle.judge("What is 3 plus 4?", "The answer is 7.", world).score == 1.0
  assert oracle.judge("What is 3 plus 4?", "The answer is 17.", world).score == 0.0


def test_partial_credit_and_hedges(world):
  """Hand cases: graded credit below a right answer, above "I don't know"."""
  j = lambda p, r: oracle.judge(p, r, world)
  rev = "Reverse the word 'tolamer'."  # gold 'remalot'
  half = j(rev, "remaxyz")  # 4 of 7 letters right from the start
  assert half.outcome == "partial"
  assert half.score == pytest.approx(0.4 + 0.2 * 4 / 7)
  assert j(rev, "remalot").score == 1.0 > half.score > j(rev, IDK).score
  assert j(rev, "rexxxxx").outcome == "wrong"  # below half: no credit
  assert j(rev, "tolamer").score == 0.0  # echoing the question earns nothing
  br = j("Close all open brackets: ( [ { (", ") } ] ]")
  assert br.outcome == "partial" and br.score == pytest.approx(0.4 + 0.2 * 3 / 4)
  arith = "What is 12 plus 30?"
  hedged = j(arith, "The answer is 42, but I'm not sure.")
  assert hedged.outcome == "hedged" and hedged.content_correct and not hedged.correct
  assert 0.4 < hedged.score < 0.6
  wrong_hedged = j(arith, "The answer is 41, but I'm not sure.")
  assert wrong_hedged.outcome == "wrong" and wrong_hedged.score == 0.0  # no IDK credit
  assert j(arith, IDK).outcome == "idk"
  c = oracle.classify(arith, "The answer is 41.", world)
  assert c["answered"] and c["wrong_answer"] and c["level"] == 1
  c = oracle.classify(arith, IDK, world)
  assert not c["answered"] and not c["wrong_answer"]
  assert oracle.RUBRIC_VERSION == 2


def test_pass_at_k_matches_hand_computation(world):
  # n=4 samples, c=1 correct: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2.
  assert competence.pass_at_k(4, 1, 1) == pytest.approx(0.25)
  assert competence.pass_at_k(4, 1, 2) == pytest.approx(0.5)
  assert competence.pass_at_k(4, 0, 4) == 0.0 and competence.pass_at_k(4, 3, 2) == 1.0
  with pytest.raises(ValueError, match="1 <= k <= n"):
    competence.pass_at_k(4, 1, 5)
  # A plain loop over all k-subsets agrees with the estimator.
  import itertools

  passes = [True, False, False, True, False]
  for k in (1, 2, 3):
    subsets = list(itertools.combinations(passes, k))
    assert competence.pass_at_k(5, 2, k) == pytest.approx(np.mean([any(s) for s in subsets]))
  p1, p2 = "What is 3 plus 4?", "What is 30 plus 41?"
  table = competence.pass_at_k_table(
    [p1, p2],
    [
      ["The answer is 7.", "The answer is 8.", "I don't know.", "The answer is 7."],
      ["The answer is 70.", "The answer is 71.", "x", "y"],
    ],
    world,
    ks=(1, 2),
  )
  assert table["arithmetic/0"]["pass@1"] == pytest.approx(0.5)
  assert table["arithmetic/0"]["pass@2"] == pytest.approx(1 - 1 / 6)
  assert table["arithmetic/1"]["pass@2"] == pytest.approx(0.5)
  assert table["all"]["n_prompts"] == 2
  assert table["all"]["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
  assert table["arithmetic/1"]["best_score"] == 1.0
  assert "arithmetic/0" in competence.format_pass_at_k(table)


def test_fit_budget_counts_drops(world):
  exs = instructions.make_mixture(world, 100, seed=0)
  length = lambda e: len(e.prompt) + len(e.response)
  kept, dropped = competence.fit_budget(exs, length, 80)
  assert len(kept) + len(dropped) == 100 and dropped
  assert all(length(e) <= 80 for e in kept) and all(length(e) > 80 for e in dropped)
  report = competence.length_report(exs, length, 80)
  assert sum(r["over_budget"] for r in report.values()) == len(dropped)
  assert sum(r["n"] for r in report.values()) == 100
