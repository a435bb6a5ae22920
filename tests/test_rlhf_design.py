"""Issue 15's design pieces: the labeler's ties, disjoint prompts, early
stopping, the hard KL stop and the evaluation's per-family metrics."""

import dataclasses
import types

import numpy as np
import pytest

from configs import reward_model as reward_model_configs
from gptjax import evaluation, train
from gptjax.pipeline import report
from gptjax.reward_model import training as rm_training
from gptjax.rlhf import loop as rlhf_loop, ppo_math
from gptjax.tasks import instructions, labeler, world as world_lib

# ---------------------------------------------------------------- the labeler


def test_label_ties_equal_gold_and_is_a_weak_order():
  rng = np.random.default_rng(0)
  scores = np.array([0.0, 1.0, 0.0, 0.4, 1.0, 0.4])
  for _ in range(50):
    rank = labeler.label(scores, rng, noise=0.5, tie_margin=0.1)
    assert rank[0] == rank[2] and rank[1] == rank[4] and rank[3] == rank[5]
    assert sorted(set(rank.tolist())) == list(range(len(set(rank.tolist()))))  # dense
  np.testing.assert_array_equal(labeler.label(scores, rng, 0.0), [2, 0, 2, 1, 0, 1])


@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_tie_calibration_keeps_agreement_on_ordered_pairs(margin):
  rng = np.random.default_rng(1)
  gold = rng.choice([0.0, 0.0, 0.4, 0.6, 0.8, 1.0], size=(6000, 4))
  noise = labeler.calibrate_noise(0.73, gold, tie_margin=margin)
  rank = labeler.label_batch(gold, np.random.default_rng(2), noise, margin)
  st = labeler.tie_statistics(rank, gold)
  assert st["agreement"] == pytest.approx(0.73, abs=0.015)
  assert st["tied_gold_equal"] == 1.0
  assert (st["tied_gold_differs"] > 0.02) == (margin > 0)


def test_ranking_of_is_consistent_with_ranks():
  rank = np.array([[1, 0, 1, 2], [0, 0, 0, 0]])
  ranking = labeler.ranking_of(rank, np.random.default_rng(0))
  for r, perm in zip(rank, ranking):
    assert sorted(perm.tolist()) == [0, 1, 2, 3]
    assert list(r[perm]) == sorted(r)  # best first, ties adjacent


# ---------------------------------------------------------------- prompts


def test_rm_and_ppo_prompts_are_disjoint():
  world = world_lib.make_world(0)
  rm = {e.prompt for e in rm_training.examples_for(world, 300, 0, "train", "rm")}
  rl = {e.prompt for e in rm_training.examples_for(world, 300, 5, "train", "rl")}
  assert rm and rl and not rm & rl
  assert all(rm_training.prompt_part(p) == "rm" for p in rm)
  families = ("sort", "decline")  # the SFT run's families: PPO asks only those
  models = types.SimpleNamespace(world=world, tokenizer=_FakeTokenizer(), families=families)
  config = types.SimpleNamespace(ppo=types.SimpleNamespace(rollout_batch=32, seed=0))
  _, prompts = rlhf_loop.prompts_for(config, models, iteration=3)
  assert len(prompts) == 32 and all(rm_training.prompt_part(p) == "rl" for p in prompts)
  assert {instructions.parse_prompt(p, world).family for p in prompts} == set(families)


class _FakeTokenizer:
  def encode_chat(self, messages, add_generation_prompt=False):
    return [len(m["content"]) for m in messages]


def test_split_validation_and_best_step():
  world = world_lib.make_world(0)
  examples = rm_training.examples_for(world, 20, 0, "train")
  assert len(examples) == 20
  records = [
    {"step": 20, "validation/accuracy": 0.6},
    {"step": 40, "validation/accuracy": 0.7},
    {"step": 60, "validation/accuracy": 0.7},  # a tie: the earlier step
    {"step": 80, "train/loss": 1.0},
  ]
  assert rm_training.best_step(records) == (40, 0.7)
  assert rm_training.best_step([{"step": 1}]) is None


def test_patience_counts_evaluations_after_the_best():
  acc = lambda *values: [
    {"step": 10 * (i + 1), "validation/accuracy": v} for i, v in enumerate(values)
  ]
  spent = rm_training.patience_spent
  assert not spent(acc(0.6, 0.5), 2)  # one evaluation after the best (step 10)
  assert spent(acc(0.6, 0.5, 0.6), 2)  # a tie is no improvement: two after step 10
  assert not spent(acc(0.6, 0.5, 0.7), 2)  # step 30 is the new best
  assert spent(acc(0.6, 0.5, 0.7, 0.6, 0.65), 2)
  assert not spent(acc(0.6, 0.5, 0.5, 0.5), 0)  # patience 0: never
  assert not spent([{"step": 10}, {"step": 20}], 1)  # no accuracy recorded: no best
  # the report says when training ended early, and not otherwise
  assert report._trained_of({"steps": 150, "planned_steps": 296}) == (
    " trained (rm.patience ended it; 296 planned)"
  )
  assert report._trained_of({"steps": 296, "planned_steps": 296}) == ""
  assert report._trained_of({"steps": 296}) == ""  # eval.json before rm.patience


def test_rm_patience_must_be_a_non_negative_integer():
  config = reward_model_configs.get_config("tiny")
  config.rm.patience = -1
  with pytest.raises(ValueError, match=r"config.rm.patience=-1 is invalid"):
    rm_training.validate(config)


# ---------------------------------------------------------------- hard KL stop


def test_hard_kl_stop_ends_iterating(monkeypatch, tmp_path):
  p = types.SimpleNamespace(
    rounds=1,
    iterations=6,
    rollout_batch=4,
    ptx_coef=0.0,
    clip_eps=0.2,
    value_clip_eps=0.2,
    kl_target=2.0,
    kl_stop=1.5,
    get=lambda k, d=None: {"kl_stop": 1.5}.get(k, d),
  )
  config = types.SimpleNamespace(ppo=p, train=types.SimpleNamespace(log_every=100))
  kls = iter([1.0, 2.5, 3.1, 0.5])  # 3.1 > 1.5 x 2.0: stop before updating
  calls = []

  def fake_iteration(config, models, state, it, beta, policy_step, value_step, ptx):
    kl = next(kls)
    calls.append(it)
    if kl > rlhf_loop.kl_limit(config.ppo):
      return {"stopped": True, "kl": kl}
    state["within"] = state["policy"].params  # as `iteration` keeps it, then updates
    state["policy"] = dataclasses.replace(state["policy"], params=f"after {it + 1} updates")
    keys = ("rm_score", "gold_score", "entropy", "clip_frac", "explained_variance")
    keys += ("generate_s", "rollout_s", "update_s")
    return {"kl": kl, "beta": beta, "response_length": 1.0, "rollout_tokens_per_s": 1.0} | {
      k: 0.0 for k in keys
    }

  monkeypatch.setattr(rlhf_loop, "iteration", fake_iteration)
  written = []
  fake_loop = types.SimpleNamespace(
    writer=types.SimpleNamespace(write=lambda step, split, **kw: written.append((step, split)))
  )
  models = types.SimpleNamespace(policy=None, value=None)
  sft = train.TrainState(step=0, params="after 0 updates", opt_state=None, rng=None)
  box = {"state": {"policy": sft, "within": sft.params}, "stopped_at": None}
  ctl = ppo_math.kl_controller("adaptive", 0.1, p.kl_target, 100)
  body = rlhf_loop._ppo_body(
    config, models, box, ctl, None, None, fake_loop, 0, str(tmp_path), print
  )
  for it in range(p.iterations):
    body(it)
  assert box["stopped_at"] == 2 and calls == [0, 1, 2]  # nothing after the stop
  # iteration 2's rollout (the policy after 2 updates) crossed the limit: the
  # final policy is the one before that update, whose rollout (KL 2.5) was within
  assert box["state"]["policy"].params == "after 1 updates"
  assert (3, "ppo_stop") in written and sum(s == "ppo" for _, s in written) == 2
  assert rlhf_loop.kl_limit(types.SimpleNamespace(kl_target=2.0, get=lambda k, d: 0)) == float(
    "inf"
  )


# ---------------------------------------------------------------- evaluation


def _j(family, answered, content_correct, correct, wrong, score=0.0, **kw):
  return dict(
    family=family,
    answered=answered,
    content_correct=content_correct,
    correct=correct,
    wrong_answer=wrong,
    score=score,
    hallucinated=kw.get("hallucinated", False),
    declined=kw.get("declined", False),
    truncated=kw.get("truncated", False),
  )


def test_family_metrics_on_hand_made_judgements():
  js = [
    _j("arithmetic", True, True, True, False, 1.0),  # right
    _j("arithmetic", True, True, False, False, 0.6),  # right content, unformatted
    _j("arithmetic", True, False, False, True, 0.0, truncated=True),  # wrong
    _j("arithmetic", False, False, False, False, 0.4),  # "I don't know"
  ]
  m = evaluation.family_metrics(js)
  assert m["n"] == 4 and m["score"] == pytest.approx(0.5)
  assert m["correct"] == 0.25 and m["answer_rate"] == 0.75
  assert m["accuracy_when_answering"] == pytest.approx(2 / 3)
  assert m["hallucination_rate"] == 0.25 and m["truncation_rate"] == 0.25
  none = evaluation.family_metrics([_j("sort", False, False, False, False)])
  assert np.isnan(none["accuracy_when_answering"]) and none["answer_rate"] == 0.0
  s = evaluation.summarize(js + [_j("qa_unknown", True, False, False, True, hallucinated=True)])
  assert s["families"]["qa_unknown"]["hallucination_rate"] == 1.0
  assert s["hallucination_rate"] == 1.0 and s["correct_rate"] == pytest.approx(0.2)


# ---------------------------------------------------------------- seeds and context


def test_pipeline_seed_moves_every_stage_seed():
  from configs import pipeline as pipeline_configs

  c0 = pipeline_configs.get_config("tiny").to_dict()
  c = pipeline_configs.get_config("tiny")
  c.seed = 3
  c1 = c.to_dict()
  assert c1["pretrain"]["data"]["world_seed"] == c0["pretrain"]["data"]["world_seed"] + 3
  for path in (
    ("pretrain", "seed"),
    ("sft", "sft", "demo_seed"),
    ("reward_model", "comparisons", "seed"),
    ("rlhf", "ppo", "seed"),
    ("dpo", "seed"),
    ("best_of_n", "best_of_n", "seed"),
  ):
    get = lambda d: __import__("functools").reduce(lambda x, k: x[k], path, d)
    assert get(c1) == get(c0) + 3000, path
  evals = {c1[s]["eval"]["seed"] for s in ("sft", "sft_curated", "rlhf", "dpo", "best_of_n")}
  assert len(evals) == 1  # every method answers the same held-out prompts
  assert c1["sft_curated"]["sft"]["writers"] == "curated"


def test_tiny_world_context_fits_every_default_demonstration():
  from configs import pretrain as pretrain_configs, sft as sft_configs

  c = pretrain_configs.get_config("tiny+world")
  plain = pretrain_configs.get_config("tiny")
  assert plain.model.max_len == 64  # only the world presets (the RLHF recipe) grow
  # Measured with the tiny tokenizer (vocab 512): prompts <= 95 tokens,
  # whole conversations <= 119 (see configs/pretrain.py).
  assert c.model.max_len - sft_configs.MAX_NEW_TOKENS["tiny"] >= 95
  assert c.model.max_len + 1 >= 119
