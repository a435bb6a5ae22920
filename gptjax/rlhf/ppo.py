"""RLHF with PPO: rollouts, rewards, advantages and the PPO update.

One iteration (InstructGPT / Ziegler et al. 2019):
  1. rollout   the policy answers B prompts with the shared sampler, sampling
               the pure distribution (temperature 1, no top-k/top-p);
  2. score     old log-probs (policy), reference log-probs (frozen SFT),
               values (critic) and the reward model's score at the last token;
  3. rewards   r_t = -beta * (logp - ref_logp), plus the score on the last
               token (or a penalty if the response hit the length limit);
  4. GAE       advantages and returns, advantages whitened over the batch;
  5. update    `epochs` passes over shuffled minibatches: clipped surrogate
               (+ gamma_ptx * LM loss on pretraining batches: PPO-ptx) for the
               policy, clipped value loss for the critic.

Sequences are [left-padded prompt P | response N]; logits at index i predict
token i + 1, so response token j (at P + j) is scored by logits at P + j - 1,
and its value estimate is the critic's output at P + j - 1. N is the longest
response of the rollout rounded up to 16 (`Generation.trimmed`), not
max_new_tokens: every loss and statistic is a masked mean over the batch's
response tokens, so the all-padding columns cut are invisible.

A rollout is `collect(Networks, prompts, RolloutSettings, rng=, beta=)`:
`Networks` holds the four networks (modules static, params traced), so the
scoring program compiles once and is reused as the params change; the
settings are hashable, and beta is traced, so the KL controller never
triggers a recompile.
"""

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from gptjax import heads, losses, model as model_lib, sampling
from gptjax.rlhf import ppo_math
from gptjax.train import TrainState


@struct.dataclass
class Networks:
  """The four networks of a rollout: their modules (static: part of the jit
  cache key, compared by config) and their params (traced)."""

  policy: model_lib.Transformer = struct.field(pytree_node=False)
  value: heads.ScalarHeadModel = struct.field(pytree_node=False)  # the critic
  reward: heads.ScalarHeadModel = struct.field(pytree_node=False)
  policy_params: Any = None
  ref_params: Any = None  # the frozen SFT policy: the KL reference
  value_params: Any = None
  rm_params: Any = None


@dataclasses.dataclass(frozen=True)
class RewardShaping:
  """How scores become per-token rewards and advantages (steps 3-4).

  Hashable: `advantages` takes it as one static argument.
  """

  gamma: float = 1.0
  lam: float = 0.95
  truncation_penalty: float | None = None  # score of a response that never stopped; None: RM's
  whiten_rewards: bool = False  # normalise final scores over the batch
  reward_clip: float | None = None  # clip final scores to [-c, c]

  @classmethod
  def from_config(cls, ppo_config) -> "RewardShaping":
    """From config.ppo (gamma, lam, use_truncation_penalty, truncation_penalty,
    whiten_rewards, reward_clip; a reward_clip of 0 means off)."""
    p = ppo_config
    return cls(
      gamma=p.gamma,
      lam=p.lam,
      truncation_penalty=p.truncation_penalty if p.use_truncation_penalty else None,
      whiten_rewards=p.whiten_rewards,
      reward_clip=p.reward_clip or None,
    )


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """What stays fixed from one rollout to the next (beta and the key do not)."""

  max_new_tokens: int
  stop_id: int  # the response ends at this token (chat: <|end_turn|>)
  pad_id: int
  shaping: RewardShaping = RewardShaping()

  @classmethod
  def from_config(cls, ppo_config, tokenizer) -> "RolloutSettings":
    """Chat rollouts of config.ppo: stop at <|end_turn|>, pad with the tokenizer's pad."""
    return cls(
      max_new_tokens=ppo_config.max_new_tokens,
      stop_id=tokenizer.end_turn_id,
      pad_id=tokenizer.pad_id,
      shaping=RewardShaping.from_config(ppo_config),
    )


class Scores(NamedTuple):
  """Step 2's outputs for a rollout of B responses of N tokens."""

  logp: jax.Array  # [B, N] policy log-probs
  ref_logp: jax.Array  # [B, N] reference log-probs
  values: jax.Array  # [B, N] critic estimates
  score: jax.Array  # [B] reward-model score at the last real token


@dataclasses.dataclass
class Rollout:
  """A batch of experience; every array is [B, ...] (host numpy)."""

  tokens: np.ndarray  # [B, P + N] prompt (left-padded) + response
  token_mask: np.ndarray  # [B, P + N] real tokens
  positions: np.ndarray  # [B, P + N] position ids
  mask: np.ndarray  # [B, N] response tokens (up to and including the stop token)
  old_logp: np.ndarray  # [B, N] policy log-probs at rollout time
  ref_logp: np.ndarray  # [B, N] reference (SFT) log-probs
  values: np.ndarray  # [B, N] critic estimates
  rewards: np.ndarray  # [B, N] per-token rewards
  advantages: np.ndarray  # [B, N] whitened
  returns: np.ndarray  # [B, N]
  score: np.ndarray  # [B] reward-model score (before the truncation penalty)
  kl: np.ndarray  # [B] sum over the response of logp - ref_logp
  ended: np.ndarray  # [B] bool: the response emitted the stop token
  sampler_logp: np.ndarray  # [B, N] log-probs reported by the sampler (a consistency check)

  def texts(self, tokenizer, stop_id: int) -> list[str]:
    """Each response's text, without the stop token (`sampling.response_texts`)."""
    N = self.mask.shape[1]
    return sampling.response_texts(tokenizer, self.tokens[:, -N:], self.mask, (stop_id,))


def join(prompt_tokens, prompt_mask, response, response_mask):
  """[B, P] + [B, N] -> tokens, token_mask, positions [B, P + N]."""
  tokens = np.concatenate([prompt_tokens, response], axis=1)
  token_mask = np.concatenate([prompt_mask, response_mask], axis=1)
  positions = np.maximum(np.cumsum(token_mask, axis=1) - 1, 0)
  return tokens.astype(np.int32), token_mask, positions.astype(np.int32)


def response_logprobs(model, params, tokens, token_mask, positions, n_response: int):
  """Log-probs [B, N] of the response tokens and their logits [B, N, V]."""
  logits = model.apply({"params": params}, tokens, positions, token_mask)  # [B, L, V]
  P = tokens.shape[1] - n_response
  logits = logits[:, P - 1 : -1]  # [B, N, V]
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, tokens[:, P:, None], axis=-1)[..., 0], logits


def response_values(value_model, params, tokens, token_mask, positions, n_response: int):
  """Critic estimates [B, N]: V(state before response token j) = output at P + j - 1."""
  v = value_model.apply({"params": params}, tokens, positions, token_mask)  # [B, L]
  P = tokens.shape[1] - n_response
  return v[:, P - 1 : -1]


@functools.partial(jax.jit, static_argnames=("n_response",))
def score_rollout(nets: Networks, tokens, token_mask, positions, n_response: int) -> Scores:
  """Step 2: old/ref log-probs, values and the reward-model score, in one program.

  tokens, token_mask, positions [B, P + N] (`join`); n_response = N.
  """
  seq = (tokens, token_mask, positions)
  logp, _ = response_logprobs(nets.policy, nets.policy_params, *seq, n_response)
  ref_logp, _ = response_logprobs(nets.policy, nets.ref_params, *seq, n_response)
  values = response_values(nets.value, nets.value_params, *seq, n_response)
  score = heads.score(nets.reward, nets.rm_params, tokens, token_mask, positions)
  return Scores(logp, ref_logp, values, score)


@functools.partial(jax.jit, static_argnames=("shaping",))
def advantages(scores: Scores, ended, mask, beta, *, shaping: RewardShaping):
  """Steps 3-4: rewards, GAE and whitened advantages.

  ended [B] bool (the response emitted its stop token), mask [B, N], beta the
  KL coefficient (traced: it changes every iteration without a recompile).
  Returns (rewards [B, N], whitened advantages [B, N], returns [B, N], kl [B]).
  """
  s = ppo_math.final_scores(scores.score, ended, shaping.truncation_penalty)
  if shaping.whiten_rewards:  # optional reward normalisation over the batch
    s = (s - s.mean()) / (s.std() + 1e-8)
  if shaping.reward_clip is not None:
    s = jnp.clip(s, -shaping.reward_clip, shaping.reward_clip)
  rewards, kl = ppo_math.per_token_rewards(s, scores.logp, scores.ref_logp, mask, beta)
  adv, returns = ppo_math.gae(rewards, scores.values, mask, shaping.gamma, shaping.lam)
  return rewards, ppo_math.whiten(adv, mask), returns, kl.sum(-1)


def policy_update(
  state: TrainState,
  mb: dict,
  ptx_batch: dict | None,
  *,
  policy,
  tx,
  clip_eps: float,
  ptx_coef: float,
):
  """One gradient step of the policy on a minibatch (+ PPO-ptx). Returns (state, stats)."""
  n = mb["mask"].shape[1]

  def loss_fn(params):
    logp, logits = response_logprobs(
      policy, params, mb["tokens"], mb["token_mask"], mb["positions"], n
    )
    pg, stats = ppo_math.policy_loss(logp, mb["old_logp"], mb["advantages"], mb["mask"], clip_eps)
    stats["entropy"] = ppo_math.entropy(logits, mb["mask"])
    stats["policy_loss"] = pg
    loss = pg
    if ptx_batch is not None:
      lm = policy.apply({"params": params}, ptx_batch["tokens"])
      total, weight, _ = losses.token_cross_entropy(
        lm, ptx_batch["targets"], ptx_batch["loss_mask"]
      )
      stats["ptx_loss"] = total / weight
      loss = loss + ptx_coef * total / weight
    return loss, stats

  (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  stats["policy_grad_norm"] = optax.tree.norm(grads)
  return state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  ), stats


def value_update(state: TrainState, mb: dict, *, value_model, tx, clip_eps: float):
  """One gradient step of the critic on a minibatch. Returns (state, stats)."""
  n = mb["mask"].shape[1]

  def loss_fn(params):
    v = response_values(value_model, params, mb["tokens"], mb["token_mask"], mb["positions"], n)
    loss = ppo_math.value_loss(v, mb["values"], mb["returns"], mb["mask"], clip_eps)
    return loss, {
      "value_loss": loss,
      "explained_variance": ppo_math.explained_variance(mb["values"], mb["returns"], mb["mask"]),
    }

  (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  ), stats


def collect(
  nets: Networks, prompts: list[list[int]], settings: RolloutSettings, *, rng, beta: float
) -> tuple[Rollout, dict]:
  """Steps 1-4 for a batch of token-id prompts. Returns the rollout and timing stats."""
  t0 = time.perf_counter()
  gen = sampling.generate(
    nets.policy,
    nets.policy_params,
    prompts,
    max_new_tokens=settings.max_new_tokens,
    rng=rng,
    eos_id=settings.stop_id,
    pad_id=settings.pad_id,
    sampling=sampling.SamplingParams(),
    truncate="left",
  ).trimmed()  # scoring and updates run on the responses' real width (bucketed), not N
  t_gen = time.perf_counter() - t0
  tokens, token_mask, positions = join(gen.prompt_tokens, gen.prompt_mask, gen.tokens, gen.mask)
  scores = score_rollout(nets, tokens, token_mask, positions, gen.tokens.shape[1])
  ended = np.asarray((gen.tokens == settings.stop_id) & gen.mask).any(-1)
  rewards, adv, returns, kl = advantages(
    scores, jnp.asarray(ended), jnp.asarray(gen.mask), jnp.float32(beta), shaping=settings.shaping
  )
  host = jax.device_get
  rollout = Rollout(
    tokens=tokens,
    token_mask=token_mask,
    positions=positions,
    mask=gen.mask,
    old_logp=host(scores.logp),
    ref_logp=host(scores.ref_logp),
    values=host(scores.values),
    rewards=host(rewards),
    advantages=host(adv),
    returns=host(returns),
    score=host(scores.score),
    kl=host(kl),
    ended=ended,
    sampler_logp=gen.logprobs,
  )
  n_tokens = int(gen.mask.sum())
  return rollout, {  # where a rollout's time goes: sampling, then scoring (rollout_s - generate_s)
    "rollout_tokens_per_s": n_tokens / max(t_gen, 1e-9),
    "generate_s": t_gen,
    "rollout_s": time.perf_counter() - t0,
  }


def minibatches(rollout: Rollout, rng: np.random.Generator, n_minibatches: int):
  """Shuffled minibatch dicts covering the rollout once."""
  B = rollout.tokens.shape[0]
  perm = rng.permutation(B)
  fields = (
    "tokens",
    "token_mask",
    "positions",
    "mask",
    "old_logp",
    "values",
    "advantages",
    "returns",
  )
  for idx in np.array_split(perm, n_minibatches):
    yield {f: getattr(rollout, f)[idx] for f in fields}


def rollout_stats(rollout: Rollout) -> dict[str, float]:
  m = rollout.mask
  return {
    "rm_score": float(rollout.score.mean()),
    "kl": float(rollout.kl.mean()),
    "response_length": float(m.sum(-1).mean()),
    "ended_fraction": float(rollout.ended.mean()),
    "reward_total": float((rollout.rewards * m).sum(-1).mean()),
    "sampler_logp_gap": float(np.abs((rollout.sampler_logp - rollout.old_logp) * m).max()),
  }
