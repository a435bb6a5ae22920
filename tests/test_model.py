"""The Transformer: causality, KV-cache decoding, padding, init, shapes, FLOPs, config checks.

Shapes are tiny and every jitted function is built once per module, so the
whole file runs in seconds on a CPU.
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
from gptjax import model as model_lib

# Tests compile many small programs: skip LLVM's optimisations (3-4x faster to
# compile on a CPU; the same computation).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

# query_block=5: training attention runs in blocks of 5, 5 and 2 queries, so
# the causality, cache and padding tests below check the block-causal path
# against independent computations (the KV cache's decode path has no blocks).
CFG = model_lib.TransformerConfig(
  vocab_size=48, max_len=12, n_layer=2, n_head=2, d_model=16, d_ff=32, query_block=5
)


def random_tokens(seed, shape, vocab=CFG.vocab_size):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


@pytest.fixture(scope="module")
def lm():
  """(model, params, forward): forward(params, tokens, positions, token_mask) -> logits."""
  model = model_lib.Transformer(CFG)
  params = nn.meta.unbox(jit(model.init)(jax.random.PRNGKey(0), random_tokens(0, (1, 4)))["params"])
  forward = jit(lambda p, tok, pos=None, mask=None: model.apply({"params": p}, tok, pos, mask))
  return model, params, forward


# ----------------------------------------------------------------------------
# Causality, KV cache, padding


def test_changing_token_t_never_changes_earlier_logits(lm):
  model, params, forward = lm
  T = CFG.max_len
  base = np.asarray(random_tokens(1, (T,)))
  # Row t (t < T) is `base` with token t replaced; the last row is `base` itself.
  rows = np.tile(base, (T + 1, 1))
  for t in range(T):
    rows[t, t] = (base[t] + 1 + t) % CFG.vocab_size
  logits = np.asarray(forward(params, jnp.asarray(rows)))  # [T+1, T, V]
  ref = logits[T]
  for t in range(T):
    np.testing.assert_allclose(
      logits[t, :t],
      ref[:t],
      atol=1e-6,
      rtol=0,
      err_msg=f"changing token {t} changed earlier logits",
    )
    changed = np.abs(logits[t, t:] - ref[t:]).max(axis=-1)  # [T - t]
    assert changed[0] > 1e-4, f"changing token {t} did not change the logits at {t}"
    assert (changed > 1e-4).all(), f"token {t} invisible to some later position"


@pytest.fixture(scope="module")
def decode_fns(lm):
  model, _, _ = lm

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

  return step


def test_kv_cache_decoding_matches_full_forward(lm, decode_fns):
  """Prefill 4 tokens, then one token per call; row 1 is left-padded by 3."""
  model, params, forward = lm
  T, P, pad = CFG.max_len, 4, 3
  seqs = np.asarray(random_tokens(2, (2, T)))
  # Row 0: the full sequence. Row 1: 3 pad slots, then its first T - 3 tokens.
  tokens = seqs.copy()
  tokens[1, pad:] = seqs[1, : T - pad]
  tokens[1, :pad] = 0
  mask = np.ones((2, T), bool)
  mask[1, :pad] = False
  positions = np.stack([np.arange(T), np.maximum(np.arange(T) - pad, 0)])

  cache = model_lib.init_cache(model, 2)
  logits, cache = decode_fns(params, cache, tokens[:, :P], positions[:, :P], mask[:, :P])
  steps = [np.asarray(logits)]
  for i in range(P, T):
    logits, cache = decode_fns(
      params, cache, tokens[:, i : i + 1], positions[:, i : i + 1], mask[:, i : i + 1]
    )
    steps.append(np.asarray(logits))
  decoded = np.concatenate(steps, axis=1)  # [2, T, V]

  full0 = np.asarray(forward(params, jnp.asarray(seqs[:1])))[0]
  np.testing.assert_allclose(decoded[0], full0, atol=1e-5, rtol=0)
  full1 = np.asarray(forward(params, jnp.asarray(seqs[1:, : T - pad])))[0]
  np.testing.assert_allclose(decoded[1, pad:], full1, atol=1e-5, rtol=0)
  index = [
    v
    for path, v in jax.tree_util.tree_flatten_with_path(cache)[0]
    if getattr(path[-1], "key", None) == "index"
  ]
  assert index and all(int(i) == T for i in index)


def test_init_cache_is_empty(lm):
  model, _, _ = lm
  cache = model_lib.init_cache(model, 3)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(cache)[0]}
  assert flat and all(not np.asarray(v).any() for v in flat.values())
  shapes = {k.split("'")[-2]: v.shape for k, v in flat.items()}
  assert shapes["k"] == (3, CFG.n_head, CFG.head_dim, CFG.max_len)  # [B, H, K, S]
  assert shapes["v"] == (3, CFG.n_head, CFG.max_len, CFG.head_dim)  # [B, H, S, K]
  assert shapes["valid"] == (3, CFG.max_len) and shapes["index"] == ()


def test_a_shorter_cache_decodes_the_same_logits(lm, decode_fns):
  """`generate` sizes the cache to prompt + new tokens; decoding then reads
  only those slots and must give the logits of a max_len cache."""
  model, params, _ = lm
  step = decode_fns
  short = model_lib.init_cache(model, 2, 7)
  assert short["trunk"]["block_0"]["attn"]["k"].shape == (2, CFG.n_head, CFG.head_dim, 7)
  assert short["trunk"]["block_0"]["attn"]["valid"].shape == (2, 7)
  tokens = random_tokens(5, (2, 7))
  outs = []
  pos, valid = jnp.arange(7)[None].repeat(2, 0), jnp.ones((2, 7), bool)
  for cache in (short, model_lib.init_cache(model, 2)):
    logits, cache = step(params, cache, tokens[:, :3], pos[:, :3], valid[:, :3])
    per_step = [logits]
    for i in range(3, 7):
      sl = slice(i, i + 1)
      logits, cache = step(params, cache, tokens[:, sl], pos[:, sl], valid[:, sl])
      per_step.append(logits)
    outs.append(np.concatenate(per_step, axis=1))
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
  for bad in (0, CFG.max_len + 1):
    with pytest.raises(ValueError, match="KV cache length"):
      model_lib.init_cache(model, 2, bad)


def test_grow_cache_keeps_the_slots_and_adds_empty_ones(lm, decode_fns):
  """After 5 tokens in a 6-slot cache, growing it to max_len keeps every
  array's first 6 slots bit for bit, the new slots are zeros and not valid,
  the index stays 5; shrinking or exceeding max_len is refused."""
  model, params, _ = lm
  tokens = random_tokens(9, (2, 5))
  pos, valid = jnp.arange(5)[None].repeat(2, 0), jnp.ones((2, 5), bool)
  _, cache = decode_fns(params, model_lib.init_cache(model, 2, 6), tokens, pos, valid)
  grown = model_lib.grow_cache(model, cache, CFG.max_len)
  assert model_lib.cache_length(cache) == 6 and model_lib.cache_length(grown) == CFG.max_len
  old = {
    jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(cache)
  }
  new = {
    jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(grown)
  }
  assert old.keys() == new.keys() and len(old) == 4 * CFG.n_layer
  for key, a in old.items():
    b = new[key]
    if key.endswith("['index']"):
      assert a == b == 5
      continue
    axis = {"['k']": 3, "['v']": 2, "['valid']": 1}[key[key.rindex("[") :]]
    assert b.shape[axis] == CFG.max_len and a.shape[axis] == 6
    np.testing.assert_array_equal(np.take(b, range(6), axis), a)
    assert not np.take(b, range(6, CFG.max_len), axis).any()
  assert np.take(new[next(k for k in new if k.endswith("['valid']"))], range(5), 1).all()
  for bad in (5, CFG.max_len + 1):
    with pytest.raises(ValueError, match="KV cache length"):
      model_lib.grow_cache(model, cache, bad)


def test_left_padded_rows_match_unpadded_rows(lm):
  model, params, forward = lm
  T = CFG.max_len
  seqs = np.asarray(random_tokens(3, (3, T)))
  lengths = [T, T - 2, T - 5]
  tokens = np.zeros((3, T), np.int32)
  mask = np.zeros((3, T), bool)
  for i, n in enumerate(lengths):
    tokens[i, T - n :] = seqs[i, :n]
    mask[i, T - n :] = True
  positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
  padded = np.asarray(
    forward(params, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
  )
  # Alone: each row right-padded to T (causality hides the tail), no mask.
  alone = np.asarray(forward(params, jnp.asarray(seqs)))
  for i, n in enumerate(lengths):
    np.testing.assert_allclose(
      padded[i, T - n :], alone[i, :n], atol=1e-5, rtol=0, err_msg=f"row {i} (length {n})"
    )
  assert np.isfinite(padded).all()


def test_query_blocks_cover_the_rows_in_order():
  assert model_lib.query_blocks(12, 5) == [(0, 5), (5, 10), (10, 12)]
  assert model_lib.query_blocks(12, 0) == [(0, 12)] == model_lib.query_blocks(12, 12)
  assert model_lib.query_blocks(12, 64) == [(0, 12)]
  assert model_lib.query_blocks(1, 1) == [(0, 1)]


@pytest.mark.parametrize(
  "n_kv_head", [None, pytest.param(1, marks=pytest.mark.slow)]
)  # grouped keys in the slow set (~4 s): the fast subset stays under 5 minutes
def test_block_causal_attention_equals_one_block(n_kv_head):
  """Blocked (3 query blocks) vs unblocked attention: the same logits on every
  real token and the same gradients, for multi-head and grouped-query
  attention, with left padding and packed segments."""
  T = 12
  one = dataclasses.replace(CFG, query_block=0, n_head=4, n_kv_head=n_kv_head)
  blocked = dataclasses.replace(one, query_block=5)
  tokens = random_tokens(7, (2, T))
  mask = jnp.asarray(np.arange(T)[None] >= np.array([[0], [3]]))  # row 1 left-padded by 3
  positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
  segments = jnp.asarray(np.repeat([[0, 1, 2], [0, 0, 1]], [4, 6, 2], axis=1))  # packed rows
  params = nn.meta.unbox(
    jit(model_lib.Transformer(one).init)(jax.random.PRNGKey(1), tokens)["params"]
  )

  def loss(cfg, p):
    logits = model_lib.Transformer(cfg).apply({"params": p}, tokens, positions, mask, segments)
    return jnp.sum(jnp.where(mask[..., None], jnp.sin(logits), 0.0)), logits

  (l1, logits1), g1 = jit(jax.value_and_grad(functools.partial(loss, one), has_aux=True))(params)
  (l2, logits2), g2 = jit(jax.value_and_grad(functools.partial(loss, blocked), has_aux=True))(
    params
  )
  real = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(logits2)[real], np.asarray(logits1)[real], atol=1e-5)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):  # entries up to ~300: float32
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)  # sums differ
  # The segments matter: without them the blocked logits differ.
  other = model_lib.Transformer(blocked).apply({"params": params}, tokens, positions, mask)
  assert np.abs(np.asarray(other)[real] - np.asarray(logits2)[real]).max() > 1e-3


# ----------------------------------------------------------------------------
# Parameters: shapes, init, tied head


def expected_shapes(c: model_lib.TransformerConfig) -> dict:
  D, H, K, F = c.d_model, c.n_head, c.head_dim, c.d_ff
  ln = {"scale": (D,), "bias": (D,)}
  block = {
    "ln_1": ln,
    "ln_2": ln,
    "attn": {"w_qkv": (D, 3, H, K), "b_qkv": (3, H, K), "w_out": (H, K, D), "b_out": (D,)},
    "mlp": {"w_fc": (D, F), "b_fc": (F,), "w_proj": (F, D), "b_proj": (D,)},
  }
  trunk = {"wte": (c.vocab_size, D), "wpe": (c.max_len, D), "ln_f": ln}
  trunk.update({f"block_{i}": block for i in range(c.n_layer)})
  return {"trunk": trunk}


def test_eval_shape_gives_expected_parameter_shapes_and_no_separate_head():
  model = model_lib.Transformer(CFG)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  assert set(abstract) == {"params"}
  shapes = jax.tree_util.tree_map(lambda x: tuple(x.shape), nn.meta.unbox(abstract["params"]))
  # Exactly these parameters: in particular no LM-head matrix besides `wte`.
  assert shapes == expected_shapes(CFG)
  out = jax.eval_shape(lambda v, t: model.apply(v, t), abstract, jnp.zeros((3, 5), jnp.int32))
  assert out.shape == (3, 5, CFG.vocab_size) and out.dtype == jnp.float32


def test_parameters_carry_logical_axis_names():
  model = model_lib.Transformer(CFG)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
  specs = nn.get_partition_spec(abstract["params"])
  trunk = specs["trunk"]
  assert tuple(trunk["wte"]) == ("vocab", "embed")
  assert tuple(trunk["block_0"]["attn"]["w_qkv"]) == ("embed", None, "heads", "kv")
  assert tuple(trunk["block_0"]["mlp"]["w_fc"]) == ("embed", "mlp")


def test_lm_head_is_tied_to_token_embedding(lm):
  model, params, forward = lm
  tokens = random_tokens(4, (2, 7))
  h = jit(model_lib.Trunk(CFG).apply)({"params": params["trunk"]}, tokens)  # [B, T, D]
  expected = np.einsum("btd,vd->btv", h, params["trunk"]["wte"])
  np.testing.assert_allclose(forward(params, tokens), expected, atol=1e-5, rtol=0)
  # Moving wte moves the logits: the head has no parameters of its own.
  bumped = jax.tree_util.tree_map(lambda x: x, params)
  bumped["trunk"]["wte"] = params["trunk"]["wte"] * 2.0
  assert not np.allclose(forward(bumped, tokens), forward(params, tokens))


def test_gpt2_init_statistics():
  cfg = model_lib.TransformerConfig(
    vocab_size=256, max_len=32, n_layer=4, n_head=4, d_model=64, d_ff=256
  )
  model = model_lib.Transformer(cfg)
  params = nn.meta.unbox(
    jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32))["params"]
  )
  trunk = params["trunk"]
  resid = 0.02 / math.sqrt(2 * cfg.n_layer)

  def check_std(x, std, name):
    x = np.asarray(x)
    assert abs(x.mean()) < 4 * std / math.sqrt(x.size), name
    assert x.std() == pytest.approx(std, rel=0.05), name

  check_std(trunk["wte"], 0.02, "wte")
  check_std(trunk["wpe"], 0.01, "wpe")
  for i in range(cfg.n_layer):
    b = trunk[f"block_{i}"]
    check_std(b["attn"]["w_qkv"], 0.02, f"block_{i}.w_qkv")
    check_std(b["mlp"]["w_fc"], 0.02, f"block_{i}.w_fc")
    check_std(b["attn"]["w_out"], resid, f"block_{i}.w_out")
    check_std(b["mlp"]["w_proj"], resid, f"block_{i}.w_proj")
    for bias in (b["attn"]["b_qkv"], b["attn"]["b_out"], b["mlp"]["b_fc"], b["mlp"]["b_proj"]):
      assert not np.asarray(bias).any()
    for ln in ("ln_1", "ln_2"):
      assert (np.asarray(b[ln]["scale"]) == 1).all() and not np.asarray(b[ln]["bias"]).any()
  assert (np.asarray(trunk["ln_f"]["scale"]) == 1).all()
  # Different layers get different draws.
  assert not np.allclose(trunk["block_0"]["attn"]["w_qkv"], trunk["block_1"]["attn"]["w_qkv"])


# ----------------------------------------------------------------------------
# dtype and dropout


def test_bfloat16_runs_and_returns_float32_logits(lm):
  _, params32, forward32 = lm
  cfg = dataclasses.replace(CFG, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  model = model_lib.Transformer(cfg)
  tokens = random_tokens(5, (2, 6))
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(nn.meta.unbox(abstract)))
  # The float32 parameters rounded to bfloat16: the same function, computed coarsely.
  params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params32)
  logits = jit(model.apply)({"params": params}, tokens)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 6, CFG.vocab_size)
  assert np.isfinite(np.asarray(logits)).all()
  ref = np.asarray(forward32(params32, tokens))
  assert np.abs(np.asarray(logits) - ref).max() < 0.05
  # bfloat16 activations with float32 parameters.
  mixed = model_lib.Transformer(dataclasses.replace(CFG, dtype=jnp.bfloat16))
  out = jit(mixed.apply)({"params": params32}, tokens)
  assert out.dtype == jnp.float32
  assert np.abs(np.asarray(out) - ref).max() < 0.05


EINSUMS = ["btd,dchk->cbthk", "bthk,hkd->btd", "btd,df->btf", "btd,vd->btv"]


def test_input_gradient_equation_by_hand():
  assert model_lib._input_gradient_equation("ab,bc->ac") == "ac,bc->ab"
  assert model_lib._input_gradient_equation("btd,vd->btv") == "btv,vd->btd"


def _operands(eq, seed, dtype):
  """Random operands of `eq` with every letter of size 2..5."""
  sizes = dict(zip("bcdfhktv", [2, 3, 5, 4, 2, 3, 4, 5]))
  lhs, rhs = eq.split("->")[0].split(",")
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=[sizes[c] for c in s]), dtype) for s in (lhs, rhs)]


def _loop_cotangents(eq, a, b, g):
  """Both input cotangents of einsum(eq, a, b) for the output cotangent g, in
  float64, as a plain loop over every index combination."""
  lhs, rhs = eq.split("->")[0].split(",")
  out_idx = eq.split("->")[1]
  A, B, G = (np.asarray(x, np.float64) for x in (a, b, g))
  ref_a, ref_b = np.zeros(A.shape), np.zeros(B.shape)
  letters = sorted(set(lhs + rhs))
  sizes = {c: n for s, x in ((lhs, A), (rhs, B)) for c, n in zip(s, x.shape)}
  for idx in np.ndindex(*[sizes[c] for c in letters]):
    at = dict(zip(letters, idx))
    ia, ib, io = (tuple(at[c] for c in s) for s in (lhs, rhs, out_idx))
    ref_a[ia] += G[io] * B[ib]
    ref_b[ib] += A[ia] * G[io]
  return ref_a, ref_b


@pytest.mark.parametrize("eq", EINSUMS)
def test_einsum_float32_forward_is_jnp_einsum_and_its_gradients_a_plain_loop(eq):
  a, b = _operands(eq, 0, jnp.float32)
  out = model_lib.einsum(eq, a, b)
  np.testing.assert_array_equal(out, jnp.einsum(eq, a, b))
  g = jnp.asarray(np.random.default_rng(2).normal(size=out.shape), jnp.float32)
  _, vjp = jax.vjp(lambda a, b: model_lib.einsum(eq, a, b), a, b)
  for got, ref in zip(vjp(g), _loop_cotangents(eq, a, b, g)):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "eq, shapes",
  [
    ("btf,fd->btd", [(2, 8, 12), (12, 3)]),  # input wider than output: w_proj's case
    ("btd,vd->btv", [(2, 8, 3), (12, 3)]),  # output wider, weight [out, in]: the tied head
    ("btd,df->btf", [(2, 8, 3), (3, 12)]),  # output wider, weight [in, out]: w_fc
    ("btd,dchk->cbthk", [(2, 8, 3), (3, 3, 2, 2)]),  # fused qkv, training's order
  ],
)
def test_weight_gradient_in_either_operand_order_is_the_loop(eq, shapes):
  """Whichever of the activation and the output gradient the GEMM takes as its
  left operand, the weight's cotangent (transposed back) is the same sum."""
  rng = np.random.default_rng(3)
  a, b = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes)
  out = jnp.einsum(eq, a, b)
  g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  _, ref_b = _loop_cotangents(eq, a, b, g)
  got = jax.jit(model_lib._weight_gradient, static_argnums=(0, 3))(eq, a, g, jnp.float32)
  assert got.shape == b.shape
  np.testing.assert_allclose(np.asarray(got), ref_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eq", EINSUMS)
def test_einsum_bfloat16_accumulates_in_float32_forward_and_backward(eq):
  """Against float32 arithmetic on the bf16 values, rounded once at the end."""
  a, b = _operands(eq, 1, jnp.bfloat16)
  a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
  out = model_lib.einsum(eq, a, b)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out, jnp.einsum(eq, a32, b32).astype(jnp.bfloat16))
  out32 = model_lib.einsum(eq, a, b, jnp.float32)
  assert out32.dtype == jnp.float32
  np.testing.assert_allclose(out32, jnp.einsum(eq, a32, b32), rtol=1e-6, atol=1e-6)
  # Backward: the cotangent rounded to bf16, each input's cotangent contracted
  # in float32 (written as a plain loop over the output) and rounded to bf16.
  g = jnp.asarray(np.random.default_rng(2).normal(size=out.shape), jnp.float32)
  _, vjp = jax.vjp(lambda a, b: model_lib.einsum(eq, a, b, jnp.float32), a, b)
  da, db = vjp(g)
  assert da.dtype == db.dtype == jnp.bfloat16
  g16 = g.astype(jnp.bfloat16).astype(jnp.float32)
  ref_a, ref_b = _loop_cotangents(eq, a32, b32, g16)
  for got, ref in ((da, ref_a), (db, ref_b)):
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=2**-8, atol=1e-6)


def test_einsum_rejects_mixed_operand_dtypes():
  a, b = _operands("btd,df->btf", 0, jnp.bfloat16)
  with pytest.raises(ValueError, match="dtypes differ"):
    model_lib.einsum("btd,df->btf", a, b.astype(jnp.float32))


def test_bfloat16_gradients_are_finite_and_close_to_float32(lm):
  model32, params, _ = lm
  model16 = model_lib.Transformer(dataclasses.replace(CFG, dtype=jnp.bfloat16))
  tokens = random_tokens(7, (3, CFG.max_len))

  def loss(model, p):
    logits = model.apply({"params": p}, tokens)
    return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  g32 = jit(jax.grad(lambda p: loss(model32, p)))(params)
  g16 = jit(jax.grad(lambda p: loss(model16, p)))(params)
  for path, x in jax.tree_util.tree_leaves_with_path(g16):
    y = g32
    for k in path:
      y = y[k.key]
    assert x.dtype == jnp.float32, path  # float32 master weights get float32 gradients
    assert np.isfinite(np.asarray(x)).all(), path
    scale = np.abs(np.asarray(y)).max() + 1e-6
    assert np.abs(np.asarray(x) - np.asarray(y)).max() < 0.1 * scale, path


def test_dropout_is_random_in_training_and_off_when_deterministic(lm):
  _, params, forward = lm
  model = model_lib.Transformer(dataclasses.replace(CFG, dropout=0.3))
  tokens = random_tokens(6, (2, 8))

  @functools.partial(jit, static_argnames="deterministic")
  def apply(rng, deterministic):
    return model.apply(
      {"params": params}, tokens, deterministic=deterministic, rngs={"dropout": rng}
    )

  a = np.asarray(apply(jax.random.PRNGKey(1), False))
  b = np.asarray(apply(jax.random.PRNGKey(2), False))
  a2 = np.asarray(apply(jax.random.PRNGKey(1), False))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, a2)
  d1 = np.asarray(apply(jax.random.PRNGKey(1), True))
  d2 = np.asarray(apply(jax.random.PRNGKey(2), True))
  np.testing.assert_array_equal(d1, d2)
  # deterministic=True is the dropout-free model.
  np.testing.assert_allclose(d1, forward(params, tokens), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------
# Parameter count and FLOPs


def hand_count(c: model_lib.TransformerConfig) -> tuple[int, int]:
  """(all parameters, without wte/wpe), counted by hand."""
  D, F, V, L = c.d_model, c.d_ff, c.vocab_size, c.n_layer
  attn = D * 3 * D + 3 * D + D * D + D
  mlp = D * F + F + F * D + D
  block = attn + mlp + 2 * (2 * D)
  non_embedding = L * block + 2 * D
  return non_embedding + V * D + c.max_len * D, non_embedding


def test_count_params_and_flops_per_token_by_hand():
  cfg = model_lib.TransformerConfig(
    vocab_size=100, max_len=20, n_layer=3, n_head=2, d_model=8, d_ff=24
  )
  abstract = jax.eval_shape(
    model_lib.Transformer(cfg).init, jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)
  )["params"]
  total, non_embedding = hand_count(cfg)
  # 3 * ((8*24 + 24 + 8*8 + 8) + (8*24 + 24 + 24*8 + 8) + 4*8) + 2*8 = 2,224
  assert non_embedding == 2224
  assert model_lib.count_params(abstract) == total == 2224 + 800 + 160
  assert model_lib.count_params(abstract, exclude_embeddings=True) == non_embedding
  T = 20
  assert model_lib.flops_per_token(cfg, total, T) == 6 * 3184 + 12 * 3 * 8 * 20
  assert model_lib.flops_per_token(cfg, 1000, 64) == 6000 + 12 * 3 * 8 * 64


def test_train_loop_flops_per_token_for_lm_and_scalar_head():
  """MFU numerator of every Transformer task: the LM's tied embedding is a matmul
  (the output projection); the reward model only looks it up, and adds a head."""
  from gptjax import heads, train

  cfg = model_lib.TransformerConfig(
    vocab_size=100, max_len=20, n_layer=3, n_head=2, d_model=8, d_ff=24
  )
  tokens = np.zeros((1, 20), np.int32)
  total, non_embedding = hand_count(cfg)
  for model, n_matmul in [
    (model_lib.Transformer(cfg), non_embedding + 800),
    (heads.ScalarHeadModel(cfg), non_embedding + 8 + 1),
  ]:
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"])
    task = train.Task(
      name="t",
      model=model,
      loss_fn=None,
      train_batch=None,
      example_batch={"tokens": tokens},
      tokens_per_step=20,
    )
    assert train.task_flops_per_token(task, params) == 6 * n_matmul + 12 * 3 * 8 * 20
  task.flops_per_token = 123.0  # a Task's own figure wins
  assert train.task_flops_per_token(task, params) == 123.0


# ----------------------------------------------------------------------------
# Config validation


def model_config(**overrides) -> ml_collections.ConfigDict:
  c = pretrain_configs.get_config("tiny").model
  for k, v in overrides.items():
    c[k] = v
  return c


def test_from_config_converts_dtypes():
  cfg = model_lib.TransformerConfig.from_config(model_config(dtype="bfloat16"))
  assert cfg.dtype == jnp.bfloat16 and cfg.param_dtype == jnp.float32
  assert cfg.head_dim == cfg.d_model // cfg.n_head


@pytest.mark.parametrize(
  "overrides, field",
  [
    ({"dtype": "float16"}, "config.model.dtype"),
    ({"param_dtype": "fp32"}, "config.model.param_dtype"),
    ({"d_model": 66, "n_head": 4}, "config.model.d_model"),
    ({"n_layer": 0}, "config.model.n_layer"),
    ({"vocab_size": -5}, "config.model.vocab_size"),
    ({"dropout": 1.0}, "config.model.dropout"),
    ({"query_block": -1}, "config.model.query_block"),
    ({"query_block": 1.5}, "config.model.query_block"),
  ],
)
def test_from_config_rejects_bad_values_naming_the_field(overrides, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")) as e:
    model_lib.TransformerConfig.from_config(model_config(**overrides))
  if "dtype" in field:
    assert "bfloat16" in str(e.value) and "float32" in str(e.value)  # the allowed values
  if field == "config.model.d_model":
    assert "n_head" in str(e.value)
