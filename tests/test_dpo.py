"""DPO (gptjax.rlhf.dpo): the loss against plain loops, masking, the identity at
initialisation, the gradient's direction; one slow end-to-end run on a tiny
SFT model with its comparisons and reward model."""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from gptjax import heads, model as model_lib, runs
from gptjax.rlhf import dpo

ASSISTANT = 6  # the tokenizer's <|assistant|> id
PAD = 0


def _log_sigmoid(x):
  return -math.log1p(math.exp(-x))


def _loop_loss(logp, ref, rank, beta, loss="sigmoid", eps=0.0):
  """Plain Python: every ordered pair (w, l) with rank[w] < rank[l], ties skipped."""
  total = pairs = correct = 0.0
  for b in range(len(rank)):
    for w, l in itertools.permutations(range(len(rank[b])), 2):
      if not rank[b][w] < rank[b][l]:
        continue
      h = (logp[b][w] - ref[b][w]) - (logp[b][l] - ref[b][l])
      if loss == "sigmoid":
        total += -(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h)
      else:
        total += (h - 1 / (2 * beta)) ** 2
      pairs += 1
      correct += h > 0
  return total, pairs, correct


@pytest.mark.parametrize("loss,eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0)])
def test_loss_matches_a_loop_over_pairs_with_a_tie(loss, eps):
  rng = np.random.default_rng(0)
  logp = rng.normal(-20, 3, (2, 3))
  ref = rng.normal(-20, 3, (2, 3))
  rank = np.array([[0, 1, 1], [2, 0, 1]])  # prompt 0: responses 1 and 2 tied
  total, weight, m = dpo.dpo_loss(
    jnp.asarray(logp), jnp.asarray(ref), dpo.preference_pairs(rank), 0.1, loss, eps
  )
  want_total, want_pairs, want_correct = _loop_loss(logp, ref, rank, 0.1, loss, eps)
  assert float(weight) == want_pairs == 2 + 3  # C(3,2) = 3 pairs, less the tie
  assert float(total) == pytest.approx(want_total, rel=1e-5)
  assert float(m["reward_accuracy"]) == want_correct


def test_ranks_and_pairs():
  ranking = np.array([[2, 0, 1]])  # response 2 best, then 0, then 1
  np.testing.assert_array_equal(dpo.ranks_of(ranking), [[1, 2, 0]])
  prefer = np.asarray(dpo.preference_pairs([[1, 2, 0]]))[0]
  np.testing.assert_array_equal(prefer, [[0, 1, 0], [0, 0, 0], [1, 1, 0]])


def test_response_mask_skips_prompt_and_padding_also_when_cut():
  # <s> <|user|> 9 9 <|end_turn|> <|assistant|> 11 12 <|end_turn|> pad pad
  row = np.array([1, 5, 9, 9, 7, ASSISTANT, 11, 12, 7, PAD, PAD])
  cut = np.array([9, 7, ASSISTANT, 11, 7, PAD, PAD, PAD, PAD, PAD, PAD])  # prompt cut left
  tokens = np.stack([row, cut])
  mask = tokens != PAD
  got = dpo.response_mask(tokens, mask, ASSISTANT)
  np.testing.assert_array_equal(np.flatnonzero(got[0]), [6, 7, 8])
  np.testing.assert_array_equal(np.flatnonzero(got[1]), [3, 4])
  with pytest.raises(ValueError, match="assistant"):
    dpo.response_mask(np.array([[1, 2, 3]]), np.ones((1, 3), bool), ASSISTANT)


# ---------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def lm():
  cfg = model_lib.TransformerConfig(
    vocab_size=32, max_len=16, n_layer=1, n_head=2, d_model=16, d_ff=32
  )
  model = model_lib.Transformer(cfg)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32))["params"]
  import flax.linen as nn

  return model, nn.meta.unbox(params)


def _batch(model, params, seed=0, B=2, K=3, T=12):
  """Random chat rows: a prompt of 4 tokens ending in <|assistant|>, a response of
  2..6 tokens, right padding; ranks with a tie in prompt 0."""
  rng = np.random.default_rng(seed)
  tokens = np.full((B, K, T), PAD, np.int32)
  for b, k in itertools.product(range(B), range(K)):
    n = rng.integers(2, 7)
    tokens[b, k, :4] = [1, *rng.integers(10, 32, 2), ASSISTANT]
    tokens[b, k, 4 : 4 + n] = rng.integers(10, 32, n)
  mask = tokens != PAD
  arrays = {
    "tokens": tokens,
    "token_mask": mask,
    "response_mask": dpo.response_mask(tokens, mask, ASSISTANT),
    "rank": np.array([[0, 1, 1], [1, 2, 0]])[:B],
  }
  ref = dpo.logprobs_of(model, params, tokens, mask, arrays["response_mask"], batch=4)
  return dpo.with_reference(arrays, ref)


def _jitted_loss(model, beta=0.1):
  """(params, batch) -> the loss's (total, weight, metrics) in evaluation mode, jitted."""
  loss_fn = dpo.dpo_loss_fn(model, beta)
  return jax.jit(lambda p, b: loss_fn(p, b, None, False))


def test_sequence_logprobs_match_a_loop(lm):
  model, params = lm
  batch = _batch(model, params)
  tokens = batch["tokens"].reshape(-1, 12)
  logits = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(tokens)))
  rmask = batch["response_mask"].reshape(-1, 12)
  want = []
  for row, lg, m in zip(tokens, logits, rmask):
    logsm = scipy.special.log_softmax(lg.astype(np.float64), axis=-1)
    want.append(sum(logsm[t - 1, row[t]] for t in range(1, 12) if m[t]))
  got = dpo.sequence_logprobs(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(rmask))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  np.testing.assert_allclose(batch["ref_logp"].ravel(), want, rtol=1e-5)


def test_at_initialisation_loss_is_log2_and_margin_zero(lm):
  model, params = lm
  batch = _batch(model, params)
  fn = _jitted_loss(model)
  total, weight, m = fn(params, batch)
  assert float(weight) == 2 + 3
  assert float(total / weight) == pytest.approx(math.log(2), abs=1e-5)
  assert float(m["reward_margin"]) == pytest.approx(0.0, abs=1e-5)


def test_prompt_and_padding_do_not_enter_the_loss(lm):
  """Changing what a padding token is, or which tokens a masked prompt position
  scores, leaves the loss unchanged; changing a response token changes it."""
  model, params = lm
  batch = _batch(model, params)
  fn = _jitted_loss(model)
  perturbed = {**batch, "ref_logp": batch["ref_logp"] + np.linspace(-1, 1, 6).reshape(2, 3)}
  base = float(fn(params, perturbed)[0])
  padded = dict(perturbed, tokens=np.where(batch["token_mask"], batch["tokens"], 17))
  assert float(fn(params, padded)[0]) == pytest.approx(base, rel=1e-6)
  # logits are causal: the response's log-probs depend on the prompt, but the
  # prompt's own log-probs must not count. Check it at the logits level:
  logits = jax.random.normal(jax.random.PRNGKey(1), (1, 12, 32))
  tokens = jnp.asarray(batch["tokens"][0, :1])
  rmask = jnp.asarray(batch["response_mask"][0, :1], jnp.float32)
  noisy = logits.at[:, :3].add(5.0 * jax.random.normal(jax.random.PRNGKey(2), (1, 3, 32)))
  np.testing.assert_allclose(
    dpo.sequence_logprobs(noisy, tokens, rmask), dpo.sequence_logprobs(logits, tokens, rmask)
  )
  changed = dict(perturbed, tokens=batch["tokens"].copy())
  changed["tokens"][0, 0, 5] = (changed["tokens"][0, 0, 5] + 1 - 10) % 22 + 10  # a response token
  assert float(fn(params, changed)[0]) != pytest.approx(base, rel=1e-6)


def test_gradient_raises_the_winner_and_lowers_the_loser(lm):
  # In log-prob space: d loss / d logp is negative for winners, positive for losers.
  logp = jnp.array([[-5.0, -6.0, -7.0]])
  prefer = dpo.preference_pairs([[0, 1, 2]])
  g = jax.grad(lambda lp: dpo.dpo_loss(lp, jnp.zeros_like(lp), prefer, 0.1)[0])(logp)
  assert g[0, 0] < 0 < g[0, 2]
  # Through the model: a small gradient step widens the implicit reward margin.
  model, params = lm
  batch = _batch(model, params)
  fn = _jitted_loss(model)
  grads = jax.jit(jax.grad(lambda p: fn(p, batch)[0]))(params)
  stepped = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params, grads)
  before, after = (float(fn(p, batch)[2]["reward_margin"]) for p in (params, stepped))
  assert after > before + 1e-4
  lp = dpo.logprobs_of(model, stepped, *(batch[k] for k in dpo._ROW_KEYS), batch=4)
  r = lp - batch["ref_logp"]
  assert r[1, 2] > 0 > r[1, 1]  # prompt 1's best response rose, its worst fell


def test_logprobs_of_packs_rows_and_equals_each_row_alone(lm):
  """logprobs_of packs the rows, several to a packed row, and each sum equals
  `sequence_logprobs` of that row alone; one compilation for ragged batches."""
  model, params = lm
  batch = _batch(model, params)
  widen = lambda x: np.pad(x, ((0, 0), (0, 0), (0, 4)))  # stored as wide as the context
  tokens, mask, resp = (widen(batch[k]) for k in dpo._ROW_KEYS)  # [B, K, 16]
  before = dpo._token_logprobs_jit._cache_size()
  got = dpo.logprobs_of(model, params, tokens, mask, resp, batch=1)  # R batches of one row
  assert dpo._token_logprobs_jit._cache_size() - before == 1
  T = tokens.shape[-1]
  packed_rows = len(heads.pack_rows(tokens.reshape(-1, T), mask.reshape(-1, T), T)["tokens"])
  assert packed_rows < mask.size // T  # several rows to a packed row
  for b, k in itertools.product(*map(range, tokens.shape[:2])):
    row = lambda x: jnp.asarray(x[b, k : k + 1])
    logits = model.apply({"params": params}, row(tokens), None, row(mask))
    alone = dpo.sequence_logprobs(logits, row(tokens), row(resp).astype(jnp.float32))[0]
    np.testing.assert_allclose(got[b, k], alone, rtol=1e-5, atol=1e-5)


def test_invalid_loss_name():
  with pytest.raises(ValueError, match="dpo.loss"):
    dpo.dpo_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), dpo.preference_pairs([[0, 1]]), 0.1, "kto")


def test_config_presets_validate():
  from configs import dpo as dpo_configs

  for preset in ("tiny", "small", "base"):
    dpo.validate(dpo_configs.get_config(preset))
  bad = dpo_configs.get_config("tiny")
  bad.dpo.beta = 0.0
  with pytest.raises(ValueError, match="dpo.beta"):
    dpo.validate(bad)


# ---------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_dpo_and_best_of_n_end_to_end(sft_run, reward_model_run, tmp_path):
  """SFT -> comparisons + RM (the session's small one) -> DPO and best-of-n from
  the command line: DPO's workdir loads like an SFT run and both write eval.json."""
  from tests.conftest import run_entry_point

  sft, rm = str(sft_run["sft"]), str(reward_model_run)
  out = str(tmp_path / "dpo")
  proc = run_entry_point(
    "experiments.dpo",
    "--config=configs/dpo.py:tiny",
    f"--sft={sft}",
    f"--reward_model={rm}",
    f"--workdir={out}",
    "--config.eval.n_per_family=2",
    "--config.eval.kl_samples=2",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "eval.json")) as f:
    result = json.load(f)
  b = result["bootstrap_vs_sft"]
  assert b["wins"] + b["ties"] + b["losses"] == b["n"]
  assert b["win_rate_ci95"][0] <= b["win_rate"] <= b["win_rate_ci95"][1]
  assert result["sampled"]["kl_to_sft"] > -1.0  # an estimate of a KL: not far below 0
  assert 0.0 <= result["implicit_reward"]["accuracy_vs_labeler"] <= 1.0
  loaded = runs.load_run(out)
  assert loaded.step == result["steps"] > 0
  sft_gold = result["gold_mean"]["sft"]
  bon = str(tmp_path / "best_of_n")
  proc = run_entry_point(
    "experiments.best_of_n",
    "--config=configs/best_of_n.py:tiny",
    f"--sft={sft}",
    f"--reward_model={rm}",
    f"--workdir={bon}",
    "--config.eval.n_per_family=2",
    "--config.best_of_n.ns=(1,2,4)",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(bon, "eval.json")) as f:
    result = json.load(f)
  oracle4, rm4 = result["oracle"]["4"], result["reward_model"]["4"]
  assert oracle4["gold_mean"]["best_of_4"] >= rm4["gold_mean"]["best_of_4"] - 1e-9
  assert result["reward_model"]["1"]["kl_bound"] == 0.0
  # the same greedy SFT answers to the same prompts (DPO's reference survived training)
  assert oracle4["gold_mean"]["sft"] == pytest.approx(sft_gold)


def test_logprobs_batches_keep_the_logits_within_their_budget():
  assert dpo.logprobs_batch(256, 49_152) == 5  # SmolLM2: 5 x 256 x 49,152 x 4 bytes = 240 MiB
  assert dpo.logprobs_batch(160, 512) == 64  # tiny: the cap
  assert dpo.logprobs_batch(100_000, 200_000) == 1
  for T, V in ((256, 49_152), (256, 8192), (64, 32_768)):
    rows = dpo.logprobs_batch(T, V)
    assert rows * T * V * 4 <= dpo.LOGITS_BUDGET < (rows + 1) * T * V * 4 or rows == 64
