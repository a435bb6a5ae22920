"""Losses. Each returns (total, weight, metric_totals): the mean is total / weight.

Returning totals instead of means makes gradient accumulation exact: the
train loop sums totals and weights over micro-batches and divides once.
"""

import jax
import jax.numpy as jnp
import optax


def token_cross_entropy(logits, targets, mask):
  """Masked next-token cross-entropy.

  logits [B, T, V] float32, targets [B, T] int, mask [B, T] {0, 1}.
  Returns (sum of token losses, number of tokens, {'accuracy': correct tokens}).
  """
  mask = mask.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return (nll * mask).sum(), mask.sum(), {"accuracy": (correct * mask).sum()}


def lm_loss_fn(model):
  """Language-model loss for the shared train loop.

  batch: {'tokens' [B, T], 'targets' [B, T], 'loss_mask' [B, T]}; optional
  'positions' and 'token_mask' are passed to the model (left-padded rows).
  """
  def loss_fn(params, batch, rng, train: bool):
    logits = model.apply(
        {"params": params}, batch["tokens"], batch.get("positions"), batch.get("token_mask"),
        deterministic=not train, rngs={"dropout": rng} if train else None)
    return token_cross_entropy(logits, batch["targets"], batch["loss_mask"])
  return loss_fn
