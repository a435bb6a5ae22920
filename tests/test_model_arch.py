"""The architecture switches: the Llama family (RoPE, RMSNorm, SwiGLU, GQA, untied
head, no biases) in the one Transformer, beside GPT-2.

The reference is a forward pass in plain NumPy (float64) written from the
maths alone: Hugging Face's "rotate_half" RoPE, x / rms(x) * scale, silu(gate)
* up, query head h reading key/value head h // (H / G). Then the services the
model must keep for both families: KV-cache decoding with left-padded rows,
packed rows, bfloat16, the scalar heads, parameter and FLOP counts, config
validation, a few real train steps (on one device and on a mesh) and `generate`.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import pretrain as pretrain_configs
from gptjax import heads, losses, model as model_lib, sampling, sharding, train

# Tests compile many small programs: skip LLVM's optimisations (3-4x faster to
# compile on a CPU; the same computation).
FAST_COMPILE = {"xla_backend_optimization_level": 0}
jit = functools.partial(jax.jit, compiler_options=FAST_COMPILE)

SHAPE = dict(vocab_size=48, max_len=12, n_layer=2, n_head=4, d_model=32, d_ff=40)
LLAMA = model_lib.TransformerConfig(
  **SHAPE,
  position="rope",
  rope_theta=500.0,  # small: angles wrap several times within 12 positions
  norm="rmsnorm",
  norm_eps=1e-6,
  mlp="swiglu",
  n_kv_head=2,
  tied_head=False,
  use_bias=False,
)
MIXED = model_lib.TransformerConfig(**SHAPE, position="rope", norm_eps=1e-6)
GPT2 = model_lib.TransformerConfig(**SHAPE)


def random_tokens(seed, shape, vocab=SHAPE["vocab_size"]):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def init_params(cfg: model_lib.TransformerConfig, seed: int = 0) -> dict:
  model = model_lib.Transformer(cfg)
  return nn.meta.unbox(
    jit(model.init)(jax.random.PRNGKey(seed), random_tokens(0, (1, 4)))["params"]
  )


def randomized(params, seed: int) -> dict:
  """Every parameter redrawn at a scale where it matters: weights ~ N(0, 1/fan_in)
  (logits of order 1, so 1e-5 is a tight tolerance), norm scales 1 + N(0, 0.2^2),
  biases N(0, 0.1^2). The init's zero biases and unit scales would hide mistakes."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  rng = np.random.default_rng(seed)
  out = []
  for path, x in flat:
    name = path[-1].key
    if name == "scale":
      v = 1 + 0.2 * rng.normal(size=x.shape)
    elif name == "bias" or name.startswith("b_"):
      v = 0.1 * rng.normal(size=x.shape)
    else:  # [D, ...] projections, w_out [H, K, D], embeddings [V or max_len, D]
      fan_in = {"wte": x.shape[1], "wpe": x.shape[1], "w_out": x.shape[0] * x.shape[1]}
      v = rng.normal(size=x.shape) / math.sqrt(fan_in.get(name, x.shape[0]))
    out.append(jnp.asarray(v, x.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


# ----------------------------------------------------------------------------
# The NumPy reference


def np_norm(cfg, p, x):
  if cfg.norm == "rmsnorm":
    return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + cfg.norm_eps) * p["scale"]
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + cfg.norm_eps) * p["scale"] + p["bias"]


def np_rope(x, positions, theta):
  """x [B, T, N, K]: pairs (i, i + K/2) rotated by position * theta^(-2i/K)."""
  K = x.shape[-1]
  inv_freq = theta ** (-np.arange(0, K, 2) / K)  # [K/2]
  angles = positions[:, :, None] * inv_freq  # [B, T, K/2]
  cos = np.concatenate([np.cos(angles)] * 2, -1)[:, :, None]  # [B, T, 1, K]
  sin = np.concatenate([np.sin(angles)] * 2, -1)[:, :, None]
  rotated = np.concatenate([-x[..., K // 2 :], x[..., : K // 2]], -1)
  return x * cos + rotated * sin


def np_gelu(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def np_attention(cfg, p, x, positions):
  H, G, K = cfg.n_head, cfg.kv_heads, cfg.head_dim
  B, T, _ = x.shape
  if G == H:
    qkv = np.einsum("btd,dchk->cbthk", x, p["w_qkv"])
    if cfg.use_bias:
      qkv = qkv + p["b_qkv"][:, None, None]
    q, k, v = qkv
  else:
    q = np.einsum("btd,dhk->bthk", x, p["w_q"])
    k, v = np.einsum("btd,dcgk->cbtgk", x, p["w_kv"])
    if cfg.use_bias:
      q = q + p["b_q"]
      k, v = k + p["b_kv"][0], v + p["b_kv"][1]
  if cfg.position == "rope":
    q, k = np_rope(q, positions, cfg.rope_theta), np_rope(k, positions, cfg.rope_theta)
  k, v = np.repeat(k, H // G, axis=2), np.repeat(v, H // G, axis=2)  # head h reads h // (H/G)
  scores = np.einsum("bthk,bshk->bhts", q, k) / math.sqrt(K)
  scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhts,bshk,hkd->btd", probs, v, p["w_out"])
  return out + p["b_out"] if cfg.use_bias else out


def np_mlp(cfg, p, x):
  if cfg.mlp == "swiglu":
    gate, up = np.einsum("btd,dcf->cbtf", x, p["w_gate_up"])
    if cfg.use_bias:
      gate, up = gate + p["b_gate_up"][0], up + p["b_gate_up"][1]
    h = gate / (1 + np.exp(-gate)) * up
  else:
    h = x @ p["w_fc"] + (p["b_fc"] if cfg.use_bias else 0)
    h = np_gelu(h)
  return h @ p["w_proj"] + (p["b_proj"] if cfg.use_bias else 0)


def np_forward(cfg, params, tokens):
  """Logits [B, T, V] of tokens [B, T] (positions 0..T-1), in float64."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  trunk = p["trunk"]
  B, T = tokens.shape
  positions = np.broadcast_to(np.arange(T, dtype=np.float64), (B, T))
  x = trunk["wte"][np.asarray(tokens)]
  if cfg.position == "learned":
    x = x + trunk["wpe"][:T]
  for i in range(cfg.n_layer):
    block = trunk[f"block_{i}"]
    x = x + np_attention(cfg, block["attn"], np_norm(cfg, block["ln_1"], x), positions)
    x = x + np_mlp(cfg, block["mlp"], np_norm(cfg, block["ln_2"], x))
  x = np_norm(cfg, trunk["ln_f"], x)
  return x @ (trunk["wte"].T if cfg.tied_head else p["w_head"])


@functools.cache
def language_model(name: str):
  """(cfg, model, randomized params, jitted forward(params, tokens, positions, mask, segments)),
  built once per session: the tests below share its compiled forward."""
  cfg = {"llama": LLAMA, "mixed": MIXED}[name]
  model = model_lib.Transformer(cfg)
  params = randomized(init_params(cfg), seed=1)
  forward = jit(lambda p, t, pos=None, m=None, seg=None: model.apply({"params": p}, t, pos, m, seg))
  return cfg, model, params, forward


@pytest.fixture(params=["llama", "mixed"])
def family(request):
  return language_model(request.param)


def test_forward_matches_numpy_reference(family):
  cfg, _, params, forward = family
  tokens = random_tokens(1, (3, cfg.max_len))
  got = np.asarray(forward(params, tokens))
  want = np_forward(cfg, params, tokens)
  assert np.abs(want).max() > 1.0  # logits of order 1: the tolerance below is tight
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


def test_rope_rotates_pairs_half_apart_by_position():
  """One pair by hand: at position p, (x_i, x_{i+K/2}) turns by p * theta^(-2i/K)."""
  K, theta, pos = 8, 100.0, 3.0
  x = np.zeros((1, 1, 1, K), np.float32)
  x[..., 1] = 1.0  # i = 1: partner K/2 + 1 = 5, angle = 3 * 100^(-1/4)
  out = np.asarray(model_lib.apply_rope(jnp.asarray(x), jnp.full((1, 1), pos), theta))[0, 0, 0]
  angle = pos * theta ** (-2 / K)
  want = np.zeros(K)
  want[1], want[5] = math.cos(angle), math.sin(angle)
  np.testing.assert_allclose(out, want, atol=1e-6)
  # Position 0 is the identity, and relative positions are all that q.k sees.
  np.testing.assert_array_equal(model_lib.apply_rope(jnp.asarray(x), jnp.zeros((1, 1)), theta), x)
  q, k = np.random.default_rng(0).normal(size=(2, 1, 1, 1, K)).astype(np.float32)
  dots = [
    float(
      np.sum(
        model_lib.apply_rope(jnp.asarray(q), jnp.full((1, 1), a), theta)
        * model_lib.apply_rope(jnp.asarray(k), jnp.full((1, 1), b), theta)
      )
    )
    for a, b in ((5.0, 2.0), (9.0, 6.0))
  ]
  assert dots[0] == pytest.approx(dots[1], abs=1e-5)


# ----------------------------------------------------------------------------
# Decoding, left padding, packing


@pytest.mark.parametrize("grown", [False, True])
def test_kv_cache_decoding_matches_full_forward(family, grown):
  """Prefill 4 tokens, then one per call (as `sampling` drives it); row 1 is
  left-padded by 3 with its own position ids, so RoPE must use them. `grown`:
  the cache starts with 6 slots and `grow_cache` extends it to max_len after
  the sixth token (as `sampling`'s decode phases do)."""
  cfg, model, params, forward = family

  @jit
  def step(params, cache, tokens, positions, token_mask):
    logits, mut = model.apply(
      {"params": params, "cache": cache},
      tokens,
      positions,
      token_mask,
      decode=True,
      mutable=["cache"],
    )
    return logits, mut["cache"]

  T, P, pad = cfg.max_len, 4, 3
  seqs = np.asarray(random_tokens(2, (2, T)))
  tokens = seqs.copy()
  tokens[1, pad:] = seqs[1, : T - pad]
  tokens[1, :pad] = 0
  mask = np.ones((2, T), bool)
  mask[1, :pad] = False
  positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)  # as sampling._prefill

  k_shapes = lambda cache: [
    v.shape for p, v in jax.tree_util.tree_leaves_with_path(cache) if p[-1].key == "k"
  ]
  cache = model_lib.init_cache(model, 2, P + 2 if grown else None)
  assert k_shapes(cache) and all(
    s == (2, cfg.kv_heads, cfg.head_dim, P + 2 if grown else T) for s in k_shapes(cache)
  )  # [B, G, K, S]
  logits, cache = step(params, cache, tokens[:, :P], positions[:, :P], mask[:, :P])
  steps = [np.asarray(logits)]
  for i in range(P, T):
    if grown and i == P + 2:
      cache = model_lib.grow_cache(model, cache, T)
      assert all(s == (2, cfg.kv_heads, cfg.head_dim, T) for s in k_shapes(cache))
    sl = slice(i, i + 1)
    logits, cache = step(params, cache, tokens[:, sl], positions[:, sl], mask[:, sl])
    steps.append(np.asarray(logits))
  decoded = np.concatenate(steps, axis=1)  # [2, T, V]

  full = np.asarray(forward(params, jnp.asarray(seqs)))  # each row alone, unpadded
  np.testing.assert_allclose(decoded[0], full[0], atol=2e-5, rtol=0)
  np.testing.assert_allclose(decoded[1, pad:], full[1, : T - pad], atol=2e-5, rtol=0)


def test_packed_rows_match_each_document_alone(family):
  """Two documents in one row, positions restarting at the second: each segment
  computes what its document computes alone (RoPE angles from the position ids)."""
  cfg, _, params, forward = family
  T, n = cfg.max_len, 5
  docs = np.asarray(random_tokens(3, (2, T)))
  packed = np.concatenate([docs[0, :n], docs[1, : T - n]])[None]
  positions = np.concatenate([np.arange(n), np.arange(T - n)])[None]
  segments = np.concatenate([np.zeros(n, np.int32), np.ones(T - n, np.int32)])[None]
  got = np.asarray(
    forward(params, jnp.asarray(packed), jnp.asarray(positions), None, jnp.asarray(segments))
  )[0]
  alone = np.asarray(forward(params, jnp.asarray(docs)))
  np.testing.assert_allclose(got[:n], alone[0, :n], atol=2e-5, rtol=0)
  np.testing.assert_allclose(got[n:], alone[1, : T - n], atol=2e-5, rtol=0)


# ----------------------------------------------------------------------------
# Parameter layout (what the checkpoint converters read and write)


def test_llama_parameter_layout_and_logical_names():
  D, H, G, K, F, V = 32, 4, 2, 8, 40, 48
  abstract = jax.eval_shape(
    model_lib.Transformer(LLAMA).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)
  )["params"]
  shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.meta.unbox(abstract))
  block = {
    "ln_1": {"scale": (D,)},
    "ln_2": {"scale": (D,)},
    "attn": {"w_q": (D, H, K), "w_kv": (D, 2, G, K), "w_out": (H, K, D)},
    "mlp": {"w_gate_up": (D, 2, F), "w_proj": (F, D)},
  }
  trunk = {"wte": (V, D), "ln_f": {"scale": (D,)}, "block_0": block, "block_1": block}
  assert shapes == {"trunk": trunk, "w_head": (D, V)}
  specs = nn.get_partition_spec(abstract)
  attn = specs["trunk"]["block_0"]["attn"]
  assert tuple(attn["w_q"]) == ("embed", "heads", "kv")
  assert tuple(attn["w_kv"]) == ("embed", None, "kv_heads", "kv")
  assert tuple(specs["trunk"]["block_0"]["mlp"]["w_gate_up"]) == ("embed", None, "mlp")
  assert tuple(specs["w_head"]) == ("embed", "vocab")
  assert "kv_heads" in dict(sharding.RULES)


def test_gqa_with_biases_and_mha_without_biases_layout():
  D, H, G, K, F = 32, 4, 2, 8, 40
  gqa = dataclasses.replace(GPT2, n_kv_head=G, mlp="swiglu")
  mha = dataclasses.replace(GPT2, use_bias=False)
  shapes = {}
  for name, cfg in (("gqa", gqa), ("mha", mha)):
    abstract = jax.eval_shape(
      model_lib.Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)
    )["params"]
    shapes[name] = jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.meta.unbox(abstract))
  block = shapes["gqa"]["trunk"]["block_0"]
  assert block["attn"] == {
    "w_q": (D, H, K),
    "b_q": (H, K),
    "w_kv": (D, 2, G, K),
    "b_kv": (2, G, K),
    "w_out": (H, K, D),
    "b_out": (D,),
  }
  assert block["mlp"] == {
    "w_gate_up": (D, 2, F),
    "b_gate_up": (2, F),
    "w_proj": (F, D),
    "b_proj": (D,),
  }
  assert block["ln_1"] == {"scale": (D,), "bias": (D,)}  # LayerNorm keeps its bias
  assert set(shapes["gqa"]["trunk"]) >= {"wte", "wpe"} and "w_head" not in shapes["gqa"]
  block = shapes["mha"]["trunk"]["block_0"]
  assert block["attn"] == {"w_qkv": (D, 3, H, K), "w_out": (H, K, D)}
  assert block["mlp"] == {"w_fc": (D, F), "w_proj": (F, D)}


# ----------------------------------------------------------------------------
# GPT-2 unchanged


def model_config(**overrides) -> ml_collections.ConfigDict:
  c = pretrain_configs.get_config("tiny").model
  c.update(vocab_size=48, max_len=12, n_layer=2, n_head=4, d_model=32, d_ff=40)
  for k, v in overrides.items():
    c[k] = v
  return c


GPT2_DEFAULTS = dict(
  position="learned",
  rope_theta=10000.0,
  norm="layernorm",
  norm_eps=1e-5,
  mlp="gelu",
  n_kv_head=4,
  tied_head=True,
  use_bias=True,
)


def test_explicit_gpt2_switches_give_exactly_the_default_model():
  """A config without the switches (every config written before them) and one
  spelling out their defaults trace to the same programs, op for op (init, so
  the same draws; forward; cached decoding), with today's GPT-2 layout: wpe,
  fused w_qkv, LayerNorm biases, no w_head."""
  assert set(GPT2_DEFAULTS) == set(model_lib.ARCH_DEFAULTS)
  assert not set(GPT2_DEFAULTS) & set(pretrain_configs.get_config("tiny").model)
  implicit = model_lib.TransformerConfig.from_config(model_config())
  explicit = model_lib.TransformerConfig.from_config(model_config(**GPT2_DEFAULTS))
  assert implicit.kv_heads == explicit.kv_heads == 4 and implicit.n_kv_head is None
  tokens = jnp.zeros((2, 12), jnp.int32)
  programs = []
  for cfg in (implicit, explicit):
    model = model_lib.Transformer(cfg)
    rng = jax.random.PRNGKey(3)
    variables = jax.eval_shape(model.init, rng, tokens)
    cache = jax.eval_shape(lambda: model_lib.init_cache(model, 2))

    def decode(v, c, model=model):
      return model.apply({**v, "cache": c}, tokens[:, :1], decode=True, mutable=["cache"])

    programs.append(
      [
        str(jax.make_jaxpr(model.init)(rng, tokens)),
        str(jax.make_jaxpr(model.apply)(variables, tokens)),
        str(jax.make_jaxpr(decode)(variables, cache)),
      ]
    )
  assert programs[0] == programs[1]
  params = nn.meta.unbox(variables["params"])
  trunk = params["trunk"]
  assert set(params) == {"trunk"}
  assert set(trunk) == {"wte", "wpe", "ln_f", "block_0", "block_1"}
  assert set(trunk["block_0"]["attn"]) == {"w_qkv", "b_qkv", "w_out", "b_out"}
  assert set(trunk["block_0"]["mlp"]) == {"w_fc", "b_fc", "w_proj", "b_proj"}
  assert set(trunk["ln_f"]) == set(trunk["block_0"]["ln_1"]) == {"scale", "bias"}


# ----------------------------------------------------------------------------
# bfloat16, scalar heads, counting


def test_bfloat16_llama_is_finite_and_close_to_float32():
  """bfloat16 activations over float32 weights (the mixed-precision training path)."""
  _, _, params, forward = language_model("llama")
  tokens = random_tokens(6, (2, 12))
  ref = np.asarray(forward(params, tokens))
  bf16 = model_lib.Transformer(dataclasses.replace(LLAMA, dtype=jnp.bfloat16))
  logits = jit(bf16.apply)({"params": params}, tokens)
  assert logits.dtype == jnp.float32 and logits.shape == ref.shape
  logits = np.asarray(logits)
  assert np.isfinite(logits).all()
  err = np.abs(logits - ref).max() / np.abs(ref).max()
  assert 0 < err < 0.05, err  # bf16 keeps 8 bits: a few percent after two layers


@pytest.mark.slow
def test_bfloat16_llama_gradients_are_finite_and_close_to_float32():
  """The backward pass of the grouped (5-axis) attention einsums and SwiGLU in
  bfloat16: float32 master weights get finite float32 gradients near float32's."""
  _, _, params, _ = language_model("llama")
  tokens = random_tokens(9, (2, 12))

  def loss(cfg, p):
    logits = model_lib.Transformer(cfg).apply({"params": p}, tokens)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  g32 = jit(jax.grad(functools.partial(loss, LLAMA)))(params)
  g16 = jit(jax.grad(functools.partial(loss, dataclasses.replace(LLAMA, dtype=jnp.bfloat16))))(
    params
  )
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(g16), jax.tree_util.tree_leaves(g32)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == np.float32 and np.isfinite(x).all(), path
    assert np.abs(x - y).max() < 0.1 * np.abs(y).max(), path


def test_scalar_head_on_a_llama_trunk():
  """The reward/value model on a Llama LM's trunk. With the head set to column j
  of the LM's untied w_head, its values are the LM's logits for token j."""
  _, _, lm_params, forward = language_model("llama")
  model = heads.ScalarHeadModel(LLAMA)
  j = 5
  head = {"head_w": lm_params["w_head"][:, j], "head_b": jnp.float32(0.3)}
  params = heads.from_lm_params(lm_params, head)  # the LM's untied w_head left out
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), random_tokens(0, (1, 4)))
  want_shapes = jax.tree_util.tree_map(lambda x: x.shape, nn.meta.unbox(abstract["params"]))
  assert jax.tree_util.tree_map(lambda x: x.shape, params) == want_shapes
  tokens = random_tokens(7, (2, 12))
  mask = np.ones((2, 12), bool)
  mask[1, 8:] = False
  values = np.asarray(jit(model.apply)({"params": params}, tokens, None, jnp.asarray(mask)))
  want = np.asarray(forward(lm_params, tokens))[..., j] + 0.3
  np.testing.assert_allclose(values[0], want[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(values[1, :8], want[1, :8], atol=1e-5, rtol=0)  # causal: pads after
  scores = np.asarray(heads.final_score(jnp.asarray(values), jnp.asarray(mask)))
  np.testing.assert_array_equal(scores, [values[0, 11], values[1, 7]])


def llama_hand_count(c: model_lib.TransformerConfig) -> tuple[int, int]:
  """(all parameters, without wte and w_head) of an untied, bias-free, RoPE,
  RMSNorm, SwiGLU, GQA model, counted by hand."""
  D, F, V, L, H, G, K = c.d_model, c.d_ff, c.vocab_size, c.n_layer, c.n_head, c.kv_heads, c.head_dim
  attn = D * H * K + D * 2 * G * K + H * K * D
  mlp = D * 2 * F + F * D
  non_embedding = L * (attn + mlp + 2 * D) + D
  return non_embedding + 2 * V * D, non_embedding


def test_count_params_matmul_params_and_flops_for_an_untied_model_by_hand():
  cfg = dataclasses.replace(LLAMA, vocab_size=100, max_len=20, n_layer=3, d_model=16, d_ff=24)
  tokens = np.zeros((1, 20), np.int32)
  total, non_embedding = llama_hand_count(cfg)
  # 3 * ((16*16 + 16*2*2*4 + 16*16) + (16*48 + 24*16) + 2*16) + 16 = 5,872
  assert non_embedding == 5872 and total == 5872 + 2 * 1600
  lm = model_lib.Transformer(cfg)
  params = nn.meta.unbox(jax.eval_shape(lm.init, jax.random.PRNGKey(0), tokens)["params"])
  assert model_lib.count_params(params) == total
  assert model_lib.count_params(params, exclude_embeddings=True) == non_embedding
  # wte is only looked up; w_head is the output matmul. No wpe to leave out.
  assert model_lib.matmul_params(params) == non_embedding + 1600
  assert model_lib.matmul_params(params, tied_unembedding=False) == non_embedding + 1600
  task = train.Task("t", lm, None, None, {"tokens": tokens}, 20)
  assert train.task_flops_per_token(task, params) == 6 * (5872 + 1600) + 12 * 3 * 16 * 20
  # The reward model on the same trunk: wte looked up, plus its D + 1 head.
  rm = heads.ScalarHeadModel(cfg)
  rm_params = nn.meta.unbox(jax.eval_shape(rm.init, jax.random.PRNGKey(0), tokens)["params"])
  task = train.Task("t", rm, None, None, {"tokens": tokens}, 20)
  assert train.task_flops_per_token(task, rm_params) == 6 * (5872 + 17) + 12 * 3 * 16 * 20


def test_memory_counts_gqa_and_swiglu_activations_by_hand():
  from gptjax import memory

  cfg = model_lib.TransformerConfig(
    vocab_size=10, max_len=3, n_layer=2, n_head=4, d_model=8, d_ff=8, mlp="swiglu", n_kv_head=2
  )
  # Per layer and token: 6D + (2D + 3HT + 4.5F) / t + 2GK (k, v replicated over tensor)
  # = 48 + (16 + 36 + 36) / t + 8 values; head 2D = 16 + 2V / t float32 logits.
  assert memory.activation_bytes(cfg, 5, 1) == 5 * (2 * (48 + 88 + 8) * 4 + 16 * 4 + 20 * 4)
  assert memory.activation_bytes(cfg, 5, 2) == 5 * (2 * (48 + 44 + 8) * 4 + 16 * 4 + 10 * 4)


# ----------------------------------------------------------------------------
# Config validation


@pytest.mark.parametrize(
  "overrides, field, allowed",
  [
    ({"position": "alibi"}, "position", ["learned", "rope"]),
    ({"position": "rope", "d_model": 36}, "position", ["even"]),  # head dim 9
    ({"rope_theta": 0.0}, "rope_theta", ["positive"]),
    ({"rope_theta": "big"}, "rope_theta", ["positive"]),
    ({"norm": "batchnorm"}, "norm", ["layernorm", "rmsnorm"]),
    ({"norm_eps": -1e-6}, "norm_eps", ["positive"]),
    ({"mlp": "relu"}, "mlp", ["gelu", "swiglu"]),
    ({"n_kv_head": 3}, "n_kv_head", ["1, 2, 4"]),
    ({"n_kv_head": 0}, "n_kv_head", ["1, 2, 4"]),
    ({"n_kv_head": 8}, "n_kv_head", ["1, 2, 4"]),
    ({"n_kv_head": 2.0}, "n_kv_head", ["1, 2, 4"]),
    ({"tied_head": "no"}, "tied_head", ["True", "False"]),
    ({"use_bias": 1}, "use_bias", ["True", "False"]),
  ],
)
def test_bad_switches_raise_one_value_error_naming_the_field(overrides, field, allowed):
  with pytest.raises(ValueError, match=rf"config\.model\.{field}\b") as e:
    model_lib.TransformerConfig.from_config(model_config(**overrides))
  for word in allowed:
    assert word in str(e.value)


def test_from_config_reads_every_switch():
  cfg = model_lib.TransformerConfig.from_config(
    model_config(
      position="rope",
      rope_theta=500000,
      norm="rmsnorm",
      norm_eps=1e-6,
      mlp="swiglu",
      n_kv_head=1,
      tied_head=False,
      use_bias=False,
    )
  )
  assert (cfg.position, cfg.norm, cfg.mlp, cfg.n_kv_head, cfg.kv_heads) == (
    "rope",
    "rmsnorm",
    "swiglu",
    1,
    1,
  )
  assert cfg.rope_theta == 500000.0 and cfg.norm_eps == 1e-6
  assert cfg.tied_head is False and cfg.use_bias is False


# ----------------------------------------------------------------------------
# Training and sampling


V_TOY, T_TOY, B_TOY = 32, 16, 8


def toy_config(**train_overrides) -> ml_collections.ConfigDict:
  c = pretrain_configs.get_config("tiny")
  c.model.update(vocab_size=V_TOY, max_len=T_TOY, n_layer=1, n_head=4, d_model=32, d_ff=48)
  c.model.update(
    position="rope",
    norm="rmsnorm",
    mlp="swiglu",
    n_kv_head=2,
    tied_head=False,
    use_bias=False,
  )
  c.train.update(batch_size=B_TOY, grad_accum=1, lr=1e-2, warmup_steps=0, min_lr_ratio=1.0)
  c.train.update(train_overrides)
  return c


def toy_batch(step: int) -> dict:
  """Rows count upwards mod V from a random start: learnable in a few steps."""
  start = np.random.default_rng(step).integers(0, V_TOY, (B_TOY, 1))
  rows = ((start + np.arange(T_TOY + 1)) % V_TOY).astype(np.int32)
  return {
    "tokens": rows[:, :-1],
    "targets": rows[:, 1:],
    "loss_mask": np.ones((B_TOY, T_TOY), np.float32),
  }


def toy_task(config) -> train.Task:
  model = model_lib.build(config)
  return train.Task(
    name="arch",
    model=model,
    loss_fn=losses.lm_loss_fn(model),
    train_batch=toy_batch,
    example_batch=toy_batch(0),
    tokens_per_step=B_TOY * T_TOY,
  )


def mesh_of(shape):
  cfg = ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, shape)))
  return sharding.make_mesh(cfg, jax.devices()[: int(np.prod(shape))])


def train_steps(task, tx, mesh, n: int, initial=None):
  """n steps of `train.train_step`, jitted as `train.run` does: (losses, state)."""
  shardings = train.state_shardings(task, tx, mesh)
  if initial is None:  # train.create_state's state, without its optimised init compile
    params = init_params(task.model.cfg)
    initial = train.TrainState(jnp.int32(0), params, tx.init(params), jax.random.PRNGKey(1))
  state = jax.device_put(initial, shardings)
  step = jax.jit(
    functools.partial(train.train_step, loss_fn=task.loss_fn, tx=tx),
    out_shardings=(shardings, None),
    donate_argnums=(0,),
    compiler_options=FAST_COMPILE,
  )
  losses_ = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    for i in range(n):
      state, metrics = step(state, sharding.shard_batch(task.train_batch(i), mesh))
      losses_.append(float(metrics["loss"]))
  return losses_, state


def test_llama_trains_and_generates():
  config = toy_config()
  task = toy_task(config)
  assert task.model.cfg.position == "rope" and not task.model.cfg.tied_head
  tx = train.make_optimizer(config.train)
  losses_, state = train_steps(task, tx, mesh_of((1, 1, 1)), 8)
  assert all(np.isfinite(losses_))
  assert losses_[-1] < 0.8 * losses_[0], losses_
  params = jax.device_get(state.params)
  prompts = [[3, 4, 5, 6], [20, 21]]
  out = sampling.generate(
    task.model,
    params,
    prompts,
    max_new_tokens=4,
    rng=jax.random.PRNGKey(0),
    eos_id=-1,
    pad_id=0,
    sampling=sampling.GREEDY,
  )
  assert out.tokens.shape == (2, 4) and out.mask.all()
  assert ((0 <= out.tokens) & (out.tokens < V_TOY)).all()
  # Greedy and the model's own log-probs: row 1 (left-padded by the sampler)
  # against one forward pass over its prompt and answer alone.
  seq = jnp.asarray([prompts[1] + out.tokens[1].tolist()], jnp.int32)
  logp = jax.nn.log_softmax(jit(task.model.apply)({"params": params}, seq)[0, 1:-1])  # [4, V]
  np.testing.assert_array_equal(out.tokens[1], np.argmax(logp, -1))
  np.testing.assert_allclose(out.logprobs[1], np.max(logp, -1), atol=1e-4)


@pytest.mark.slow
def test_llama_step_on_a_tensor_parallel_mesh_matches_one_device():
  """w_kv's `kv_heads` axis is replicated over tensor (G = 2 here, tensor = 2):
  two steps on a (2, 2, 2) mesh give the one-device losses and parameters."""
  config = toy_config(lr=2e-3)
  task = toy_task(config)
  tx = train.make_optimizer(config.train)
  ref_losses, ref = train_steps(task, tx, mesh_of((1, 1, 1)), 2)
  got_losses, got = train_steps(task, tx, mesh_of((2, 2, 2)), 2)
  np.testing.assert_allclose(got_losses, ref_losses, rtol=1e-5)
  w_kv = got.params["trunk"]["block_0"]["attn"]["w_kv"]
  assert w_kv.sharding.shard_shape(w_kv.shape) == (16, 2, 2, 8)  # embed over fsdp only
  w_q = got.params["trunk"]["block_0"]["attn"]["w_q"]
  assert w_q.sharding.shard_shape(w_q.shape) == (16, 2, 8)  # heads over tensor
  for a, b in zip(jax.tree_util.tree_leaves(got.params), jax.tree_util.tree_leaves(ref.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_llama_matches_hugging_face_llama():
  """A second, independent reader: transformers' LlamaForCausalLM with random
  weights, mapped onto the layout of the module docstring (torch Linear
  weights are [out, in]), gives the same logits, left-padded rows included."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  D, H, G, K, F, V, L = 32, 4, 2, 8, 40, 48, 2
  hf_cfg = transformers.LlamaConfig(
    vocab_size=V,
    hidden_size=D,
    intermediate_size=F,
    num_hidden_layers=L,
    num_attention_heads=H,
    num_key_value_heads=G,
    max_position_embeddings=12,
    rope_theta=LLAMA.rope_theta,
    rms_norm_eps=LLAMA.norm_eps,
    tie_word_embeddings=False,
    attention_bias=False,
    mlp_bias=False,
  )
  torch.manual_seed(0)
  hf = transformers.LlamaForCausalLM(hf_cfg).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.normal_(0, 0.3)
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  trunk = {"wte": sd["model.embed_tokens.weight"], "ln_f": {"scale": sd["model.norm.weight"]}}
  for i in range(L):
    w = lambda name, i=i: sd[f"model.layers.{i}.{name}.weight"].T  # [in, out]
    trunk[f"block_{i}"] = {
      "ln_1": {"scale": sd[f"model.layers.{i}.input_layernorm.weight"]},
      "ln_2": {"scale": sd[f"model.layers.{i}.post_attention_layernorm.weight"]},
      "attn": {
        "w_q": w("self_attn.q_proj").reshape(D, H, K),
        "w_kv": np.stack(
          [w("self_attn.k_proj").reshape(D, G, K), w("self_attn.v_proj").reshape(D, G, K)], 1
        ),
        "w_out": w("self_attn.o_proj").reshape(H, K, D),
      },
      "mlp": {
        "w_gate_up": np.stack([w("mlp.gate_proj"), w("mlp.up_proj")], 1),
        "w_proj": w("mlp.down_proj"),
      },
    }
  params = {"trunk": trunk, "w_head": sd["lm_head.weight"].T}
  tokens = np.asarray(random_tokens(8, (2, 12)))
  mask = np.ones((2, 12), bool)
  mask[1, :3] = False
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  ours = jit(model_lib.Transformer(LLAMA).apply)(
    {"params": params}, tokens, jnp.asarray(positions), jnp.asarray(mask)
  )
  with torch.no_grad():
    theirs = hf(
      torch.tensor(tokens),
      attention_mask=torch.tensor(mask.astype(np.int64)),
      position_ids=torch.tensor(positions),
    ).logits.numpy()
  assert np.abs(theirs).max() > 1.0
  np.testing.assert_allclose(np.asarray(ours)[mask], theirs[mask], atol=2e-5, rtol=0)
