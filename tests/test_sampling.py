"""The sampler: filters against hand-made logits, and generate/stream on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import model as model_lib, sampling

V = 8
LOGITS = jnp.log(
  jnp.array(
    [[0.05, 0.4, 0.1, 0.25, 0.02, 0.08, 0.06, 0.04], [0.3, 0.01, 0.01, 0.02, 0.5, 0.06, 0.05, 0.05]]
  )
)  # [2, V]


def params_tuple(temperature=1.0, top_k=0, top_p=1.0):
  return (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))


def kept(logits, **kw):
  """Boolean [B, V]: tokens that survive filter_logits."""
  t = params_tuple(**kw)
  return np.isfinite(np.asarray(sampling.filter_logits(logits, *t)))


def draw(logits, n, **kw):
  """n samples per row, [n, B]."""
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  return np.asarray(_draw(keys, logits, params_tuple(**kw)))


@jax.jit
def _draw(keys, logits, params):
  return jax.vmap(lambda k: sampling.sample_token(k, logits, params)[0])(keys)


# ----------------------------------------------------------------------------
# Filters on fake logits.


def test_greedy_is_argmax():
  tok, lp = sampling.sample_token(jax.random.PRNGKey(0), LOGITS, params_tuple(temperature=0.0))
  np.testing.assert_array_equal(tok, [1, 4])
  np.testing.assert_allclose(lp, np.log([0.4, 0.5]), rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_never_leaves_the_top_k(k):
  top = np.argsort(-np.asarray(LOGITS), axis=-1)[:, :k]  # [B, k]
  mask = kept(LOGITS, top_k=k)
  for b in range(2):
    assert set(np.flatnonzero(mask[b])) == set(top[b])
  samples = draw(LOGITS, 300, top_k=k)
  for b in range(2):
    assert set(samples[:, b]) <= set(top[b])


@pytest.mark.parametrize(
  "p, expected",
  [
    (0.3, [{1}, {4}]),  # the most likely token alone has mass >= p
    (0.45, [{1, 3}, {4}]),  # 0.4 < 0.45 <= 0.65; 0.5 >= 0.45
    (0.7, [{1, 3, 2}, {4, 0}]),  # 0.65 < 0.7 <= 0.75; 0.5 < 0.7 <= 0.8
    (1.0, [set(range(V)), set(range(V))]),
  ],
)
def test_top_p_keeps_the_smallest_set_with_mass_p(p, expected):
  mask = kept(LOGITS, top_p=p)
  assert [set(np.flatnonzero(m)) for m in mask] == expected
  probs = np.exp(np.asarray(LOGITS))
  for b in range(2):
    assert probs[b, mask[b]].sum() >= p - 1e-6


def test_top_p_samples_stay_in_the_nucleus():
  samples = draw(LOGITS, 300, top_p=0.5)
  assert set(samples[:, 0]) == {1, 3} and set(samples[:, 1]) == {4}


def test_low_temperature_equals_greedy():
  samples = draw(LOGITS, 100, temperature=1e-4)
  assert (samples == np.array([1, 4])).all()


def test_invalid_sampling_params_raise():
  for bad in (dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
    with pytest.raises(ValueError):
      sampling.SamplingParams(**bad).validate()


# ----------------------------------------------------------------------------
# generate / stream on a tiny random Transformer.

EOS, PAD = 1, 0


@pytest.fixture(scope="module")
def lm():
  cfg = model_lib.TransformerConfig(
    vocab_size=64, max_len=48, n_layer=2, n_head=2, d_model=32, d_ff=64
  )
  model = model_lib.Transformer(cfg)
  init = jax.jit(
    lambda rng: model_lib.nn.meta.unbox(model.init(rng, jnp.zeros((1, 4), jnp.int32))["params"])
  )
  return model, jax.tree_util.tree_map(lambda x: x * 8.0, init(jax.random.PRNGKey(0)))


def gen(lm, prompts, n=10, eos=-1, **kw):
  model, params = lm
  return sampling.generate(
    model,
    params,
    prompts,
    max_new_tokens=n,
    rng=jax.random.PRNGKey(1),
    eos_id=eos,
    pad_id=PAD,
    **kw,
  )


PROMPTS = [[5, 9, 12, 3, 33, 7, 21], [40], [8, 8, 2, 60]]


def test_batch_of_different_lengths_equals_each_alone(lm):
  batch = gen(lm, PROMPTS, sampling=sampling.GREEDY)
  for i, p in enumerate(PROMPTS):
    alone = gen(lm, [p], sampling=sampling.GREEDY)
    np.testing.assert_array_equal(batch.tokens[i], alone.tokens[0])
    np.testing.assert_allclose(batch.logprobs[i], alone.logprobs[0], atol=1e-4)


def test_generate_matches_recomputing_the_prefix(lm):
  model, params = lm
  prompt = np.array([PROMPTS[0]], np.int32)
  slow = sampling.recompute_generate(model, params, jnp.asarray(prompt), 10)
  np.testing.assert_array_equal(gen(lm, [PROMPTS[0]], sampling=sampling.GREEDY).tokens, slow)


def test_eos_stops_a_row_and_masks_the_rest(lm):
  free = gen(lm, PROMPTS, sampling=sampling.GREEDY)
  eos = int(free.tokens[0, 3])  # row 0 emits this at step 3 (maybe earlier)
  out = gen(lm, PROMPTS, eos=eos, sampling=sampling.GREEDY)
  for row, mask, toks in zip(free.tokens, out.mask, out.tokens):
    hits = np.flatnonzero(row == eos)
    stop = hits[0] + 1 if len(hits) else len(row)
    assert mask[:stop].all() and not mask[stop:].any()
    np.testing.assert_array_equal(toks[:stop], row[:stop])
    assert (toks[stop:] == PAD).all()
  assert out.mask[0].sum() <= 4
  assert (out.logprobs[~out.mask] == 0).all()


def test_logprobs_are_the_models(lm):
  """Log-probs of sampled tokens are those of the untruncated distribution."""
  model, params = lm
  out = gen(lm, [PROMPTS[1]], sampling=sampling.SamplingParams(top_k=3))
  seq = jnp.asarray([PROMPTS[1] + list(out.tokens[0])])
  logp = jax.nn.log_softmax(jax.jit(model.apply)({"params": params}, seq), -1)[0]
  expected = [logp[i, t] for i, t in enumerate(out.tokens[0])]
  np.testing.assert_allclose(out.logprobs[0], expected, atol=1e-4)


def test_too_long_prompt_raises_or_truncates_left(lm):
  long = list(range(2, 60)) * 1  # 58 tokens > 48 - 10
  with pytest.raises(ValueError, match="exceeds the context"):
    gen(lm, [long])
  out = gen(lm, [long], truncate="left", sampling=sampling.GREEDY)
  kept_tail = long[-(48 - 10) :]
  alone = gen(lm, [kept_tail], sampling=sampling.GREEDY)
  np.testing.assert_array_equal(out.tokens, alone.tokens)
  with pytest.raises(ValueError):
    gen(lm, [[3]], n=48)


def test_stream_equals_generate_greedy(lm):
  model, params = lm
  out = gen(lm, [PROMPTS[0]], sampling=sampling.GREEDY)
  streamed = list(
    sampling.stream(
      model,
      params,
      PROMPTS[0],
      max_new_tokens=10,
      rng=jax.random.PRNGKey(1),
      eos_id=-1,
      pad_id=PAD,
      sampling=sampling.GREEDY,
    )
  )
  assert streamed == list(out.tokens[0])
