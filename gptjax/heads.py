"""Scalar heads on the Transformer trunk: the reward model and the value model.

Both are `ScalarHeadModel`: the trunk of `gptjax.model` followed by a linear
head D -> 1 at every position, giving values [B, T]. The reward model reads
the value at each row's final real token; the value model (PPO's critic)
uses every position.

Initialised from a language model's trunk (SFT, as InstructGPT did), so the
parameter tree is {'trunk': <LM trunk>, 'head_w', 'head_b'}; the LM's tied
embedding lives in the trunk and is reused as is. Any trunk of
`gptjax.model` serves, GPT-2 or Llama family: an untied LM's output
projection (`w_head`) sits beside its trunk and is simply left out.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import model as model_lib, sampling


class ScalarHeadModel(nn.Module):
  """tokens [B, T] -> float32 scalars [B, T] (one per position)."""

  cfg: model_lib.TransformerConfig

  @nn.compact
  def __call__(self, tokens, positions=None, token_mask=None, *, decode=False, deterministic=True):
    h = model_lib.Trunk(self.cfg, name="trunk")(
      tokens, positions, token_mask, decode=decode, deterministic=deterministic
    )  # [B, T, D]
    w = self.param(
      "head_w",
      nn.with_logical_partitioning(
        nn.initializers.normal(1.0 / (self.cfg.d_model + 1) ** 0.5), ("embed",)
      ),
      (self.cfg.d_model,),
      jnp.float32,
    )
    b = self.param(
      "head_b", nn.with_logical_partitioning(nn.initializers.zeros, ()), (), jnp.float32
    )
    return jnp.einsum("btd,d->bt", h.astype(jnp.float32), w) + b  # [B, T]


def final_index(token_mask) -> jax.Array:
  """Index of each row's last True entry: token_mask [B, T] -> [B] int32, -1
  for an empty row (`jax.nn.one_hot` of -1 is all zeros). Used for the reward
  model's score and PPO's last-token reward alike."""
  T = token_mask.shape[-1]
  positions = jnp.arange(T)
  return jnp.max(jnp.where(token_mask, positions, -1), axis=-1).astype(jnp.int32)


def final_score(values, token_mask) -> jax.Array:
  """values [B, T] read at each row's last real token -> [B]."""
  return jnp.take_along_axis(values, final_index(token_mask)[:, None], axis=-1)[:, 0]


def score(model: ScalarHeadModel, params, tokens, token_mask, positions=None) -> jax.Array:
  """Reward-model score of each sequence [B] (padding anywhere is ignored)."""
  values = model.apply({"params": params}, tokens, positions, token_mask)
  return final_score(values, token_mask)


@functools.partial(jax.jit, static_argnames=("model",))
def _score_jit(model, params, tokens, token_mask):
  return score(model, params, tokens, token_mask)


def score_batched(model: ScalarHeadModel, params, tokens, token_mask, batch_size: int = 64):
  """`score` of every row of tokens/token_mask [N, T] -> [N] numpy, in batches
  of `batch_size` rows padded to one shape (`sampling.padded_batches`): one
  compilation per (model, T) however many rows."""
  out = np.zeros(len(tokens), np.float32)
  for start, index in sampling.padded_batches(len(tokens), batch_size):
    n = min(batch_size, len(tokens) - start)
    out[start : start + n] = np.asarray(
      _score_jit(model, params, tokens[index], token_mask[index])
    )[:n]
  return out


def from_lm_params(lm_params, head_params) -> dict:
  """Reward/value params from a language model's params and a fresh head (the
  LM's own head, an untied `w_head`, is not needed and not copied)."""
  return {"trunk": lm_params["trunk"], **head_params}


def init_head(model: ScalarHeadModel, rng) -> dict:
  """A freshly initialised head {'head_w', 'head_b'} (the trunk is discarded)."""
  params = nn.meta.unbox(model.init(rng, jnp.zeros((1, 1), jnp.int32))["params"])
  return {k: v for k, v in params.items() if k != "trunk"}


def shift_bias(params, offset) -> dict:
  """Adds `offset` to the head bias (used to centre SFT samples at mean 0)."""
  return {**params, "head_b": params["head_b"] + offset}
