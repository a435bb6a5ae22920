"""The RLHF mathematics against independent computations (plain Python loops)."""

import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from gptjax import heads, losses, model as model_lib
from gptjax.reward_model import comparisons as comp_lib, training as rm_training
from gptjax.rlhf import overoptimization, ppo_math, stats as rlhf_stats


def log_sigmoid(x):
  return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------- ranking loss


@pytest.mark.parametrize(
  "rewards,ranking",
  [
    ([1.0, 0.5, -0.2], [0, 1, 2]),
    ([0.3, -1.0, 2.0], [2, 0, 1]),
    ([0.1, 0.4, -0.3, 0.9], [3, 1, 0, 2]),
    ([2.0, -2.0, 0.0, 1.0], [1, 2, 3, 0]),
  ],
)
def test_ranking_loss_equals_hand_computation(rewards, ranking):
  K = len(rewards)
  pairs = [(ranking[i], ranking[j]) for i in range(K) for j in range(i + 1, K)]
  expected = -sum(log_sigmoid(rewards[b] - rewards[w]) for b, w in pairs) / math.comb(K, 2)
  expected_acc = sum(rewards[b] > rewards[w] for b, w in pairs) / math.comb(K, 2)
  total, weight, extra = losses.ranking_loss(jnp.array([rewards]), jnp.array([ranking]))
  assert float(total) == pytest.approx(expected, rel=1e-5)
  assert float(weight) == 1.0
  assert float(extra["accuracy"]) == pytest.approx(expected_acc)


def test_ranking_loss_invariant_to_storage_order():
  rng = np.random.default_rng(0)
  rewards = rng.normal(size=(5, 6))
  ranking = np.stack([rng.permutation(6) for _ in range(5)])
  base = float(losses.ranking_loss(jnp.array(rewards), jnp.array(ranking))[0])
  for _ in range(3):  # store the K responses in another order, relabel the ranking
    perm = rng.permutation(6)  # new slot s holds old response perm[s]
    inverse = np.argsort(perm)
    shuffled = rewards[:, perm]
    new_ranking = inverse[ranking]
    got = float(losses.ranking_loss(jnp.array(shuffled), jnp.array(new_ranking))[0])
    assert got == pytest.approx(base, rel=1e-6)


def test_grouped_batch_equals_loop_over_pairs():
  rng = np.random.default_rng(1)
  B, K = 4, 5
  rewards = rng.normal(size=(B, K))
  ranking = np.stack([rng.permutation(K) for _ in range(B)])
  total = float(losses.ranking_loss(jnp.array(rewards), jnp.array(ranking))[0])
  loop = 0.0
  for b in range(B):
    for i, j in itertools.combinations(range(K), 2):
      better, worse = ranking[b, i], ranking[b, j]
      loop += -log_sigmoid(rewards[b, better] - rewards[b, worse]) / math.comb(K, 2)
  assert total == pytest.approx(loop, rel=1e-5)


# ---------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def rm():
  cfg = model_lib.TransformerConfig(
    vocab_size=50, max_len=16, n_layer=2, n_head=2, d_model=16, d_ff=32
  )
  model = heads.ScalarHeadModel(cfg)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  return model, params


def test_padding_never_changes_a_score(rm):
  model, params = rm
  seq = jnp.array([[5, 9, 3, 7, 11]])
  alone = heads.score(model, params, seq, jnp.ones_like(seq, bool))
  # right padding
  right = jnp.array([[5, 9, 3, 7, 11, 0, 0, 0]])
  right_mask = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0]], bool)
  # left padding with explicit positions
  left = jnp.array([[0, 0, 0, 5, 9, 3, 7, 11]])
  left_mask = right_mask[:, ::-1]
  left_pos = jnp.maximum(jnp.cumsum(left_mask, -1) - 1, 0)
  np.testing.assert_allclose(heads.score(model, params, right, right_mask), alone, atol=1e-5)
  np.testing.assert_allclose(
    heads.score(model, params, left, left_mask, left_pos), alone, atol=1e-5
  )
  # and different pad ids do not matter either
  right2 = right.at[:, 5:].set(42)
  np.testing.assert_allclose(heads.score(model, params, right2, right_mask), alone, atol=1e-5)


def test_trimmed_comparisons_score_the_same(rm):
  model, params = rm
  rng = np.random.default_rng(3)
  lengths = [[3, 7], [5, 11]]
  prompt_ids = [[1, 2], [4]]
  responses = [
    [list(rng.integers(5, 50, n - len(p))) for n in ls] for p, ls in zip(prompt_ids, lengths)
  ]
  tokens, mask = comp_lib.pack_sequences(prompt_ids, responses, 16, pad_id=0)
  comps = comp_lib.Comparisons(
    tokens,
    mask,
    np.array([[0, 1], [1, 0]], np.int32),
    np.zeros((2, 2), np.float32),
    ["a", "b"],
    [["", ""]] * 2,
    ["f", "f"],
  )
  cut = comps.trimmed(multiple=4)
  assert cut.tokens.shape == (2, 2, 12)  # longest 11 -> 12, not the context's 16
  assert comps.trimmed(multiple=32).tokens.shape[-1] == 16  # never beyond the stored length
  np.testing.assert_allclose(
    rm_training.score_all(model, params, cut),
    rm_training.score_all(model, params, comps),
    atol=1e-5,
  )


def test_pack_sequences_pads_to_the_longest_row_bucketed():
  prompt_ids, responses = [[1, 2], [4]], [[[5, 6, 7], [8]], [[9] * 9, []]]
  tokens, mask = comp_lib.pack_sequences(prompt_ids, responses, 64, pad_id=0, multiple=4)
  assert tokens.shape == mask.shape == (2, 2, 12)  # longest 1 + 9 = 10 -> 12, not 64
  np.testing.assert_array_equal(tokens[0, 0], [1, 2, 5, 6, 7] + [0] * 7)
  np.testing.assert_array_equal(mask.sum(-1), [[5, 3], [10, 1]])
  assert comp_lib.pack_sequences(prompt_ids, responses, 64, pad_id=0)[0].shape[-1] == 16
  tokens, mask = comp_lib.pack_sequences(prompt_ids, responses, 8, pad_id=0)  # cut from the left
  assert tokens.shape[-1] == 8 and mask[1, 0].all()
  np.testing.assert_array_equal(tokens[1, 0], [9] * 8)  # the prompt and one 9 cut


def _right_padded(rng, lengths, T: int):
  """Random tokens [P, K, T] of the given lengths [P, K], right-padded with 0, and their mask."""
  mask = np.arange(T) < lengths[..., None]  # [P, K, T]
  return np.where(mask, rng.integers(5, 50, mask.shape), 0).astype(np.int32), mask


@pytest.mark.slow  # ~13 s of compilation: the fast subset stays under 5 minutes
def test_prompt_batches_cut_each_batch_to_its_width_and_keep_the_losses(rm):
  """Batch `step` is sft.batch_rows' prompts, its [B, K, T] arrays cut after the
  batch's longest sequence (bucketed); the ranking and DPO losses equal the
  full width's, and local rows agree with the whole batch's width."""
  from gptjax import losses, sft as sft_lib
  from gptjax.rlhf import dpo

  model, params = rm
  lm = model_lib.Transformer(model.cfg)
  lm_params = nn.meta.unbox(lm.init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))["params"])
  rng = np.random.default_rng(1)
  P, K, T = 6, 3, 16
  lengths = rng.integers(2, 7, (P, K))
  lengths[4, 1] = 13  # one long sequence: the batches holding prompt 4 are wider
  tokens, mask = _right_padded(rng, lengths, T)
  arrays = {
    "tokens": tokens,
    "token_mask": mask,
    "response_mask": mask & (np.arange(T) >= 1),
    "ranking": np.tile(np.arange(K, dtype=np.int32), (P, 1)),
    "rank": np.tile(np.arange(K, dtype=np.int32), (P, 1)),
    "ref_logp": -rng.random((P, K)).astype(np.float32),
  }
  train_batch, local_batch, width = comp_lib.prompt_batches(arrays, 2, seed=0, multiple=4)
  widths = []
  for step in range(3):
    index = sft_lib.batch_rows(step, 2, P, 0)
    batch, full = train_batch(step), {k: v[index] for k, v in arrays.items()}
    w = batch["tokens"].shape[-1]
    widths.append(w)
    assert w == min(T, -(-int(lengths[index].max()) // 4) * 4)
    assert batch["ref_logp"].shape == (2, K) and batch["response_mask"].shape == (2, K, w)
    np.testing.assert_array_equal(local_batch(step, np.array([1]))["tokens"], batch["tokens"][1:])
    rm_loss = lambda b: losses.reward_loss_fn(model)(params, b, None, False)[0]
    np.testing.assert_allclose(rm_loss(batch), rm_loss(full), rtol=1e-5)
    dpo_loss = lambda b: dpo.dpo_loss_fn(lm, 0.1)(lm_params, b, None, False)[0]
    np.testing.assert_allclose(dpo_loss(batch), dpo_loss(full), rtol=1e-5)
  assert sorted(set(widths)) == [8, 16]  # narrow batches, and the one with prompt 4
  assert width == np.mean(widths)


def test_pack_rows_best_fit_by_hand():
  # lengths 5, 3, 4, 2, 1 into rows of 6, longest first, each into the fullest
  # row it fits: 5 -> row 0; 4 -> row 1; 3 fits none (1, 2 free) -> row 2;
  # 2 -> row 1 (2 free); 1 -> row 0 (1 free). Three rows: 15 tokens need >= 3.
  lengths = np.array([5, 3, 4, 2, 1])
  mask = np.arange(6) < lengths[:, None]
  tokens = np.where(mask, np.arange(1, 6)[:, None] * 10 + np.arange(6), 0)  # seq i: i*10 + t
  packed = heads.pack_rows(tokens, mask, 6)
  np.testing.assert_array_equal(
    packed["tokens"], [[10, 11, 12, 13, 14, 50], [30, 31, 32, 33, 40, 41], [20, 21, 22, 0, 0, 0]]
  )
  np.testing.assert_array_equal(
    packed["positions"], [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 0, 0]]
  )
  np.testing.assert_array_equal(packed["segment_ids"][2], [1, 1, 1, 0, 0, 0])
  assert len(set(packed["segment_ids"][1])) == 2 and len(set(packed["segment_ids"][0])) == 2
  np.testing.assert_array_equal(packed["token_mask"].sum(-1), [6, 6, 3])
  np.testing.assert_array_equal(packed["last"], [4, 14, 9, 11, 5])  # row * 6 + end
  # rows rounded up to a multiple; two groups packed apart, in the same row count
  assert heads.pack_rows(tokens, mask, 6, row_multiple=4)["tokens"].shape == (4, 6)
  two = heads.pack_rows(tokens[:4], mask[:4], 6, groups=2)
  assert two["tokens"].shape == (4, 6)  # group 0 (5, 3): 2 rows; group 1 (4, 2): 1, padded to 2
  np.testing.assert_array_equal(two["last"], [4, 8, 3, 5])  # indices within each group's rows
  np.testing.assert_array_equal(two["tokens"][2], [30, 31, 32, 33, 40, 41])
  assert not two["token_mask"][3].any()


@pytest.mark.parametrize(
  "case, pattern",
  [
    ("left", "right-padded"),
    ("long", "do not fit"),
    ("empty", "do not fit"),
    ("groups", "equal groups"),
  ],
)
def test_pack_rows_refuses_what_it_cannot_pack(case, pattern):
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], bool)
  width, groups = 4, 1
  if case == "left":
    mask = mask[:, ::-1]
  elif case == "long":
    width = 2
  elif case == "empty":
    mask[1] = False
  else:
    groups = 2
  with pytest.raises(ValueError, match=pattern):
    heads.pack_rows(np.zeros(mask.shape, np.int32), mask, width, groups=groups)


@pytest.mark.slow  # ~16 s of compilation: the fast subset stays under 5 minutes
def test_packed_batches_give_the_unpacked_losses_and_gradients(rm):
  """packed_prompt_batches' batch `step` holds prompt_batches' prompts; the
  ranking loss and its gradient on the packed rows equal the unpadded ones,
  and with two groups (gradient accumulation) the micro-batches the train
  step splits off sum to the same."""
  from gptjax import losses, train

  model, params = rm
  rng = np.random.default_rng(2)
  P, K, T = 8, 3, 16
  lengths = rng.integers(2, 12, (P, K))
  tokens, mask = _right_padded(rng, lengths, T)
  arrays = {
    "tokens": tokens,
    "token_mask": mask,
    "ranking": np.stack([rng.permutation(K) for _ in range(P)]).astype(np.int32),
    "rank": rng.integers(0, 2, (P, K)).astype(np.int32),  # ties
  }
  loss_fn = losses.reward_loss_fn(model)
  value_and_grad = jax.value_and_grad(lambda p, b: loss_fn(p, b, None, False)[0])
  packed_batch, mean_tokens = comp_lib.packed_prompt_batches(arrays, 4, seed=0, row_multiple=2)
  plain_batch, _, _ = comp_lib.prompt_batches(arrays, 4, seed=0)
  rows = []
  for step in range(2):
    packed, plain = packed_batch(step), plain_batch(step)
    rows.append(packed["tokens"].size)
    assert packed["tokens"].shape[1] == T and len(packed["tokens"]) % 2 == 0
    assert packed["token_mask"].sum() == plain["token_mask"].sum()  # real tokens only
    np.testing.assert_array_equal(packed["rank"], plain["rank"])
    (got, got_grad), (want, want_grad) = (
      value_and_grad(params, packed),
      value_and_grad(params, plain),
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_grad, want_grad
    )
    two, _ = comp_lib.packed_prompt_batches(arrays, 4, seed=0, groups=2)
    micro = train._split_microbatches(two(step), 2)
    halves = [
      loss_fn(params, jax.tree_util.tree_map(lambda x: x[a], micro), None, False) for a in (0, 1)
    ]
    halves_plain = [
      loss_fn(params, {k: v[a * 2 : a * 2 + 2] for k, v in plain.items()}, None, False)
      for a in (0, 1)
    ]
    for (t, w, _), (tp, wp, _) in zip(halves, halves_plain):
      np.testing.assert_allclose([t, w], [tp, wp], rtol=1e-5)
  assert mean_tokens == np.mean(rows)  # an epoch is P / B = 2 batches
  with pytest.raises(ValueError, match="are neither"):
    comp_lib.packed_prompt_batches({**arrays, "family": np.zeros(P)}, 4, seed=0)


@pytest.mark.slow  # ~11 s of compilation: the fast subset stays under 5 minutes
def test_packed_dpo_logprobs_equal_the_unpacked_sums(rm):
  """DPO's response log-probs summed per sequence over packed rows (with
  response_mask packed alike) equal `sequence_logprobs` of each padded
  sequence, and so do the loss and its gradient."""
  from gptjax.rlhf import dpo

  model, _ = rm
  lm = model_lib.Transformer(model.cfg)
  params = nn.meta.unbox(lm.init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))["params"])
  rng = np.random.default_rng(4)
  P, K, T = 4, 3, 16
  lengths = rng.integers(3, 13, (P, K))
  tokens, mask = _right_padded(rng, lengths, T)
  arrays = {
    "tokens": tokens,
    "token_mask": mask,
    "response_mask": mask & (np.arange(T) >= 2),  # a two-token prompt
    "ref_logp": -rng.random((P, K)).astype(np.float32),
    "rank": rng.integers(0, 3, (P, K)).astype(np.int32),
  }
  packed = comp_lib.packed_prompt_batches(arrays, 4, seed=0, row_multiple=1)[0](0)
  plain = comp_lib.prompt_batches(arrays, 4, seed=0)[0](0)
  assert len(packed["tokens"]) < P * K  # several sequences share a row
  got = dpo.packed_logprobs(lm, params, packed)
  logits = lm.apply({"params": params}, plain["tokens"].reshape(P * K, -1))
  want = dpo.sequence_logprobs(
    logits, plain["tokens"].reshape(P * K, -1), plain["response_mask"].reshape(P * K, -1)
  ).reshape(P, K)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  loss_fn = dpo.dpo_loss_fn(lm, 0.1)
  value_and_grad = jax.value_and_grad(lambda p, b: loss_fn(p, b, None, False)[0])
  (a, ga), (b, gb) = value_and_grad(params, packed), value_and_grad(params, plain)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  jax.tree_util.tree_map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), ga, gb
  )


def test_final_index_is_the_last_true_entry():
  rng = np.random.default_rng(0)
  mask = rng.random((6, 9)) < 0.4
  mask[2] = False  # an empty row
  expected = [max((t for t in range(9) if row[t]), default=-1) for row in mask]
  np.testing.assert_array_equal(heads.final_index(jnp.asarray(mask)), expected)
  # the PPO reward credits the score at that index, and nowhere on an empty row
  score = jnp.arange(1.0, 7.0)
  zeros = jnp.zeros((6, 9))
  rewards, _ = ppo_math.per_token_rewards(score, zeros, zeros, jnp.asarray(mask), 0.1)
  for b, last in enumerate(expected):
    want = np.zeros(9)
    if last >= 0:
      want[last] = float(score[b])
    np.testing.assert_array_equal(rewards[b], want)


def test_score_batched_equals_each_row_alone_and_compiles_once(rm):
  model, params = rm
  rng = np.random.default_rng(5)
  tokens = rng.integers(1, 50, (7, 10)).astype(np.int32)
  mask = np.arange(10)[None, :] < rng.integers(2, 11, (7, 1))  # right-padded rows
  before = heads._values_jit._cache_size()
  got = heads.score_batched(model, params, tokens, mask, batch_size=3)  # 3 + 3 + 1 rows
  assert heads._values_jit._cache_size() - before == 1  # the ragged last batch is padded
  alone = [
    float(heads.score(model, params, tokens[i : i + 1], mask[i : i + 1])[0]) for i in range(7)
  ]
  np.testing.assert_allclose(got, alone, atol=1e-5)


def test_informative_prompts_drop_only_all_tied_groups():
  gold = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.4, 0.4, 0.4], [0.5, 0.5, 0.1]], np.float32)
  P, K, T = 4, 3, 5
  comps = comp_lib.Comparisons(
    np.arange(P * K * T).reshape(P, K, T),
    np.ones((P, K, T), bool),
    np.tile(np.arange(K), (P, 1)),
    gold,
    list("abcd"),
    [["x"] * K] * P,
    ["f"] * P,
  )
  kept = rm_training.informative_prompts(comps)
  assert kept.prompts == ["b", "d"]  # a and c: every response equally good
  np.testing.assert_array_equal(kept.tokens, comps.tokens[[1, 3]])
  np.testing.assert_array_equal(kept.gold, gold[[1, 3]])


@pytest.mark.slow  # ~6 s of compilation: the fast subset stays under 5 minutes
def test_reward_loss_fn_groups_k_responses(rm):
  model, params = rm
  rng = np.random.default_rng(0)
  B, K, T = 2, 3, 6
  tokens = rng.integers(1, 50, (B, K, T))
  mask = np.ones((B, K, T), bool)
  mask[0, 1, 4:] = False
  ranking = np.array([[2, 0, 1], [0, 1, 2]])
  total, weight, _ = losses.reward_loss_fn(model)(
    params,
    {"tokens": jnp.array(tokens), "token_mask": jnp.array(mask), "ranking": jnp.array(ranking)},
    None,
    False,
  )
  scores = np.array(
    [
      [
        float(
          heads.score(
            model, params, jnp.array(tokens[b, k : k + 1]), jnp.array(mask[b, k : k + 1])
          )[0]
        )
        for k in range(K)
      ]
      for b in range(B)
    ]
  )
  expected = float(losses.ranking_loss(jnp.array(scores), jnp.array(ranking))[0])
  assert float(total) == pytest.approx(expected, rel=1e-5)
  assert float(weight) == B


def test_shift_bias_centres_scores(rm):
  model, params = rm
  tokens = jnp.array(np.random.default_rng(0).integers(1, 50, (8, 6)))
  mask = jnp.ones_like(tokens, bool)
  s = heads.score(model, params, tokens, mask)
  shifted = heads.shift_bias(params, -s.mean())
  assert abs(float(heads.score(model, shifted, tokens, mask).mean())) < 1e-5


def test_tie_masked_ranking_loss_equals_loop_over_untied_pairs():
  rng = np.random.default_rng(3)
  B, K = 5, 4
  rewards = rng.normal(size=(B, K))
  rank = rng.integers(0, 3, size=(B, K))  # ties: equal ranks
  rank[2] = 1  # a prompt tied throughout: no pair
  terms, correct = [], 0
  for b in range(B):
    for i in range(K):
      for j in range(K):
        if rank[b, i] < rank[b, j]:  # i preferred to j; equal ranks are skipped
          terms.append(-log_sigmoid(rewards[b, i] - rewards[b, j]))
          correct += rewards[b, i] > rewards[b, j]
  ranking = np.argsort(rank, axis=1, kind="stable")  # ignored when rank is given
  total, weight, extra = losses.ranking_loss(jnp.array(rewards), jnp.array(ranking), rank)
  assert float(weight) == len(terms)
  assert float(total) == pytest.approx(sum(terms), rel=1e-5)
  assert float(extra["accuracy"]) == correct
  # Without ties it is the per-prompt C(K,2) mean of the plain loss, per pair.
  strict = np.stack([rng.permutation(K) for _ in range(B)])
  t1, w1, _ = losses.ranking_loss(jnp.array(rewards), jnp.array(np.argsort(strict, 1)))
  t2, w2, _ = losses.ranking_loss(jnp.array(rewards), None, strict)
  assert float(t2 / w2) == pytest.approx(float(t1 / w1), rel=1e-5)


def test_all_tied_batch_has_zero_loss_and_no_nan():
  total, weight, _ = losses.ranking_loss(jnp.ones((2, 3)), None, np.zeros((2, 3), int))
  assert float(total) == 0.0 and float(weight) == 1.0


def test_normalize_gives_mean_zero_std_one_on_the_sample(rm):
  model, params = rm
  tokens = jnp.array(np.random.default_rng(1).integers(1, 50, (16, 6)))
  mask = jnp.ones_like(tokens, bool)
  s = np.asarray(heads.score(model, params, tokens, mask))
  normed = rm_training.normalize(params, float(s.mean()), float(s.std()))
  got = np.asarray(heads.score(model, normed, tokens, mask))
  assert abs(got.mean()) < 1e-5 and got.std() == pytest.approx(1.0, rel=1e-4)
  np.testing.assert_allclose(got, (s - s.mean()) / s.std(), atol=1e-5)  # order kept
  with pytest.raises(ValueError, match="std"):
    rm_training.normalize(params, 0.0, 0.0)


# ---------------------------------------------------------------- GAE


def gae_loop(rewards, values, mask, gamma, lam):
  B, N = rewards.shape
  adv = np.zeros((B, N))
  for b in range(B):
    idx = [t for t in range(N) if mask[b, t]]
    last = 0.0
    for pos, t in enumerate(reversed(idx)):
      nxt = idx[len(idx) - pos] if pos > 0 else None
      v_next = values[b, nxt] if nxt is not None else 0.0
      delta = rewards[b, t] + gamma * v_next - values[b, t]
      last = delta + gamma * lam * last
      adv[b, t] = last
  return adv, (adv + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0)])
def test_gae_equals_plain_loop(gamma, lam):
  rng = np.random.default_rng(0)
  B, N = 5, 9
  rewards, values = rng.normal(size=(B, N)), rng.normal(size=(B, N))
  lengths = np.array([9, 1, 4, 0, 6])
  mask = np.arange(N)[None] < lengths[:, None]
  rewards = rewards * mask  # padding carries no reward
  adv, ret = ppo_math.gae(jnp.array(rewards), jnp.array(values), jnp.array(mask), gamma, lam)
  exp_adv, exp_ret = gae_loop(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(adv, exp_adv, atol=1e-5)
  np.testing.assert_allclose(ret, exp_ret, atol=1e-5)
  assert np.all(np.asarray(adv)[~mask] == 0) and np.all(np.asarray(ret)[~mask] == 0)


def test_padding_never_reaches_rewards_or_advantages():
  rng = np.random.default_rng(2)
  B, N = 3, 7
  mask = np.arange(N)[None] < np.array([[7], [3], [5]])
  logp, ref = rng.normal(size=(B, N)), rng.normal(size=(B, N))
  values = rng.normal(size=(B, N))
  garbage = ~mask
  r1, _ = ppo_math.per_token_rewards(
    jnp.ones(B), jnp.array(logp), jnp.array(ref), jnp.array(mask), 0.1
  )
  logp2, ref2, values2 = logp.copy(), ref.copy(), values.copy()
  logp2[garbage], ref2[garbage], values2[garbage] = 1e3, -1e3, 1e3
  r2, _ = ppo_math.per_token_rewards(
    jnp.ones(B), jnp.array(logp2), jnp.array(ref2), jnp.array(mask), 0.1
  )
  np.testing.assert_allclose(r1, r2)
  a1, _ = ppo_math.gae(r1, jnp.array(values), jnp.array(mask))
  a2, _ = ppo_math.gae(r2, jnp.array(values2), jnp.array(mask))
  np.testing.assert_allclose(a1, a2, atol=1e-5)
  w1 = ppo_math.whiten(a1, jnp.array(mask))
  w2 = ppo_math.whiten(a2, jnp.array(mask))
  np.testing.assert_allclose(w1, w2, atol=1e-5)
  loss1, _ = ppo_math.policy_loss(jnp.array(logp), jnp.array(logp), w1, jnp.array(mask))
  loss2, _ = ppo_math.policy_loss(jnp.array(logp2), jnp.array(logp2), w2, jnp.array(mask))
  assert float(loss1) == pytest.approx(float(loss2), abs=1e-6)


def test_per_token_rewards_formula_and_zero_kl_when_equal():
  logp = jnp.array([[-1.0, -2.0, -0.5, 0.0]])
  ref = jnp.array([[-1.5, -1.0, -0.5, 0.0]])
  mask = jnp.array([[True, True, True, False]])
  r, kl = ppo_math.per_token_rewards(jnp.array([2.0]), logp, ref, mask, beta=0.1)
  np.testing.assert_allclose(r, [[-0.05, 0.1, 2.0, 0.0]], atol=1e-6)
  r_same, kl_same = ppo_math.per_token_rewards(jnp.array([0.0]), logp, logp, mask, 0.1)
  assert float(jnp.abs(kl_same).max()) == 0.0 and float(jnp.abs(r_same).max()) == 0.0


def test_truncation_penalty_replaces_score():
  s = ppo_math.final_scores(jnp.array([1.0, 2.0]), jnp.array([True, False]), -3.0)
  np.testing.assert_allclose(s, [1.0, -3.0])
  np.testing.assert_allclose(
    ppo_math.final_scores(jnp.array([1.0, 2.0]), jnp.array([True, False]), None), [1.0, 2.0]
  )


# ---------------------------------------------------------------- PPO losses


def test_policy_loss_ratio_one_and_clipping():
  rng = np.random.default_rng(3)
  logp = jnp.array(rng.normal(size=(4, 6)))
  adv = jnp.array(rng.normal(size=(4, 6)))
  mask = jnp.ones((4, 6), bool)
  loss, stats = ppo_math.policy_loss(logp, logp, adv, mask)
  assert float(stats["ratio"]) == pytest.approx(1.0)
  assert float(stats["clip_frac"]) == 0.0 and float(stats["approx_kl"]) == pytest.approx(0.0)
  assert float(loss) == pytest.approx(-float(adv.mean()), rel=1e-5)
  # a big positive step on a positive advantage is clipped at 1 + eps
  l2, s2 = ppo_math.policy_loss(
    jnp.array([[1.0]]), jnp.array([[0.0]]), jnp.array([[1.0]]), jnp.array([[True]])
  )
  assert float(l2) == pytest.approx(-1.2) and float(s2["clip_frac"]) == 1.0


def test_value_loss_clipped_against_hand_values():
  v, v_old, ret = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 0.0]]), jnp.array([[2.0, 0.1]])
  got = ppo_math.value_loss(v, v_old, ret, jnp.array([[True, True]]), clip_eps=0.2)
  # first: max((1-2)^2, (0.2-2)^2) = 3.24; second: max(0.01, 0.01) = 0.01
  assert float(got) == pytest.approx(0.5 * (3.24 + 0.01) / 2)


def test_whiten_masked_statistics():
  x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
  mask = jnp.array([[True, True, True, False]])
  w = np.asarray(ppo_math.whiten(x, mask))
  assert w[0, 3] == 0.0
  assert w[0, :3].mean() == pytest.approx(0.0, abs=1e-6)
  assert w[0, :3].std() == pytest.approx(1.0, abs=1e-3)


def test_explained_variance():
  ret = jnp.array([[1.0, 2.0, 3.0]])
  mask = jnp.ones((1, 3), bool)
  assert float(ppo_math.explained_variance(ret, ret, mask)) == pytest.approx(1.0)
  assert float(ppo_math.explained_variance(jnp.full((1, 3), 2.0), ret, mask)) == pytest.approx(0.0)


def test_adaptive_kl_controller_formula():
  c = ppo_math.AdaptiveKL(beta=0.1, target=6.0, horizon=10000)
  assert c.update(kl=9.0, n_samples=256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
  b = c.beta
  assert c.update(kl=5.7, n_samples=100) == pytest.approx(b * (1 + (5.7 / 6 - 1) * 100 / 10000))
  assert c.update(kl=0.0, n_samples=1000) == pytest.approx(
    b * (1 + (5.7 / 6 - 1) * 100 / 10000) * (1 - 0.2 * 1000 / 10000)
  )
  assert ppo_math.kl_controller("fixed", 0.3).update(100.0, 10) == 0.3
  with pytest.raises(ValueError, match="kl_controller"):
    ppo_math.kl_controller("pid", 0.1)


def test_entropy_of_uniform():
  logits = jnp.zeros((2, 3, 8))
  assert float(ppo_math.entropy(logits, jnp.ones((2, 3), bool))) == pytest.approx(math.log(8))


def test_overoptimization_curve_finds_the_gold_peak():
  # Gao et al.'s shape: gold = a*d - b*d^2 peaks at d = a / (2b) = 2; the proxy keeps rising.
  d = np.linspace(0.0, 4.0, 81)
  gold, proxy = 1.0 * d - 0.25 * d**2, 0.8 * d
  c = rlhf_stats.overoptimization_curve(d, proxy, gold, n_bins=8)
  assert len(c["sqrt_kl"]) == len(c["gold"]) == len(c["proxy"]) == 8
  np.testing.assert_allclose(c["sqrt_kl"], [(i + 0.5) * 0.5 for i in range(8)], atol=0.03)
  assert 1.5 <= c["peak_sqrt_kl"] <= 2.5 and c["turned_over"]
  assert c["final_gold"] < c["peak_gold"] and np.all(np.diff(c["proxy"]) > 0)
  # Bin means by hand for the first bin: d below the first edge, (4 + 1e-9) / 8.
  first = d < (4.0 + 1e-9) / 8
  assert c["gold"][0] == pytest.approx(gold[first].mean())


def test_overoptimization_curve_without_turnover():
  d = np.linspace(0.0, 3.0, 30)
  c = rlhf_stats.overoptimization_curve(d, d, 0.5 * d)
  assert not c["turned_over"] and c["peak_sqrt_kl"] == c["sqrt_kl"][-1]
  one = rlhf_stats.overoptimization_curve([1.0], [0.2], [0.1])  # a single iteration
  assert one["gold"] == [0.1] and not one["turned_over"]


def _fake_rlhf_run(path, beta, peak, ptx=0.0, controller="fixed"):
  """An RLHF workdir whose rollouts' gold score peaks at sqrt(KL) = peak."""
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"ppo": {"beta": beta, "kl_controller": controller, "ptx_coef": ptx}}, f)
  d = np.linspace(0.0, 2 * peak, 40)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": 0, "split": "eval", "loss": 1.0}) + "\n")  # other splits ignored
    for i, x in enumerate(d):
      f.write(
        json.dumps(
          {
            "step": i + 1,
            "split": "ppo",
            "sqrt_kl": x,
            "rm_score": 0.5 * x,
            "gold_score": x * (2 * peak - x),
          }
        )
        + "\n"
      )
  return str(path)


def test_overoptimization_across_runs(tmp_path):
  runs = [
    _fake_rlhf_run(tmp_path / "a", 0.05, peak=2.0),
    _fake_rlhf_run(tmp_path / "b", 0.5, peak=1.0, ptx=1.0, controller="adaptive"),
  ]
  result = overoptimization.compare(runs, n_bins=8)
  a, b = result["runs"]
  assert a["label"] == "beta 0.05" and b["label"] == "beta 0.5 (adaptive), ptx 1"
  assert (
    a["iterations"] == 40 and a["start_gold"] == a["curve"]["gold"][0] < a["curve"]["peak_gold"]
  )
  for run, peak in ((a, 2.0), (b, 1.0)):  # each run's own turnover, from its own path
    c = run["curve"]
    assert c["turned_over"] and abs(c["peak_sqrt_kl"] - peak) <= 2 * peak / 8
    assert run["final_sqrt_kl"] == pytest.approx(c["sqrt_kl"][-1])
  lines = overoptimization.summary_lines(result)
  assert len(lines) == 2 and "turned over" in lines[0]
  json_path, png = overoptimization.write(result, str(tmp_path / "out"))
  assert os.path.getsize(png) > 0 and json.load(open(json_path))["runs"][1]["beta"] == 0.5


def test_overoptimization_rejects_what_is_not_an_rlhf_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="not an RLHF workdir"):
    overoptimization.compare([str(tmp_path)])
  with pytest.raises(ValueError, match="at least one"):
    overoptimization.compare([])
  (tmp_path / "config.json").write_text(json.dumps({"model": {}}))
  (tmp_path / "metrics.jsonl").write_text("")
  with pytest.raises(ValueError, match="no 'ppo' section"):
    overoptimization.compare([str(tmp_path)])
  (tmp_path / "config.json").write_text(
    json.dumps({"ppo": {"beta": 0.1, "kl_controller": "fixed"}})
  )
  with pytest.raises(ValueError, match="no PPO iterations"):
    overoptimization.compare([str(tmp_path)])
