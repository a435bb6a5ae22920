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
  def __call__(
    self,
    tokens,
    positions=None,
    token_mask=None,
    segment_ids=None,
    *,
    decode=False,
    deterministic=True,
  ):
    h = model_lib.Trunk(self.cfg, name="trunk")(
      tokens, positions, token_mask, segment_ids, decode=decode, deterministic=deterministic
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


# ----------------------------------------------------------------------------
# Packed rows: many short sequences scored in few rows.


def _best_fit(lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Best-fit decreasing: (row [N], start [N], rows) placing sequences of
  `lengths` (each 1..width) in rows of `width` tokens, each into the fullest
  row it fits (longest first; ties in index order: deterministic)."""
  row, start = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
  fill: list[int] = []  # tokens used per row
  by_space: list[list[int]] = [[] for _ in range(width + 1)]  # free space -> its rows
  for i in np.argsort(-lengths, kind="stable"):
    n = int(lengths[i])
    space = next((s for s in range(n, width + 1) if by_space[s]), None)
    if space is None:
      r = len(fill)
      fill.append(0)
    else:
      r = by_space[space].pop()
    row[i], start[i] = r, fill[r]
    fill[r] += n
    by_space[width - fill[r]].append(r)
  return row, start, len(fill)


def pack_rows(
  tokens, token_mask, width: int, *, groups: int = 1, row_multiple: int = 1, **per_token
) -> dict:
  """Right-padded sequences tokens/token_mask [N, T] packed into rows of `width`.

  A scalar head reads one value per sequence, at its last token; a batch of
  short sequences padded to its longest computes mostly padding (the small
  preset's comparisons: 33 real tokens of ~73 a row). Packed, each row holds
  several whole sequences: positions restart at every sequence and segment
  ids keep attention inside it, so each computes what it would alone (up to
  float rounding). Unlike `sft.pack` (conversations in order, for a
  token-level loss) the placement is best-fit decreasing: each sequence is
  read back through 'last' and 'sequence', so order does not matter.

  The N sequences are cut into `groups` consecutive equal groups (a train
  step's micro-batches), each packed into the same R rows: the most any
  group needs, rounded up to `row_multiple` (the batch shards, and few
  compiled shapes). Returns tokens, token_mask, positions, segment_ids
  [groups * R, width] (padding: token 0, mask False, segment 0); `per_token`
  arrays [N, T] placed like the tokens (0 on padding); sequence [groups * R,
  width]: each token's sequence index within its group (0 on padding: read
  it under a mask); and last [N]: each sequence's final token as an index
  into its group's R * width values (`read_packed`).
  """
  tokens, token_mask = np.asarray(tokens), np.asarray(token_mask, bool)
  N, T = token_mask.shape
  lengths = token_mask.sum(-1)
  if groups < 1 or N % groups:
    raise ValueError(f"{N} sequences cannot be cut into {groups} equal groups")
  if not (token_mask == (np.arange(T) < lengths[:, None])).all():
    raise ValueError("pack_rows needs right-padded sequences (real tokens first in each row)")
  if N and (lengths.min() < 1 or lengths.max() > width):
    raise ValueError(
      f"sequence lengths {lengths.min()}..{lengths.max()} do not fit rows of 1..{width} tokens"
    )
  n = N // groups
  fits = [_best_fit(lengths[g * n : (g + 1) * n], width) for g in range(groups)]
  R = -(-max((rows for _, _, rows in fits), default=1) // row_multiple) * row_multiple
  sources = {"tokens": tokens, **{k: np.asarray(v) for k, v in per_token.items()}}
  out = {k: np.zeros((groups * R, width), v.dtype) for k, v in sources.items()}
  out.update(
    token_mask=np.zeros((groups * R, width), bool),
    positions=np.zeros((groups * R, width), np.int32),
    segment_ids=np.zeros((groups * R, width), np.int32),
    sequence=np.zeros((groups * R, width), np.int32),
  )
  last = np.zeros(N, np.int32)
  for g, (row, start, _) in enumerate(fits):
    for j in range(n):
      i, r, s, length = g * n + j, g * R + row[j], start[j], lengths[g * n + j]
      for k, v in sources.items():
        out[k][r, s : s + length] = v[i, :length]
      out["token_mask"][r, s : s + length] = True
      out["positions"][r, s : s + length] = np.arange(length)
      out["segment_ids"][r, s : s + length] = s + 1  # unique within the row
      out["sequence"][r, s : s + length] = j
      last[i] = row[j] * width + s + length - 1
  return {**out, "last": last}


def read_packed(values, last) -> jax.Array:
  """values [R, W] of packed rows read at `last` (any shape, indices into R * W)."""
  return values.reshape(-1)[last]


def packed_values(model: ScalarHeadModel, params, packed: dict, *, train: bool = False, rng=None):
  """The head's values [R, W] over packed rows (`pack_rows`)."""
  return model.apply(
    {"params": params},
    packed["tokens"],
    packed["positions"],
    packed["token_mask"],
    packed["segment_ids"],
    deterministic=not train,
    rngs={"dropout": rng} if train else None,
  )


@functools.partial(jax.jit, static_argnames=("model",))
def _values_jit(model, params, packed):
  return packed_values(model, params, packed)


def score_batched(model: ScalarHeadModel, params, tokens, token_mask, batch_size: int = 64):
  """`score` of every right-padded row of tokens/token_mask [N, T] -> [N]
  numpy. The sequences are packed into rows of T (`pack_rows`), scored
  `batch_size` rows at a time (the last batch padded: `sampling.padded_batches`),
  so one compilation per (model, T) serves any number of sequences."""
  if not len(tokens):
    return np.zeros(0, np.float32)
  packed = pack_rows(tokens, token_mask, np.shape(tokens)[-1])
  rows = {k: packed[k] for k in ("tokens", "token_mask", "positions", "segment_ids")}
  R, W = rows["tokens"].shape
  values = np.zeros((R, W), np.float32)
  for start, index in sampling.padded_batches(R, batch_size):
    n = min(batch_size, R - start)
    batch = {k: v[index] for k, v in rows.items()}
    values[start : start + n] = np.asarray(_values_jit(model, params, batch))[:n]
  return values.reshape(-1)[packed["last"]]


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
