"""PPO behaviour: rollout/training log-probs agree, and PPO solves a one-token bandit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from gptjax import heads, model as model_lib, train
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


def test_first_minibatch_ratio_is_one_and_sampler_logprobs_match(models):
  policy, critic, p_params, v_params = models
  prompts = [[BOS, 3], [BOS], [BOS, 5, 1]]
  rollout, _ = ppo.collect(
    policy,
    critic,
    critic,
    p_params,
    p_params,
    v_params,
    v_params,
    prompts,
    rng=jax.random.PRNGKey(0),
    max_new_tokens=3,
    stop_id=STOP,
    pad_id=0,
    beta=0.1,
    gamma=1.0,
    lam=0.95,
    truncation_penalty=None,
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


def test_ptx_term_adds_lm_loss(models):
  policy, critic, p_params, v_params = models
  tx = _optimizer(0.0)
  state = train.TrainState(jnp.array(0), p_params, tx.init(p_params), jax.random.PRNGKey(0))
  rollout, _ = ppo.collect(
    policy,
    critic,
    critic,
    p_params,
    p_params,
    v_params,
    v_params,
    [[BOS]] * 4,
    rng=jax.random.PRNGKey(1),
    max_new_tokens=1,
    stop_id=STOP,
    pad_id=0,
    beta=0.0,
    gamma=1.0,
    lam=0.95,
    truncation_penalty=None,
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
      score,
      jnp.ones(64, bool),
      logp,
      logp,
      values,
      jnp.asarray(gen.mask),
      0.0,
      gamma=1.0,
      lam=0.95,
      truncation_penalty=None,
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
