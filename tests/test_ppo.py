"""PPO behaviour: rollout/training log-probs agree, and PPO solves a one-token bandit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from gptjax import heads, model as model_lib, sampling, train
from gptjax.rlhf import ppo

V = 8  # vocabulary = the bandit's arms
BOS, STOP = 0, V + 100  # STOP is never sampled: every response is one token


@pytest.fixture(scope="module")
def models():
  cfg = model_lib.TransformerConfig(
    vocab_size=V, max_len=8, n_layer=1, n_head=2, d_model=16, d_ff=32
  )
  policy = model_lib.Transformer(cfg)
  critic = heads.ScalarHeadModel(cfg)
  x = jnp.zeros((1, 2), jnp.int32)
  p_params = nn.meta.unbox(policy.init(jax.random.PRNGKey(0), x)["params"])
  v_params = nn.meta.unbox(critic.init(jax.random.PRNGKey(1), x)["params"])
  return policy, critic, p_params, v_params


def _optimizer(lr):
  from configs import pretrain

  t = pretrain.train_config("tiny")
  t.lr, t.warmup_steps, t.weight_decay, t.min_lr_ratio, t.steps = lr, 0, 0.0, 1.0, 1000
  return train.make_optimizer(t)


@pytest.mark.slow  # ~20 s of compilation: the fast subset stays under 5 minutes
def test_first_minibatch_ratio_is_one_and_sampler_logprobs_match(models):
  policy, critic, p_params, v_params = models
  prompts = [[BOS, 3], [BOS], [BOS, 5, 1]]
  rollout, _ = ppo.collect(
    ppo.Networks(policy, critic, critic, p_params, p_params, v_params, v_params),
    prompts,
    ppo.RolloutSettings(max_new_tokens=3, stop_id=STOP, pad_id=0),
    rng=jax.random.PRNGKey(0),
    beta=0.1,
  )
  m = rollout.mask
  np.testing.assert_allclose(rollout.sampler_logp[m], rollout.old_logp[m], atol=1e-5)
  assert np.all(rollout.kl == 0.0)  # policy == reference: no KL reward
  tx = _optimizer(1e-3)
  state = train.TrainState(jnp.array(0), p_params, tx.init(p_params), jax.random.PRNGKey(0))
  mb = next(ppo.minibatches(rollout, np.random.default_rng(0), 1))
  _, stats = ppo.policy_update(state, mb, None, policy=policy, tx=tx, clip_eps=0.2, ptx_coef=0.0)
  assert float(stats["ratio"]) == pytest.approx(1.0, abs=1e-6)
  assert float(stats["clip_frac"]) == 0.0


@pytest.mark.slow  # ~14 s: the fast subset stays under 5 minutes
def test_ptx_term_adds_lm_loss(models):
  policy, critic, p_params, v_params = models
  tx = _optimizer(0.0)
  state = train.TrainState(jnp.array(0), p_params, tx.init(p_params), jax.random.PRNGKey(0))
  rollout, _ = ppo.collect(
    ppo.Networks(policy, critic, critic, p_params, p_params, v_params, v_params),
    [[BOS]] * 4,
    ppo.RolloutSettings(max_new_tokens=1, stop_id=STOP, pad_id=0),
    rng=jax.random.PRNGKey(1),
    beta=0.0,
  )
  mb = next(ppo.minibatches(rollout, np.random.default_rng(0), 1))
  w = np.random.default_rng(0).integers(0, V, (2, 5)).astype(np.int32)
  ptx = {"tokens": w[:, :-1], "targets": w[:, 1:], "loss_mask": np.ones((2, 4), np.float32)}
  _, s = ppo.policy_update(state, mb, ptx, policy=policy, tx=tx, clip_eps=0.2, ptx_coef=1.0)
  logits = policy.apply({"params": p_params}, ptx["tokens"])
  expected = -jnp.take_along_axis(jax.nn.log_softmax(logits), ptx["targets"][..., None], -1).mean()
  assert float(s["ptx_loss"]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.slow
def test_ppo_solves_a_one_token_bandit(models):
  """Arm 6 pays 1, the others 0: PPO must move the policy's mass onto arm 6."""
  policy, critic, p_params, v_params = models
  payout = np.zeros(V, np.float32)
  payout[6] = 1.0
  tx_p, tx_v = _optimizer(1e-2), _optimizer(1e-2)
  sp = train.TrainState(jnp.array(0), p_params, tx_p.init(p_params), jax.random.PRNGKey(0))
  sv = train.TrainState(jnp.array(0), v_params, tx_v.init(v_params), jax.random.PRNGKey(0))
  p_step = jax.jit(
    functools.partial(ppo.policy_update, policy=policy, tx=tx_p, clip_eps=0.2, ptx_coef=0.0)
  )
  v_step = jax.jit(functools.partial(ppo.value_update, value_model=critic, tx=tx_v, clip_eps=0.2))
  prob = lambda params: float(
    jax.nn.softmax(policy.apply({"params": params}, jnp.array([[BOS]]))[0, -1])[6]
  )
  start = prob(sp.params)
  from gptjax import sampling

  for it in range(25):
    gen = sampling.generate(
      policy,
      sp.params,
      [[BOS]] * 64,
      max_new_tokens=1,
      rng=jax.random.PRNGKey(it),
      eos_id=STOP,
      pad_id=0,
    )
    tokens, token_mask, positions = ppo.join(
      gen.prompt_tokens, gen.prompt_mask, gen.tokens, gen.mask
    )
    logp, _ = ppo.response_logprobs(policy, sp.params, tokens, token_mask, positions, 1)
    values = ppo.response_values(critic, sv.params, tokens, token_mask, positions, 1)
    score = jnp.asarray(payout[gen.tokens[:, 0]])
    _, adv, ret, _ = ppo.advantages(
      ppo.Scores(logp=logp, ref_logp=logp, values=values, score=score),
      jnp.ones(64, bool),
      jnp.asarray(gen.mask),
      0.0,
      shaping=ppo.RewardShaping(gamma=1.0, lam=0.95),
    )
    mb = {
      "tokens": tokens,
      "token_mask": token_mask,
      "positions": positions,
      "mask": gen.mask,
      "old_logp": logp,
      "values": values,
      "advantages": adv,
      "returns": ret,
    }
    for _ in range(4):
      sp, _ = p_step(sp, mb, None)
      sv, _ = v_step(sv, mb)
  assert start < 0.3
  assert prob(sp.params) > 0.9


def _pinned_rollout(models, beta=0.1):
  policy, critic, p_params, v_params = models
  rm_params = nn.meta.unbox(
    critic.init(jax.random.PRNGKey(2), jnp.zeros((1, 2), jnp.int32))["params"]
  )
  nets = ppo.Networks(
    policy=policy,
    value=critic,
    reward=critic,
    policy_params=p_params,
    ref_params=jax.tree_util.tree_map(lambda a: a * 1.5, p_params),
    value_params=v_params,
    rm_params=rm_params,
  )
  settings = ppo.RolloutSettings(
    max_new_tokens=4,
    stop_id=4,
    pad_id=0,
    shaping=ppo.RewardShaping(
      gamma=0.99, lam=0.9, truncation_penalty=-1.0, whiten_rewards=True, reward_clip=0.5
    ),
  )
  return ppo.collect(
    nets, [[0, 3], [0], [0, 5, 1], [0, 2]], settings, rng=jax.random.PRNGKey(5), beta=beta
  )[0]


def test_collect_output_is_pinned(models):
  """A rollout with every reward option on, pinned (recorded before collect's
  arguments were grouped): sampling, scoring, rewards and GAE unchanged."""
  r = _pinned_rollout(models)
  np.testing.assert_array_equal(
    r.tokens,
    [
      [0, 0, 0, 3, 3, 6, 0, 3],
      [0, 0, 0, 0, 0, 5, 1, 2],
      [0, 0, 5, 1, 7, 2, 4, 0],
      [0, 0, 0, 2, 1, 0, 3, 5],
    ],
  )
  np.testing.assert_array_equal(r.ended, [False, False, True, False])
  ids = type("Ids", (), {"decode": staticmethod(lambda ids: ",".join(map(str, ids)))})()
  assert r.texts(ids, stop_id=4) == ["3,6,0,3", "0,5,1,2", "7,2", "1,0,3,5"]
  np.testing.assert_allclose(r.score, [1.183128, 0.477897, 1.737978, 0.6576], atol=1e-5)
  np.testing.assert_allclose(r.kl, [-0.021275, -0.176389, 0.485341, 0.273694], atol=1e-5)
  np.testing.assert_allclose(
    r.rewards,
    [
      [0.017442, -0.010992, 0.00791, -0.512233],
      [0.031494, -0.008145, -0.00587, -0.499839],
      [-0.025706, -0.013894, 0.491066, 0.0],
      [-0.004363, -0.010566, -0.015816, -0.496623],
    ],
    atol=1e-5,
  )
  np.testing.assert_allclose(
    r.advantages,
    [
      [0.373192, 0.537418, 0.630143, -0.427541],
      [-2.027178, -0.386151, -0.198287, -0.764522],
      [1.920173, 0.516537, 1.037767, 0.0],
      [-0.416722, 0.688163, -1.821304, 0.338312],
    ],
    atol=1e-4,
  )
  np.testing.assert_allclose(
    r.returns,
    [
      [-0.472015, -0.480649, -0.455042, -0.512233],
      [-0.332454, -0.409726, -0.436377, -0.499839],
      [0.386334, 0.42869, 0.491066, 0.0],
      [-0.41017, -0.387037, -0.509167, -0.496623],
    ],
    atol=1e-5,
  )


def test_collect_compiles_once_across_iterations(models):
  """New (equal) Networks and settings and a new beta each iteration, as the
  RLHF loop makes them: the scoring and advantage programs are reused."""
  _pinned_rollout(models, beta=0.1)
  sizes = (ppo.score_rollout._cache_size(), ppo.advantages._cache_size())
  _pinned_rollout(models, beta=0.3)
  assert (ppo.score_rollout._cache_size(), ppo.advantages._cache_size()) == sizes


@pytest.mark.slow  # ~28 s of compilation (two widths): the fast subset stays under 5 minutes
def test_rollout_trimmed_to_its_responses_equals_the_full_width(monkeypatch):
  """collect cuts the response columns after the longest response (rounded
  up to 16): scores, rewards, advantages and both updates equal those of the
  full max_new_tokens width, which is all padding past the cut."""
  cfg = model_lib.TransformerConfig(
    vocab_size=V, max_len=48, n_layer=1, n_head=2, d_model=16, d_ff=32
  )
  policy, critic = model_lib.Transformer(cfg), heads.ScalarHeadModel(cfg)
  x = jnp.zeros((1, 2), jnp.int32)
  init = lambda m, k: nn.meta.unbox(m.init(jax.random.PRNGKey(k), x)["params"])
  p_params, v_params, rm_params = init(policy, 0), init(critic, 1), init(critic, 2)
  nets = ppo.Networks(
    policy,
    critic,
    critic,
    p_params,
    jax.tree_util.tree_map(lambda a: a * 1.5, p_params),
    v_params,
    rm_params,
  )
  settings = ppo.RolloutSettings(  # stop id 4 of 8: every response ends well before 40 tokens
    max_new_tokens=40, stop_id=4, pad_id=0, shaping=ppo.RewardShaping(gamma=0.99, lam=0.9)
  )
  prompts = [[0, 3], [0], [0, 5, 1], [0, 2], [0, 6]] * 2
  run = lambda: ppo.collect(nets, prompts, settings, rng=jax.random.PRNGKey(3), beta=0.1)[0]
  cut = run()
  monkeypatch.setattr(sampling.Generation, "trimmed", lambda self, multiple=16: self)
  full = run()
  n = cut.mask.shape[1]
  assert n % 16 == 0 and n < full.mask.shape[1] == 40  # a cut width, 40 generated
  assert not full.mask[:, n:].any()
  for f in ("mask", "old_logp", "ref_logp", "values", "rewards", "advantages", "returns"):
    np.testing.assert_allclose(getattr(cut, f), getattr(full, f)[:, :n], atol=2e-6, err_msg=f)
  for f in ("score", "kl"):
    np.testing.assert_allclose(getattr(cut, f), getattr(full, f), atol=2e-6, err_msg=f)
  np.testing.assert_array_equal(cut.tokens, full.tokens[:, : cut.tokens.shape[1]])

  # Plain SGD at lr 1: the params move by the gradients themselves, so equal params are
  # equal gradients. (Adam divides by |g| + eps and turns the rounding noise of
  # the key bias's exactly-zero gradient into steps of up to ~lr / 10 that
  # differ between the two widths: 3.6e-6 at lr 1e-2 here.)
  tx = optax.sgd(1.0)
  start = lambda params: train.TrainState(
    jnp.array(0), params, tx.init(params), jax.random.PRNGKey(0)
  )
  mb = lambda r: next(ppo.minibatches(r, np.random.default_rng(0), 1))
  update_p = functools.partial(ppo.policy_update, policy=policy, tx=tx, clip_eps=0.2, ptx_coef=0.0)
  update_v = functools.partial(ppo.value_update, value_model=critic, tx=tx, clip_eps=0.2)
  (sp_cut, st_cut), (sp_full, st_full) = (
    update_p(start(p_params), mb(r), None) for r in (cut, full)
  )
  (sv_cut, sv_st_cut), (sv_full, sv_st_full) = (
    update_v(start(v_params), mb(r)) for r in (cut, full)
  )
  for a, b in ((st_cut, st_full), (sv_st_cut, sv_st_full)):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  for a, b in ((sp_cut.params, sp_full.params), (sv_cut.params, sv_full.params)):
    jax.tree_util.tree_map(lambda u, w: np.testing.assert_allclose(u, w, atol=1e-6), a, b)
