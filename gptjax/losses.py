"""Losses. Each returns (total, weight, metric_totals): the mean is total / weight.

Returning totals instead of means makes gradient accumulation exact: the
train loop sums totals and weights over micro-batches and divides once.
"""

import jax
import jax.numpy as jnp
import optax

from gptjax import heads


def token_cross_entropy(logits, targets, mask):
  """Masked next-token cross-entropy.

  logits [B, T, V] float32, targets [B, T] int, mask [B, T] {0, 1}.
  Returns (sum of token losses, number of tokens, {'accuracy': correct tokens}).
  """
  mask = mask.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]
  # A token is correct when its target's logit is the maximum: argmax, with an
  # exact tie counted as correct. A max is a plain vectorised reduction; the
  # argmax over [B, T, V] it replaces cost ~75 ms of the small preset's 2.7 s
  # CPU step (cross-entropy forward and backward alone: 94 -> 25 ms).
  target = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]  # [B, T]
  correct = (target >= jnp.max(logits, -1)).astype(jnp.float32)
  return (nll * mask).sum(), mask.sum(), {"accuracy": (correct * mask).sum()}


def lm_loss_fn(model):
  """Language-model loss for the shared train loop.

  batch: {'tokens' [B, T], 'targets' [B, T], 'loss_mask' [B, T]}; optional
  'positions', 'token_mask' (left-padded rows) and 'segment_ids' (packed
  rows) are passed to the model.
  """

  def loss_fn(params, batch, rng, train: bool):
    logits = model.apply(
      {"params": params},
      batch["tokens"],
      batch.get("positions"),
      batch.get("token_mask"),
      batch.get("segment_ids"),
      deterministic=not train,
      rngs={"dropout": rng} if train else None,
    )
    return token_cross_entropy(logits, batch["targets"], batch["loss_mask"])

  return loss_fn


def ranks_from_ranking(ranking):
  """ranking [B, K] (indices of responses, best first) -> rank [B, K] (0 = best)."""
  B, K = ranking.shape
  return (
    jnp.zeros((B, K), jnp.int32)
    .at[jnp.arange(B)[:, None], ranking]
    .set(jnp.broadcast_to(jnp.arange(K), (B, K)))
  )


def ranking_loss(rewards, ranking, rank=None):
  """InstructGPT's K-way ranking loss, all C(K, 2) pairs of one prompt together.

  rewards [B, K] float, ranking [B, K] int (response indices, best first).
  For each prompt: -1/C(K,2) * sum over pairs (better, worse) of
  log sigmoid(r_better - r_worse). Returns (sum over prompts, B,
  {'accuracy': sum over prompts of the fraction of pairs ordered correctly}).

  rank: optional [B, K] int ranks (0 = best) in which tied responses share a
  rank (a labeler that said "tie"; `ranking` is then ignored). A tie states
  no preference, so tied pairs are masked, and the loss is the mean over the
  informative (untied) pairs of the batch: total = sum of their
  -log sigmoid, weight = their count (a batch without one has weight 1 and
  total 0). Without ties this is the loss above (C(K,2) pairs per prompt).
  """
  if rank is None:
    return _ranking_loss_untied(rewards, ranking)
  rank = jnp.asarray(rank)
  better = (rank[:, :, None] < rank[:, None, :]).astype(jnp.float32)  # [B, K, K]: a beats c
  diff = rewards[:, :, None] - rewards[:, None, :]  # [B, K, K]: r_a - r_c
  n = better.sum()
  total = -(better * jax.nn.log_sigmoid(diff)).sum()
  correct = (better * (diff > 0)).sum()
  return total, jnp.maximum(n, 1.0), {"accuracy": correct}


def _ranking_loss_untied(rewards, ranking):
  B, K = rewards.shape
  rank = ranks_from_ranking(ranking)  # [B, K]
  better = (rank[:, :, None] < rank[:, None, :]).astype(jnp.float32)  # [B, K, K]: a beats c
  diff = rewards[:, :, None] - rewards[:, None, :]  # [B, K, K]: r_a - r_c
  n_pairs = K * (K - 1) / 2
  per_prompt = -(better * jax.nn.log_sigmoid(diff)).sum((1, 2)) / n_pairs  # [B]
  correct = (better * (diff > 0)).sum((1, 2)) / n_pairs  # [B]
  return per_prompt.sum(), jnp.float32(B), {"accuracy": correct.sum()}


def reward_loss_fn(model):
  """Ranking loss for the shared train loop.

  batch: {'tokens' [B, K, T], 'token_mask' [B, K, T], 'ranking' [B, K]}
  and optionally 'rank' [B, K] (ranks with ties: tied pairs are masked, see
  `ranking_loss`). The K responses of one prompt form one batch element: K
  forward passes (one [B*K, T] call) give all C(K, 2) comparisons.

  Or packed (`heads.pack_rows`, what the reward-model stage trains on): the
  B*K sequences in rows {'tokens', 'token_mask', 'positions', 'segment_ids'}
  [R, W] and 'last' [B, K], where each is read. The same rewards (up to
  float rounding) from the real tokens only.
  """

  def loss_fn(params, batch, rng, train: bool):
    if "last" in batch:
      values = heads.packed_values(model, params, batch, train=train, rng=rng)  # [R, W]
      rewards = heads.read_packed(values, batch["last"])  # [B, K]
      return ranking_loss(rewards, batch["ranking"], batch.get("rank"))
    B, K, T = batch["tokens"].shape
    tokens = batch["tokens"].reshape(B * K, T)
    mask = batch["token_mask"].reshape(B * K, T)
    values = model.apply(
      {"params": params},
      tokens,
      None,
      mask,
      deterministic=not train,
      rngs={"dropout": rng} if train else None,
    )  # [B*K, T]
    rewards = heads.final_score(values, mask).reshape(B, K)
    return ranking_loss(rewards, batch["ranking"], batch.get("rank"))

  return loss_fn
