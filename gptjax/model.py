"""A GPT-2-family decoder-only Transformer in Flax linen.

Read top to bottom: config -> attention -> MLP -> block -> Transformer.

Shape letters used in comments and einsums:
  B batch, T query length, S key length (= T, or max_len in decode mode),
  D d_model, H heads, K head dim (D / H), F d_ff, V vocab.

Every parameter carries logical axis names (`embed`, `heads`, `kv`, `mlp`,
`vocab`) that `gptjax.sharding` maps onto mesh axes; activations are
constrained with (`batch`, `length`, `embed`).

Decoding: with `decode=True` the module keeps a KV cache in the `cache`
collection. Tokens are written at slots [index, index + T) of the cache, so
the same call handles a whole prompt (prefill) and then one token at a time.
Rows of a batch may be left-padded: `token_mask` marks real tokens and
`positions` gives each token's position id, so a padded row computes exactly
what it would alone.
"""

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_NEG_INF = -1e9  # finite, so fully masked rows give a uniform softmax, not NaN


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  vocab_size: int
  max_len: int
  n_layer: int
  n_head: int
  d_model: int
  d_ff: int
  dropout: float = 0.0
  dtype: Any = jnp.float32  # activations
  param_dtype: Any = jnp.float32  # parameters

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_head

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "TransformerConfig":
    """Validates `config.model` and converts dtype names."""
    for name in ("dtype", "param_dtype"):
      if c[name] not in DTYPES:
        raise ValueError(f"config.model.{name}={c[name]!r}; allowed: {sorted(DTYPES)}")
    for name in ("vocab_size", "max_len", "n_layer", "n_head", "d_model", "d_ff"):
      if not isinstance(c[name], int) or c[name] <= 0:
        raise ValueError(f"config.model.{name}={c[name]!r} must be a positive integer")
    if c.d_model % c.n_head:
      raise ValueError(
        f"config.model.d_model={c.d_model} must be divisible by config.model.n_head={c.n_head}"
      )
    if not 0.0 <= c.dropout < 1.0:
      raise ValueError(f"config.model.dropout={c.dropout} must be in [0, 1)")
    return cls(
      vocab_size=c.vocab_size,
      max_len=c.max_len,
      n_layer=c.n_layer,
      n_head=c.n_head,
      d_model=c.d_model,
      d_ff=c.d_ff,
      dropout=c.dropout,
      dtype=DTYPES[c.dtype],
      param_dtype=DTYPES[c.param_dtype],
    )


def _transposed_equations(eq: str) -> tuple[str, str]:
  """'ab,bc->ac' -> ('ac,bc->ab', 'ab,ac->bc'): the einsums of the two input cotangents.

  Valid when every index occurs in exactly two of the three terms (no index
  summed within one operand), as in all of this module's contractions.
  """
  inputs, out = eq.split("->")
  lhs, rhs = inputs.split(",")
  return f"{out},{rhs}->{lhs}", f"{lhs},{out}->{rhs}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _low_precision_einsum(eq: str, a, b, out_dtype):
  return jnp.einsum(eq, a, b, preferred_element_type=jnp.float32).astype(out_dtype)


def _low_precision_einsum_fwd(eq, a, b, out_dtype):
  return _low_precision_einsum(eq, a, b, out_dtype), (a, b)


def _low_precision_einsum_bwd(eq, out_dtype, res, g):
  a, b = res
  eq_a, eq_b = _transposed_equations(eq)
  g = g.astype(a.dtype)  # the cotangent in the operands' dtype, as autocast keeps it
  da = jnp.einsum(eq_a, g, b, preferred_element_type=jnp.float32).astype(a.dtype)
  db = jnp.einsum(eq_b, a, g, preferred_element_type=jnp.float32).astype(b.dtype)
  return da, db


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


def einsum(eq: str, a, b, out_dtype=None):
  """`jnp.einsum` of an activation and a weight; the result in `out_dtype` (default: theirs).

  float32 operands: exactly `jnp.einsum`. Lower-precision (bfloat16)
  operands: the products are accumulated in float32 and rounded once, in the
  forward and in both backward contractions (a custom VJP), as
  `torch.autocast` does. Asking for float32 results is what reaches
  XLA:CPU's bf16 GEMM kernels (YNNPACK, `avx512_bf16`, 2x the float32 rate
  here); a bf16 -> bf16 product is converted to float32 before its dot.

  Only for the weight contractions (projections, MLP, head), whose backward
  contractions are plain GEMMs. Attention's batched contractions stay
  `jnp.einsum`: jaxlib 0.10.2 compiles its bf16 -> float32 batched backward
  dot to a thunk that fails at run time ("Unsupported element type for
  DotThunk::Execute: BF16 x BF16 = F32") when YNNPACK declines its layout.
  """
  out_dtype = a.dtype if out_dtype is None else out_dtype
  if a.dtype == jnp.float32 and b.dtype == jnp.float32:
    return jnp.einsum(eq, a, b).astype(out_dtype)
  if a.dtype != b.dtype:
    raise ValueError(f"einsum {eq!r}: operand dtypes differ ({a.dtype} and {b.dtype})")
  return _low_precision_einsum(eq, a, b, jnp.dtype(out_dtype))


def _init(std: float, names: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _zeros(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.zeros, names)


def _layer_norm(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
    epsilon=1e-5,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
    bias_init=_zeros(("embed",)),
  )


def causal_mask(
  q_pos: jax.Array, k_pos: jax.Array, k_valid: jax.Array, segment_ids: jax.Array | None = None
) -> jax.Array:
  """[B, 1, T, S] bool: query at slot q may see key at slot k iff k <= q, k is real,
  and (for packed rows) both lie in the same segment."""
  allowed = k_pos[None, None, :] <= q_pos[None, :, None]  # [1, T, S]
  mask = allowed & k_valid[:, None, :]  # [B, T, S]
  if segment_ids is not None:  # [B, T] with S = T
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  return mask[:, None]  # [B, 1, T, S]


class CausalSelfAttention(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, token_mask, segment_ids=None, *, decode: bool, deterministic: bool):
    cfg = self.cfg
    D, H, K = cfg.d_model, cfg.n_head, cfg.head_dim
    B, T, _ = x.shape
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    w_qkv = self.param(
      "w_qkv", _init(0.02, ("embed", None, "heads", "kv")), (D, 3, H, K), cfg.param_dtype
    )
    b_qkv = self.param("b_qkv", _zeros((None, "heads", "kv")), (3, H, K), cfg.param_dtype)
    w_out = self.param(
      "w_out", _init(resid_std, ("heads", "kv", "embed")), (H, K, D), cfg.param_dtype
    )
    b_out = self.param("b_out", _zeros(("embed",)), (D,), cfg.param_dtype)

    qkv = einsum("btd,dchk->cbthk", x, w_qkv.astype(cfg.dtype))
    qkv = qkv + b_qkv.astype(cfg.dtype)[:, None, None]  # [3, B, T, H, K]
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, T, H, K] each

    if decode:
      # The cache is kept heads-first, [B, H, S, K]: each decode step then reads
      # it without transposing it (a copy of the whole cache per step, 2.3x the
      # step time at batch 32). Training keeps [B, S, H, K], ~10% faster there.
      k, v, k_valid, q_slot, k_slot = self._update_cache(k, v, token_mask)
      kv = "bhsk"
    else:
      k_valid = token_mask  # [B, S=T]
      q_slot = k_slot = jnp.arange(T)
      kv = "bshk"
    mask = causal_mask(q_slot, k_slot, k_valid, None if decode else segment_ids)

    scores = jnp.einsum(f"bthk,{kv}->bhts", q, k) / math.sqrt(K)
    scores = jnp.where(mask, scores.astype(jnp.float32), _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)  # [B, H, T, S]
    probs = nn.Dropout(cfg.dropout)(probs, deterministic=deterministic)
    out = jnp.einsum(f"bhts,{kv}->bthk", probs, v)  # [B, T, H, K]
    out = einsum("bthk,hkd->btd", out, w_out.astype(cfg.dtype))
    return out + b_out.astype(cfg.dtype)  # [B, T, D]

  def _update_cache(self, k, v, token_mask):
    """Writes k, v [B, T, H, K] at the cache's current index. Returns the full
    cache k, v [B, H, S, K], valid [B, S] and the query and key slots."""
    cfg = self.cfg
    B, T, H, K = k.shape
    S = cfg.max_len
    cached_k = self.variable("cache", "k", jnp.zeros, (B, H, S, K), cfg.dtype)
    cached_v = self.variable("cache", "v", jnp.zeros, (B, H, S, K), cfg.dtype)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, H, T, K]
    valid = self.variable("cache", "valid", jnp.zeros, (B, S), jnp.bool_)
    index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, 0, i, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, 0, i, 0))
    valid.value = jax.lax.dynamic_update_slice(valid.value, token_mask, (0, i))
    index.value = i + T
    return cached_k.value, cached_v.value, valid.value, i + jnp.arange(T), jnp.arange(S)


class MLP(nn.Module):
  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    cfg = self.cfg
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    w_fc = self.param(
      "w_fc", _init(0.02, ("embed", "mlp")), (cfg.d_model, cfg.d_ff), cfg.param_dtype
    )
    b_fc = self.param("b_fc", _zeros(("mlp",)), (cfg.d_ff,), cfg.param_dtype)
    w_proj = self.param(
      "w_proj", _init(resid_std, ("mlp", "embed")), (cfg.d_ff, cfg.d_model), cfg.param_dtype
    )
    b_proj = self.param("b_proj", _zeros(("embed",)), (cfg.d_model,), cfg.param_dtype)
    h = einsum("btd,df->btf", x, w_fc.astype(cfg.dtype)) + b_fc.astype(cfg.dtype)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = jax.nn.gelu(h, approximate=True)  # [B, T, F]
    out = einsum("btf,fd->btd", h, w_proj.astype(cfg.dtype)) + b_proj.astype(cfg.dtype)
    return nn.Dropout(cfg.dropout)(out, deterministic=deterministic)


class Block(nn.Module):
  """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, token_mask, segment_ids=None, *, decode: bool, deterministic: bool):
    h = CausalSelfAttention(self.cfg, name="attn")(
      _layer_norm(self.cfg, "ln_1")(x),
      token_mask,
      segment_ids,
      decode=decode,
      deterministic=deterministic,
    )
    x = x + nn.Dropout(self.cfg.dropout)(h, deterministic=deterministic)
    x = x + MLP(self.cfg, name="mlp")(_layer_norm(self.cfg, "ln_2")(x), deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Trunk(nn.Module):
  """Embeddings and blocks up to the final LayerNorm: tokens -> hidden [B, T, D].

  Shared by the language model (`Transformer`) and the scalar heads
  (reward and value models) in `gptjax.heads`.
  """

  cfg: TransformerConfig

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
    cfg = self.cfg
    B, T = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    if token_mask is None:
      token_mask = jnp.ones((B, T), jnp.bool_)
    wte = self.param(
      "wte", _init(0.02, ("vocab", "embed")), (cfg.vocab_size, cfg.d_model), cfg.param_dtype
    )
    wpe = self.param(
      "wpe", _init(0.01, (None, "embed")), (cfg.max_len, cfg.d_model), cfg.param_dtype
    )
    x = (jnp.take(wte, tokens, axis=0) + jnp.take(wpe, positions, axis=0)).astype(cfg.dtype)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))  # [B, T, D]
    for i in range(cfg.n_layer):
      x = Block(cfg, name=f"block_{i}")(
        x, token_mask, segment_ids, decode=decode, deterministic=deterministic
      )
    return _layer_norm(cfg, "ln_f")(x)  # [B, T, D]


class Transformer(nn.Module):
  """Language model: tokens [B, T] -> float32 logits [B, T, V], head tied to `wte`.

  segment_ids [B, T] (optional): packed rows hold several documents; a token
  attends only within its own segment.
  """

  cfg: TransformerConfig

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
    trunk = Trunk(self.cfg, name="trunk")
    x = trunk(
      tokens, positions, token_mask, segment_ids, decode=decode, deterministic=deterministic
    )
    wte = trunk.variables["params"]["wte"]
    wte = wte.value if isinstance(wte, nn.Partitioned) else wte
    logits = einsum("btd,vd->btv", x, wte.astype(self.cfg.dtype), jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def build(config: ml_collections.ConfigDict) -> Transformer:
  """The Transformer of a run config (its `model` section)."""
  return Transformer(TransformerConfig.from_config(config.model))


def count_params(params, exclude_embeddings: bool = False) -> int:
  """Number of parameters; optionally without token/position embeddings (Kaplan's N)."""
  flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
  return sum(
    x.size
    for path, x in flat
    if not (exclude_embeddings and any(getattr(p, "key", None) in ("wte", "wpe") for p in path))
  )


def matmul_params(params, tied_unembedding: bool = True) -> int:
  """Parameters that take part in matmuls: all but the position embeddings.

  The token embedding counts only when it is also the (tied) output
  projection, as in the language model; a scalar-head model only looks it up.
  """
  trunk = params["trunk"]
  n = count_params(params) - trunk["wpe"].size
  return n if tied_unembedding else n - trunk["wte"].size


def flops_per_token(cfg: TransformerConfig, n_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6N + 12 * n_layer * d_model * T (PaLM, appendix B)."""
  return 6 * n_params + 12 * cfg.n_layer * cfg.d_model * seq_len


def init_cache(model: nn.Module, batch_size: int):
  """An empty KV cache for `batch_size` rows (index 0, nothing valid).

  `init` itself runs a forward pass that writes into the cache, so the
  shapes are taken with `eval_shape` and filled with zeros.
  """
  tokens = jnp.zeros((batch_size, 1), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, decode=True)["cache"])
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
