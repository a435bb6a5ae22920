"""A decoder-only Transformer in Flax linen: the GPT-2 family and the Llama family.

Read top to bottom: config -> norms and rotary embeddings -> attention ->
MLP -> block -> Transformer.

One module expresses both families. Switches in `config.model` choose each
part; every switch is optional and its absence means GPT-2, so a config
written before they existed builds exactly its old parameter tree and
computes its old outputs (its checkpoints restore bit-identically; the
outputs are bit-identical up to 128 tokens, and equal up to float rounding
beyond, where training attention now runs block-causal, `query_block`):

  switch      GPT-2 (default)              Llama
  position    "learned": a wpe table       "rope": rotary q and k (rope_theta)
  norm        "layernorm" (scale, bias)    "rmsnorm" (scale only)
  mlp         "gelu": w_fc, w_proj         "swiglu": w_gate_up, w_proj
  n_kv_head   n_head                       fewer: grouped-query attention
  tied_head   True: logits from wte        False: a separate w_head
  use_bias    True                         False: no projection/MLP biases

Any mixture is allowed (e.g. rope + layernorm + gelu with biases); norm_eps
is both norms' epsilon. RoPE follows Hugging Face's Llama ("rotate_half")
convention, and the parameter layout below is what the checkpoint
converters read and write, so keep both fixed:

  trunk/wte [V, D]; trunk/wpe [max_len, D] (learned positions only)
  trunk/block_{i}/ln_1, ln_2 and trunk/ln_f: {scale, bias} or {scale}
  trunk/block_{i}/attn: G == H: w_qkv [D, 3, H, K] (+ b_qkv [3, H, K]);
    G < H: w_q [D, H, K], w_kv [D, 2, G, K] (+ b_q [H, K], b_kv [2, G, K]);
    w_out [H, K, D] (+ b_out [D])
  trunk/block_{i}/mlp: gelu: w_fc [D, F], b_fc, w_proj [F, D], b_proj;
    swiglu: w_gate_up [D, 2, F] (0 gate, 1 up), w_proj [F, D]
    (+ b_gate_up [2, F], b_proj [D])
  w_head [D, V] beside `trunk` when the head is untied

Shape letters used in comments and einsums:
  B batch, T query length, S key length (= T, or max_len in decode mode),
  D d_model, H heads, G key/value heads (H, or fewer with grouped-query
  attention), R = H / G query heads per key/value head, K head dim (D / H),
  F d_ff, V vocab.

Every parameter carries logical axis names (`embed`, `heads`, `kv_heads`,
`kv`, `mlp`, `vocab`) that `gptjax.sharding` maps onto mesh axes;
activations are constrained with (`batch`, `length`, `embed`).

Decoding: with `decode=True` the module keeps a KV cache in the `cache`
collection (`init_cache`: max_len slots, or fewer when the generation's
length is known; `grow_cache` adds empty slots to a cache in use). Tokens
are written at slots [index, index + T) of the cache, so the same call
handles a whole prompt (prefill) and then one token at a time.
Rows of a batch may be left-padded: `token_mask` marks real tokens and
`positions` gives each token's position id (the learned embedding's index,
or RoPE's angle), so a padded row computes exactly what it would alone.
"""

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
# The optional architecture fields of `config.model` and what their absence
# means (GPT-2). n_kv_head None: one key/value head per query head.
ARCH_DEFAULTS = {
  "position": "learned",
  "rope_theta": 10000.0,
  "norm": "layernorm",
  "norm_eps": 1e-5,
  "mlp": "gelu",
  "n_kv_head": None,
  "tied_head": True,
  "use_bias": True,
}
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
  # Architecture switches (module docstring); the defaults are GPT-2.
  position: str = "learned"  # POSITIONS
  rope_theta: float = 10000.0
  norm: str = "layernorm"  # NORMS
  norm_eps: float = 1e-5
  mlp: str = "gelu"  # MLPS
  n_kv_head: int | None = None  # None: n_head. Not filled in, so that
  # `dataclasses.replace(cfg, n_head=...)` of a multi-head config stays multi-head.
  tied_head: bool = True
  use_bias: bool = True
  # Not architecture: training attention's query block (`query_blocks`), which
  # changes the work done, not the function computed. 0: one block.
  query_block: int = 128

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_head

  @property
  def kv_heads(self) -> int:
    """G: the key/value heads (n_head, or n_kv_head with grouped-query attention)."""
    return self.n_head if self.n_kv_head is None else self.n_kv_head

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict) -> "TransformerConfig":
    """Validates `config.model` and converts dtype names.

    The architecture switches are read with `c.get`: configs that predate
    them (and their pipeline fingerprints) do not change.
    """
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
    query_block = c.get("query_block", cls.query_block)
    if not isinstance(query_block, int) or isinstance(query_block, bool) or query_block < 0:
      raise ValueError(
        f"config.model.query_block={query_block!r}; allowed: a positive integer, or 0 for one block"
      )
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
      query_block=query_block,
      **_architecture(c),
    )


def _architecture(c: ml_collections.ConfigDict) -> dict:
  """The switches of `config.model`, validated; absent ones take the GPT-2 defaults."""

  get = lambda name: c.get(name, ARCH_DEFAULTS[name])

  def choice(name, allowed):
    value = get(name)
    if not isinstance(value, str) or value not in allowed:
      raise ValueError(f"config.model.{name}={value!r}; allowed: {list(allowed)}")
    return value

  def positive(name):
    value = get(name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not 0 < value < math.inf:
      raise ValueError(f"config.model.{name}={value!r}; allowed: a positive number")
    return float(value)

  def flag(name):
    value = get(name)
    if not isinstance(value, bool):
      raise ValueError(f"config.model.{name}={value!r}; allowed: True, False")
    return value

  position = choice("position", POSITIONS)
  if position == "rope" and (c.d_model // c.n_head) % 2:
    raise ValueError(
      f"config.model.position='rope' needs an even head dim, but d_model / n_head = "
      f"{c.d_model // c.n_head}; allowed: 'learned', or an even d_model / n_head"
    )
  n_kv_head = get("n_kv_head")
  divisors = [g for g in range(1, c.n_head + 1) if c.n_head % g == 0]
  is_int = isinstance(n_kv_head, int) and not isinstance(n_kv_head, bool)
  if n_kv_head is not None and not (is_int and n_kv_head in divisors):
    raise ValueError(
      f"config.model.n_kv_head={n_kv_head!r}; allowed: a divisor of "
      f"config.model.n_head={c.n_head} ({', '.join(map(str, divisors))})"
    )
  return dict(
    position=position,
    rope_theta=positive("rope_theta"),
    norm=choice("norm", NORMS),
    norm_eps=positive("norm_eps"),
    mlp=choice("mlp", MLPS),
    n_kv_head=n_kv_head,
    tied_head=flag("tied_head"),
    use_bias=flag("use_bias"),
  )


def _input_gradient_equation(eq: str) -> str:
  """'ab,bc->ac' -> 'ac,bc->ab': the einsum of the first operand's cotangent
  from the output's and the second operand (`_weight_gradient` orders the
  second's).

  Valid when every index occurs in exactly two of the three terms (no index
  summed within one operand), as in all of this module's contractions.
  """
  inputs, out = eq.split("->")
  lhs, rhs = inputs.split(",")
  return f"{out},{rhs}->{lhs}"


def _weight_gradient(eq: str, a, g, dtype):
  """The weight's cotangent of `einsum(eq, a, w)` given the output's `g`,
  accumulated in float32 and returned in `dtype`.

  It contracts a [B, T, ...] with g [B, T, ...] over the tokens. XLA:CPU's
  GEMMs (YNNPACK) take their left operand as [M, K] with K minor, so the
  left one is copied transposed: here always the narrower of the two (for
  w_proj the [T, D] output gradient, not the [T, 4D] hidden activation; for
  the tied head the [T, D] activation, not the [T, V] logits' gradient), and
  the weight-sized result is transposed instead, behind an optimisation
  barrier so that XLA does not fold that transpose back into the product.
  Same sums; the rounding of the summation order may differ from autodiff's.
  """
  (lhs, rhs), out = eq.split("->")[0].split(","), eq.split("->")[1]
  a_side = "".join(c for c in rhs if c in lhs)  # the weight's input axes
  g_side = "".join(c for c in rhs if c in out)  # its output axes
  size = lambda spec, x, axes: math.prod(x.shape[spec.index(c)] for c in axes)
  if size(lhs, a, a_side) <= size(out, g, g_side):
    order = a_side + g_side
    dw = jnp.einsum(f"{lhs},{out}->{order}", a, g, preferred_element_type=jnp.float32)
  else:
    order = g_side + a_side
    dw = jnp.einsum(f"{out},{lhs}->{order}", g, a, preferred_element_type=jnp.float32)
  if order != rhs:
    dw = jnp.transpose(jax.lax.optimization_barrier(dw), [order.index(c) for c in rhs])
  return dw.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _weight_einsum(eq: str, a, w, out_dtype):
  return jnp.einsum(eq, a, w, preferred_element_type=jnp.float32).astype(out_dtype)


def _weight_einsum_fwd(eq, a, w, out_dtype):
  return _weight_einsum(eq, a, w, out_dtype), (a, w)


def _weight_einsum_bwd(eq, out_dtype, res, g):
  a, w = res
  g = g.astype(a.dtype)  # the cotangent in the operands' dtype, as autocast keeps it
  eq_a = _input_gradient_equation(eq)
  da = jnp.einsum(eq_a, g, w, preferred_element_type=jnp.float32).astype(a.dtype)
  return da, _weight_gradient(eq, a, g, w.dtype)


_weight_einsum.defvjp(_weight_einsum_fwd, _weight_einsum_bwd)


def einsum(eq: str, a, b, out_dtype=None):
  """`jnp.einsum` of an activation `a` and a weight `b`; the result in
  `out_dtype` (default: theirs). A custom VJP (`_weight_gradient`) chooses
  the weight gradient's GEMM operand order.

  float32 operands: the forward is exactly `jnp.einsum`. Lower-precision
  (bfloat16) operands: the products are accumulated in float32 and rounded
  once, in the forward and in both backward contractions, as
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
  if a.dtype != b.dtype:
    raise ValueError(f"einsum {eq!r}: operand dtypes differ ({a.dtype} and {b.dtype})")
  return _weight_einsum(eq, a, b, jnp.dtype(out_dtype))


def fused_projection(x, w, b, decode: bool) -> list:
  """x [B, T, D] @ w [D, C, ...] (+ b [C, ...]): the C projections, each [B, T, ...].

  For the fused weights (w_qkv, w_kv, w_gate_up). Training computes the
  product as [C, B, T, ...], the form earlier versions trained with (the
  GEMM's own order, [B, T, C, ...], was no faster there: 2.641 vs 2.604 s a
  `small` step in session 11's A/B). Decoding
  computes [B, T, C, ...], the GEMM's own order: from the other form
  XLA:CPU transposed w inside the decode loop at every step (12% of the
  `small` decode step at batch 32, 15% of SmolLM2's).
  """
  tail = "xyz"[: w.ndim - 2]
  out = f"btc{tail}" if decode else f"cbt{tail}"
  y = einsum(f"btd,dc{tail}->{out}", x, w)
  if b is not None:
    b = b.astype(y.dtype)
    y = y + (b if decode else b[:, None, None])
  return [y[:, :, i] for i in range(w.shape[1])] if decode else list(y)


def _init(std: float, names: tuple):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def _zeros(names: tuple):
  return nn.with_logical_partitioning(nn.initializers.zeros, names)


# ----------------------------------------------------------------------------
# Norms and rotary position embeddings


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale over the last axis: LayerNorm without
  centring or bias (Llama).

  Normalised in float32 and rounded to `dtype` before the scale, as Hugging
  Face's LlamaRMSNorm does, so bfloat16 activations lose no precision in the
  mean of squares and converted checkpoints compute what they computed there.
  """

  epsilon: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      (x.shape[-1],),
      self.param_dtype,
    )
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return normed.astype(self.dtype) * scale.astype(self.dtype)  # [..., D]


def _norm(cfg: TransformerConfig, name: str) -> nn.Module:
  """The block's normalisation: LayerNorm {scale, bias} or RMSNorm {scale}."""
  if cfg.norm == "rmsnorm":
    return RMSNorm(cfg.norm_eps, cfg.dtype, cfg.param_dtype, name=name)
  return nn.LayerNorm(
    epsilon=cfg.norm_eps,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    name=name,
    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
    bias_init=_zeros(("embed",)),
  )


def rope_inv_freq(head_dim: int, theta: float) -> np.ndarray:
  """[K/2] float32: theta ** (-2i / K) for i < K/2, RoPE's angular frequencies.

  A constant of the config, so computed on the host in float64 and rounded
  once (the same values on every backend).
  """
  exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
  return (1.0 / theta**exponents).astype(np.float32)


def rotate_half(x):
  """[..., K]: (x1, x2) -> (-x2, x1) for the two halves of the last axis.

  Hugging Face's Llama convention: dimension i pairs with i + K/2 (not with
  its neighbour, as in the RoFormer paper), the layout of HF checkpoints.
  """
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, positions, theta: float):
  """Rotates x [B, T, N, K] (N query or key/value heads) by position [B, T].

  Angles position * inv_freq [B, T, K/2], duplicated to [B, T, K] to match
  `rotate_half`: x * cos + rotate_half(x) * sin. Angles and the rotation are
  computed in float32 (bfloat16 cannot hold a position's angle beyond a few
  hundred tokens) and the result rounded to x's dtype.
  """
  inv_freq = rope_inv_freq(x.shape[-1], theta)  # [K/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, K/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, K]
  x32 = x.astype(jnp.float32)
  return (x32 * jnp.cos(angles) + rotate_half(x32) * jnp.sin(angles)).astype(x.dtype)


# ----------------------------------------------------------------------------
# Attention


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


def query_blocks(T: int, block: int) -> list[tuple[int, int]]:
  """[t0, t1) row ranges of at most `block` queries covering [0, T); block 0: one block."""
  block = block or T
  return [(t0, min(t0 + block, T)) for t0 in range(0, T, block)]


class CausalSelfAttention(nn.Module):
  """Multi-head attention, or grouped-query attention when n_kv_head < n_head.

  With G < H key/value heads, query heads are grouped as [B, T, G, R, K]: the
  R = H / G query heads of a group attend to their group's one key/value
  head, which is read by the einsum, never repeated R times (in training
  memory, or in the KV cache, which holds G heads: H / G times smaller).
  """

  cfg: TransformerConfig

  @nn.compact
  def __call__(
    self, x, token_mask, segment_ids=None, positions=None, *, decode: bool, deterministic: bool
  ):
    cfg = self.cfg
    D, H, G, K = cfg.d_model, cfg.n_head, cfg.kv_heads, cfg.head_dim
    B, T, _ = x.shape
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    q, k, v = self._project_qkv(x, decode)  # [B, T, H, K]; k, v [B, T, G, K]
    w_out = self.param(
      "w_out", _init(resid_std, ("heads", "kv", "embed")), (H, K, D), cfg.param_dtype
    )
    b_out = self.param("b_out", _zeros(("embed",)), (D,), cfg.param_dtype) if cfg.use_bias else None
    if cfg.position == "rope":  # before k enters the cache: cached keys are rotated
      q = apply_rope(q, positions, cfg.rope_theta)
      k = apply_rope(k, positions, cfg.rope_theta)

    # The query heads' letters: "h" for [B, T, H, K]; "gr" for [B, T, G, R, K].
    qh, kvh = ("h", "h") if G == H else ("gr", "g")
    if G < H:
      q = q.reshape(B, T, G, H // G, K)
    if decode:
      # The cache is kept heads-first, keys [B, G, K, S] and values [B, G, S, K]
      # (`_update_cache`): each decode step then reads it without transposing
      # it (a copy of the whole cache per step, 2.3x the step time at batch
      # 32). Training keeps [B, S, G, K]: heads-first was no faster there (the
      # train step's time to 0.2%). The queries go heads-first too, [B, H, T,
      # K] or [B, G, R, T, K], so that each (b, g)'s R * T query rows are one
      # matrix of the batched products (else XLA:CPU chose [K, S] x [S, R]
      # products for grouped-query heads: a quarter of SmolLM2's decode step
      # at batch 32).
      k, v, k_valid, q_slot, k_slot = self._update_cache(k, v, token_mask)
      q = jnp.moveaxis(q, 1, -2)
      qs, kv, kk = f"b{qh}tk", f"b{kvh}sk", f"b{kvh}ks"
    else:
      k_valid = token_mask  # [B, S=T]
      q_slot = k_slot = jnp.arange(T)
      qs, kv = f"bt{qh}k", f"bs{kvh}k"
      kk = kv
    mask = causal_mask(q_slot, k_slot, k_valid, None if decode else segment_ids)
    if G < H:
      mask = mask[:, None]  # [B, 1, 1, T, S]

    def attend(q, k, v, mask):  # the softmax attention of q's queries over k's keys
      scores = jnp.einsum(f"{qs},{kk}->b{qh}ts", q, k) / math.sqrt(K)
      scores = jnp.where(mask, scores.astype(jnp.float32), _NEG_INF)
      probs = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)  # [B, H, T, S] or [B, G, R, T, S]
      probs = nn.Dropout(cfg.dropout)(probs, deterministic=deterministic)
      return jnp.einsum(f"b{qh}ts,{kv}->{qs}", probs, v)  # q's shape

    if decode:
      out = jnp.moveaxis(attend(q, k, v, mask), -2, 1)  # [B, T, H, K] or [B, T, G, R, K]
    else:
      # Block-causal: the queries [t0, t1) can see only the keys [0, t1), so
      # each block is computed against those alone and the fully masked
      # blocks above the diagonal are skipped (a quarter of the work at two
      # blocks). Each real query gets the same softmax (the skipped keys'
      # exp is exactly 0), up to float rounding.
      out = jnp.concatenate(
        [
          attend(q[:, t0:t1], k[:, :t1], v[:, :t1], mask[..., t0:t1, :t1])
          for t0, t1 in query_blocks(T, cfg.query_block)
        ],
        axis=1,
      )  # q's shape
    if G < H:
      out = out.reshape(B, T, H, K)  # [B, T, H, K]
    out = einsum("bthk,hkd->btd", out, w_out.astype(cfg.dtype))
    return out if b_out is None else out + b_out.astype(cfg.dtype)  # [B, T, D]

  def _project_qkv(self, x, decode: bool):
    """x [B, T, D] -> q [B, T, H, K], k and v [B, T, G, K].

    G == H: one fused w_qkv [D, 3, H, K] (GPT-2's layout). G < H: w_q
    [D, H, K] and w_kv [D, 2, G, K], whose key/value axis `kv_heads` is
    sharded separately from the query heads (see `gptjax.sharding`).
    """
    cfg = self.cfg
    D, H, G, K = cfg.d_model, cfg.n_head, cfg.kv_heads, cfg.head_dim
    dt, pdt = cfg.dtype, cfg.param_dtype
    if G == H:
      w_qkv = self.param("w_qkv", _init(0.02, ("embed", None, "heads", "kv")), (D, 3, H, K), pdt)
      b_qkv = (
        self.param("b_qkv", _zeros((None, "heads", "kv")), (3, H, K), pdt) if cfg.use_bias else None
      )
      return fused_projection(x, w_qkv.astype(dt), b_qkv, decode)
    w_q = self.param("w_q", _init(0.02, ("embed", "heads", "kv")), (D, H, K), pdt)
    w_kv = self.param("w_kv", _init(0.02, ("embed", None, "kv_heads", "kv")), (D, 2, G, K), pdt)
    q = einsum("btd,dhk->bthk", x, w_q.astype(dt))  # [B, T, H, K]
    b_kv = None
    if cfg.use_bias:
      q = q + self.param("b_q", _zeros(("heads", "kv")), (H, K), pdt).astype(dt)
      b_kv = self.param("b_kv", _zeros((None, "kv_heads", "kv")), (2, G, K), pdt)
    k, v = fused_projection(x, w_kv.astype(dt), b_kv, decode)
    return q, k, v

  def _update_cache(self, k, v, token_mask):
    """Writes k, v [B, T, G, K] at the cache's current index. Returns the full
    cache k [B, G, K, S] and v [B, G, S, K], valid [B, S] and the query and
    key slots. S is max_len, or the length `init_cache` was given.

    Keys are stored transposed, so that a decode step's scores are a plain
    [R * T, K] x [K, S] product per (b, g); from [B, G, S, K] XLA:CPU ran them
    at ~6 GFLOP/s (SmolLM2 at batch 32: 30% of the decode step).
    """
    cfg = self.cfg
    B, T, G, K = k.shape
    cached_k = self.variable("cache", "k", jnp.zeros, (B, G, K, cfg.max_len), cfg.dtype)
    cached_v = self.variable("cache", "v", jnp.zeros, (B, G, cfg.max_len, K), cfg.dtype)
    S = cached_v.value.shape[2]
    k, v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)  # [B, G, K, T], [B, G, T, K]
    valid = self.variable("cache", "valid", jnp.zeros, (B, S), jnp.bool_)
    index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, 0, 0, i))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, 0, i, 0))
    valid.value = jax.lax.dynamic_update_slice(valid.value, token_mask, (0, i))
    index.value = i + T
    return cached_k.value, cached_v.value, valid.value, i + jnp.arange(T), jnp.arange(S)


# ----------------------------------------------------------------------------
# MLP, block, trunk, language model


class MLP(nn.Module):
  """GELU: w_proj(gelu(x w_fc)). SwiGLU: w_proj(silu(x w_gate) * (x w_up)), with
  gate and up fused in one w_gate_up [D, 2, F] (one GEMM, as w_qkv)."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(self, x, *, decode: bool = False, deterministic: bool):
    cfg = self.cfg
    D, F = cfg.d_model, cfg.d_ff
    dt, pdt = cfg.dtype, cfg.param_dtype
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    h = self._swiglu(x, decode) if cfg.mlp == "swiglu" else self._gelu(x)  # [B, T, F]
    w_proj = self.param("w_proj", _init(resid_std, ("mlp", "embed")), (F, D), pdt)
    out = einsum("btf,fd->btd", h, w_proj.astype(dt))
    if cfg.use_bias:
      out = out + self.param("b_proj", _zeros(("embed",)), (D,), pdt).astype(dt)
    return nn.Dropout(cfg.dropout)(out, deterministic=deterministic)

  def _gelu(self, x):
    cfg = self.cfg
    D, F = cfg.d_model, cfg.d_ff
    w_fc = self.param("w_fc", _init(0.02, ("embed", "mlp")), (D, F), cfg.param_dtype)
    h = einsum("btd,df->btf", x, w_fc.astype(cfg.dtype))
    if cfg.use_bias:
      h = h + self.param("b_fc", _zeros(("mlp",)), (F,), cfg.param_dtype).astype(cfg.dtype)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    return jax.nn.gelu(h, approximate=True)  # [B, T, F]

  def _swiglu(self, x, decode: bool):
    cfg = self.cfg
    D, F = cfg.d_model, cfg.d_ff
    w = self.param("w_gate_up", _init(0.02, ("embed", None, "mlp")), (D, 2, F), cfg.param_dtype)
    b = None
    if cfg.use_bias:
      b = self.param("b_gate_up", _zeros((None, "mlp")), (2, F), cfg.param_dtype)
    gate, up = fused_projection(x, w.astype(cfg.dtype), b, decode)  # [B, T, F] each
    h = jax.nn.silu(gate) * up
    return nn.with_logical_constraint(h, ("batch", "length", "mlp"))  # [B, T, F]


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

  cfg: TransformerConfig

  @nn.compact
  def __call__(
    self, x, token_mask, segment_ids=None, positions=None, *, decode: bool, deterministic: bool
  ):
    h = CausalSelfAttention(self.cfg, name="attn")(
      _norm(self.cfg, "ln_1")(x),
      token_mask,
      segment_ids,
      positions,
      decode=decode,
      deterministic=deterministic,
    )
    x = x + nn.Dropout(self.cfg.dropout)(h, deterministic=deterministic)
    mlp = MLP(self.cfg, name="mlp")
    x = x + mlp(_norm(self.cfg, "ln_2")(x), decode=decode, deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class Trunk(nn.Module):
  """Embeddings and blocks up to the final norm: tokens -> hidden [B, T, D].

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
    x = jnp.take(wte, tokens, axis=0)
    if cfg.position == "learned":
      wpe = self.param(
        "wpe", _init(0.01, (None, "embed")), (cfg.max_len, cfg.d_model), cfg.param_dtype
      )
      x = x + jnp.take(wpe, positions, axis=0)
    x = nn.Dropout(cfg.dropout)(x.astype(cfg.dtype), deterministic=deterministic)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))  # [B, T, D]
    for i in range(cfg.n_layer):
      x = Block(cfg, name=f"block_{i}")(
        x, token_mask, segment_ids, positions, decode=decode, deterministic=deterministic
      )
    return _norm(cfg, "ln_f")(x)  # [B, T, D]


class Transformer(nn.Module):
  """Language model: tokens [B, T] -> float32 logits [B, T, V].

  The head is tied to `wte` (GPT-2), or with `tied_head=False` its own
  `w_head` [D, V] beside the trunk (Llama), so that the trunk alone is what
  the scalar heads of `gptjax.heads` reuse either way.

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
    cfg = self.cfg
    trunk = Trunk(cfg, name="trunk")
    x = trunk(
      tokens, positions, token_mask, segment_ids, decode=decode, deterministic=deterministic
    )
    if cfg.tied_head:
      wte = trunk.variables["params"]["wte"]
      wte = wte.value if isinstance(wte, nn.Partitioned) else wte
      logits = einsum("btd,vd->btv", x, wte.astype(cfg.dtype), jnp.float32)
    else:
      w_head = self.param(
        "w_head", _init(0.02, ("embed", "vocab")), (cfg.d_model, cfg.vocab_size), cfg.param_dtype
      )
      logits = einsum("btd,dv->btv", x, w_head.astype(cfg.dtype), jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def build(config: ml_collections.ConfigDict) -> Transformer:
  """The Transformer of a run config (its `model` section)."""
  return Transformer(TransformerConfig.from_config(config.model))


# ----------------------------------------------------------------------------
# Counting and caches

_EMBEDDINGS = ("wte", "wpe", "w_head")


def count_params(params, exclude_embeddings: bool = False) -> int:
  """Number of parameters; optionally without the embeddings (Kaplan's N).

  The embeddings are the token and position tables and an untied head
  (`w_head`, the output embedding): N is then the same for a tied and an
  untied model of one shape.
  """
  flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(params))[0]
  return sum(
    x.size
    for path, x in flat
    if not (exclude_embeddings and any(getattr(p, "key", None) in _EMBEDDINGS for p in path))
  )


def matmul_params(params, tied_unembedding: bool = True) -> int:
  """Parameters that take part in matmuls: all but the lookup-only tables.

  Position embeddings (where present) are only looked up. The token
  embedding counts only when it is also the (tied) output projection, as in
  a tied language model; an untied model's output projection is `w_head`
  (counted), and a scalar-head model only looks `wte` up.
  """
  trunk = params["trunk"]
  n = count_params(params) - (trunk["wpe"].size if "wpe" in trunk else 0)
  tied = tied_unembedding and "w_head" not in params
  return n if tied else n - trunk["wte"].size


def flops_per_token(cfg: TransformerConfig, n_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6N + 12 * n_layer * d_model * T (PaLM, appendix B).

  The attention term counts the query heads (H x K = d_model): grouped-query
  attention shares keys and values, not the score or weighted-sum products.
  """
  return 6 * n_params + 12 * cfg.n_layer * cfg.d_model * seq_len


def init_cache(model: nn.Module, batch_size: int, length: int | None = None):
  """An empty KV cache for `batch_size` rows and `length` slots (default and
  at most max_len): index 0, nothing valid.

  Decoding reads every slot of the cache at each step, so a generation of
  known length (prompt + new tokens) is cheaper with a cache of just that
  length. `init` itself runs a forward pass that writes into the cache, so
  the shapes are taken with `eval_shape` and filled with zeros.
  """
  cfg = model.cfg
  length = cfg.max_len if length is None else length
  if not 1 <= length <= cfg.max_len:
    raise ValueError(f"KV cache length={length} must be in [1, max_len={cfg.max_len}]")
  return jax.tree_util.tree_map(
    lambda s: jnp.zeros(s.shape, s.dtype), _cache_shapes(model, batch_size, length)
  )


def _cache_shapes(model: nn.Module, batch_size: int, length: int):
  """The cache's ShapeDtypeStructs at `length` slots (`init` runs a forward pass)."""
  sized = model.clone(cfg=dataclasses.replace(model.cfg, max_len=length))
  tokens = jnp.zeros((batch_size, 1), jnp.int32)
  return jax.eval_shape(lambda: sized.init(jax.random.PRNGKey(0), tokens, decode=True)["cache"])


def grow_cache(model: nn.Module, cache, length: int):
  """`cache` with `length` slots: its slots kept in place, the new ones empty
  (zeros, not valid) after them; its index unchanged.

  Lets a generation read only the slots it has reached: `sampling` decodes
  in phases, each over a cache just long enough for it. Each leaf grows
  along the axis on which its shape at `length` differs (keys [B, G, K, S],
  values [B, G, S, K], valid [B, S]).
  """
  batch, current = _cache_valid(cache).shape  # [B, S]
  if not current <= length <= model.cfg.max_len:
    raise ValueError(
      f"KV cache length={length} must be in [{current}, max_len={model.cfg.max_len}]"
    )
  pad = lambda x, s: (
    x if x.shape == s.shape else jnp.pad(x, [(0, n - m) for m, n in zip(x.shape, s.shape)])
  )
  return jax.tree_util.tree_map(pad, cache, _cache_shapes(model, batch, length))


def cache_length(cache) -> int:
  """How many slots a cache has (the length `init_cache` or `grow_cache` gave it)."""
  return _cache_valid(cache).shape[1]


def _cache_valid(cache):
  """The first layer's `valid` [B, S] (every layer's has the same shape)."""
  flat = jax.tree_util.tree_flatten_with_path(cache)[0]
  return next(x for path, x in flat if getattr(path[-1], "key", None) == "valid")
