"""The mathematics of RLHF with PPO, as pure functions on arrays.

Shapes: B rollouts, N response tokens. `mask` [B, N] is True for response
tokens up to and including EOS; padding after it is False and must never
reach rewards, advantages or losses. The per-token reward is -beta * KL at
every response token plus the reward model's score at the last one; GAE turns
it into advantages; the policy loss is PPO's clipped surrogate.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import heads


def masked_mean(x, mask, axis=None):
  mask = mask.astype(x.dtype)
  return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def masked_var(x, mask):
  mean = masked_mean(x, mask)
  return masked_mean((x - mean) ** 2, mask)


def whiten(x, mask, shift_mean: bool = True):
  """(x - mean) / std over the masked entries of the batch; masked-out entries -> 0."""
  mean, var = masked_mean(x, mask), masked_var(x, mask)
  out = (x - mean) * jax.lax.rsqrt(var + 1e-8)
  if not shift_mean:
    out = out + mean
  return jnp.where(mask, out, 0.0)


def per_token_rewards(score, logp, ref_logp, mask, beta):
  """r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)), plus `score` on the last token.

  score [B], logp/ref_logp [B, N], mask [B, N]. Returns (rewards [B, N], kl [B, N]).
  """
  kl = jnp.where(mask, logp - ref_logp, 0.0)
  rewards = -beta * kl
  last = jax.nn.one_hot(heads.final_index(mask), mask.shape[-1])  # [B, N]; empty row: zeros
  return jnp.where(mask, rewards + last * score[:, None], 0.0), kl


def final_scores(rm_score, ended_with_eos, truncation_penalty: float | None):
  """The score credited at the last token: the reward model's, or a fixed penalty for
  responses that hit the length limit without EOS (None keeps the RM score)."""
  if truncation_penalty is None:
    return rm_score
  return jnp.where(ended_with_eos, rm_score, truncation_penalty)


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
  """Generalised advantage estimation, right to left over the response.

  delta_t = r_t + gamma * V_{t+1} - V_t, with V after the last token = 0;
  A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V. Masked entries -> 0.
  rewards, values, mask [B, N]. Returns (advantages [B, N], returns [B, N]).
  """
  mask_f = mask.astype(values.dtype)
  values = values * mask_f
  next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
  next_mask = jnp.concatenate([mask_f[:, 1:], jnp.zeros_like(mask_f[:, :1])], axis=1)
  deltas = (rewards + gamma * next_values * next_mask - values) * mask_f  # [B, N]

  def step(carry, xs):
    delta, m_next = xs
    adv = delta + gamma * lam * carry * m_next
    return adv, adv

  _, adv = jax.lax.scan(
    step, jnp.zeros(values.shape[0], values.dtype), (deltas.T, next_mask.T), reverse=True
  )
  advantages = adv.T * mask_f
  return advantages, (advantages + values) * mask_f


def policy_loss(logp, old_logp, advantages, mask, clip_eps: float = 0.2):
  """Clipped surrogate. Returns (loss, {'clip_frac', 'approx_kl', 'ratio'})."""
  log_ratio = jnp.where(mask, logp - old_logp, 0.0)
  ratio = jnp.exp(log_ratio)
  unclipped = -advantages * ratio
  clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
  loss = masked_mean(jnp.maximum(unclipped, clipped), mask)
  stats = {
    "clip_frac": masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), mask),
    "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),  # k3 estimator, >= 0
    "ratio": masked_mean(ratio, mask),
  }
  return loss, stats


def value_loss(values, old_values, returns, mask, clip_eps: float = 0.2):
  """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2), masked mean."""
  clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
  loss = 0.5 * jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2)
  return masked_mean(loss, mask)


def entropy(logits, mask):
  """Mean entropy of the policy's distribution [B, N, V] over response tokens."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return masked_mean(-(jnp.exp(logp) * logp).sum(-1), mask)


def explained_variance(values, returns, mask):
  """1 - Var[R - V] / Var[R]: 1 is a perfect critic, 0 no better than a constant."""
  return 1.0 - masked_var(returns - values, mask) / jnp.maximum(masked_var(returns, mask), 1e-8)


# ----------------------------------------------------------------------------
# KL controllers (host side: beta is a plain float carried in the checkpoint)


@dataclasses.dataclass
class FixedKL:
  beta: float

  def update(self, kl: float, n_samples: int) -> float:
    return self.beta


@dataclasses.dataclass
class AdaptiveKL:
  """Ziegler et al. 2019: e = clip(KL/target - 1, -0.2, 0.2);
  beta <- beta * (1 + e * n_samples / horizon)."""

  beta: float
  target: float
  horizon: int

  def update(self, kl: float, n_samples: int) -> float:
    e = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
    self.beta *= 1.0 + e * n_samples / self.horizon
    return self.beta


def kl_controller(kind: str, beta: float, target: float = 6.0, horizon: int = 10000):
  if kind == "fixed":
    return FixedKL(beta)
  if kind == "adaptive":
    return AdaptiveKL(beta, target, horizon)
  raise ValueError(f"config.ppo.kl_controller={kind!r}; allowed: 'fixed', 'adaptive'")
