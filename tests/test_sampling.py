"""The sampler: filters against hand-made logits, and generate/stream on a tiny model."""

import dataclasses

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


def test_first_argmax_is_argmax_with_ties_nan_and_inf():
  """The two-reduction argmax picks numpy's index: the first of tied maxima,
  the first NaN when there is one, index 0 of a row that is all -inf."""
  rng = np.random.default_rng(0)
  x = rng.integers(-3, 4, (64, 257)).astype(np.float32)  # many ties
  x[3, [10, 200]] = np.nan
  x[4, 7] = np.inf
  x[5] = -np.inf
  x[6, :] = np.nan
  x = np.concatenate([x, rng.standard_normal((8, 257)).astype(np.float32)])
  got = sampling.first_argmax(jnp.asarray(x))
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
  np.testing.assert_array_equal(jax.jit(sampling.first_argmax)(x.reshape(8, 9, 257)),
                                np.argmax(x.reshape(8, 9, 257), axis=-1))  # fmt: skip


def test_sampling_draws_what_jax_random_categorical_draws():
  """Sampling's Gumbel-max over `first_argmax` returns categorical's token for
  the same key, temperature and truncation (so runs sample what they did)."""
  logits = jax.random.normal(jax.random.PRNGKey(1), (4, 300)) * 3.0
  for temperature, top_k in ((1.0, 0), (0.7, 0), (1.0, 20)):
    s = params_tuple(temperature=temperature, top_k=top_k)
    truncated = (
      sampling.filter_logits(logits, temperature, top_k, 1.0) if top_k else logits / temperature
    )
    keys = jax.random.split(jax.random.PRNGKey(0), 20)
    want = jax.jit(jax.vmap(lambda k, t=truncated: jax.random.categorical(k, t)))(keys)
    np.testing.assert_array_equal(_draw(keys, logits, s), want)  # [20, 4]


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


def test_decode_phases():
  assert sampling.decode_phases(10, 4) == [4, 8, 10]
  assert sampling.decode_phases(8, 4) == [4, 8]
  assert sampling.decode_phases(3, 4) == [3]
  assert sampling.decode_phases(200) == [64, 128, 192, 200]


@pytest.mark.parametrize(
  "params",
  [sampling.GREEDY, pytest.param(sampling.SamplingParams(top_k=5), marks=pytest.mark.slow)],
)  # top-k in the slow set (~5 s): the fast subset stays under 5 minutes
def test_decoding_in_phases_equals_one_phase(lm, monkeypatch, params):
  """Phases of 3 tokens (a cache grown four times, an EOS in a middle phase)
  give the tokens and log-probs of one loop over the whole cache."""
  free = gen(lm, PROMPTS, n=11, sampling=sampling.GREEDY)
  eos = int(free.tokens[0, 4])
  outs, lengths = [], []
  grow = model_lib.grow_cache
  spy = lambda model, cache, length: lengths.append(length) or grow(model, cache, length)
  monkeypatch.setattr(model_lib, "grow_cache", spy)
  for phase in (3, 100):
    monkeypatch.setattr(sampling, "DECODE_PHASE", phase)
    sampling._generate.clear_cache()
    outs.append(gen(lm, PROMPTS, n=11, eos=eos, sampling=params))
  sampling._generate.clear_cache()  # the module's default again
  P = sampling.PROMPT_BUCKET  # the prompts' padded length
  assert lengths == [P + 3, P + 6, P + 9, P + 11, P + 11]  # four phases, then one
  np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
  np.testing.assert_array_equal(outs[0].mask, outs[1].mask)
  np.testing.assert_allclose(outs[0].logprobs, outs[1].logprobs, atol=1e-5)
  assert outs[0].mask[0].sum() <= 5 and outs[0].mask.sum(1).max() == 11


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


def test_sampled_output_is_pinned(lm):
  """Plain and top-k/top-p sampling of a fixed model, key and prompts, pinned
  (recorded before the loop state was named): a refactor of the sampler must
  not change what it samples."""
  model, params = lm
  run = lambda sp: sampling.generate(
    model,
    params,
    [[5, 9, 12, 3, 33, 7, 21], [40], [8, 8, 2, 60]],
    max_new_tokens=12,
    rng=jax.random.PRNGKey(3),
    eos_id=7,
    pad_id=PAD,
    sampling=sp,
  )
  plain = run(sampling.SamplingParams())
  np.testing.assert_array_equal(
    plain.tokens,
    [
      [6, 18, 62, 37, 22, 15, 1, 38, 55, 41, 13, 18],
      [7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      [15, 59, 32, 15, 1, 1, 30, 26, 59, 37, 7, 0],
    ],
  )
  np.testing.assert_array_equal(plain.mask.sum(1), [12, 1, 11])
  np.testing.assert_allclose(
    plain.logprobs[[0, 2], :4],
    [[-1.791076, -0.084632, -0.368511, -0.097852], [-0.613224, -0.185623, -0.038455, -0.271176]],
    atol=1e-5,
  )
  nucleus = run(sampling.SamplingParams(temperature=0.7, top_k=5, top_p=0.8))
  np.testing.assert_array_equal(
    nucleus.tokens[[0, 2]],
    [
      [41, 14, 14, 29, 22, 29, 22, 29, 22, 18, 30, 38],
      [15, 59, 32, 15, 1, 1, 30, 26, 38, 14, 1, 38],
    ],
  )


class _Chars:
  """A stand-in tokenizer: id i decodes to chr(ord('a') + i); ids >= 20 decode to nothing."""

  def decode(self, ids):
    return "".join(chr(ord("a") + i) for i in ids if i < 20)


def test_texts_drop_the_stop_token_and_cut_at_extra_stops():
  tokens = np.array([[3, 4, 9, 0], [3, 9, 4, 0], [5, 6, 7, 8]])
  mask = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
  gen = sampling.Generation(tokens, np.zeros(tokens.shape), mask, tokens[:, :1], mask[:, :1], 9)
  assert gen.texts(_Chars()) == ["de", "d", "fghi"]  # the stop token (9) and what follows go
  assert gen.texts(_Chars(), cut_at=(6,)) == ["de", "d", "f"]
  assert gen.response_ids() == [[3, 4, 9], [3, 9, 4], [5, 6, 7, 8]]


def test_bucketed_rounds_up_within_the_limit():
  assert [sampling.bucketed(n, 16, 96) for n in (0, 1, 16, 17, 90, 96, 200)] == [
    16,
    16,
    16,
    32,
    96,
    96,
    96,
  ]
  assert sampling.bucketed(5, 16, 8) == 8  # never beyond the limit


def test_trimmed_generation_cuts_only_padding_columns():
  rng = np.random.default_rng(0)
  lengths = np.array([3, 17, 0, 9])  # the longest response: 17 tokens -> 32 columns kept
  mask = np.arange(40)[None] < lengths[:, None]  # [4, 40]
  tokens = np.where(mask, rng.integers(1, 50, mask.shape), 0).astype(np.int32)
  logprobs = np.where(mask, -rng.random(mask.shape), 0.0).astype(np.float32)
  gen = sampling.Generation(tokens, logprobs, mask, tokens[:, :2], mask[:, :2], 7)
  cut = gen.trimmed(16)
  assert cut.tokens.shape == cut.logprobs.shape == cut.mask.shape == (4, 32)
  np.testing.assert_array_equal(cut.tokens, tokens[:, :32])
  np.testing.assert_array_equal(cut.logprobs, logprobs[:, :32])
  assert cut.response_ids() == gen.response_ids()
  assert gen.trimmed(64).tokens.shape == (4, 40)  # never wider than generated
  empty = dataclasses.replace(gen, mask=np.zeros_like(mask))
  assert empty.trimmed(16).tokens.shape == (4, 16)  # no response at all: one bucket


def test_padded_batches_cover_every_row_once_in_one_shape():
  got = list(sampling.padded_batches(7, 3))
  assert [start for start, _ in got] == [0, 3, 6]
  assert all(len(index) == 3 for _, index in got)
  np.testing.assert_array_equal(got[-1][1], [6, 6, 6])  # the last row repeated
  kept = np.concatenate([index[: min(3, 7 - start)] for start, index in got])
  np.testing.assert_array_equal(kept, np.arange(7))
  with pytest.raises(ValueError, match="batch_size"):
    list(sampling.padded_batches(7, 0))


def test_generate_batched_equals_generate_per_batch(lm):
  model, params = lm
  prompts = [
    [5, 9, 12],
    [40],
    [8, 8, 2, 60],
    [3, 3],
    [17, 5, 9, 12, 3, 33, 7, 21, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    [2],
  ]
  kw = dict(max_new_tokens=6, eos_id=-1, pad_id=PAD, sampling=sampling.SamplingParams(top_k=4))
  rng = jax.random.PRNGKey(7)
  done = []
  out = sampling.generate_batched(
    model, params, prompts, batch_size=4, rng=rng, progress=done.append, **kw
  )
  assert done == [4, 6]
  assert out.tokens.shape == (6, 6) and out.prompt_tokens.shape[0] == 6
  for start in (0, 4):
    chunk = prompts[start : start + 4]
    alone = sampling.generate(
      model,
      params,
      chunk + [chunk[-1]] * (4 - len(chunk)),
      rng=jax.random.fold_in(rng, start),
      **kw,
    )
    np.testing.assert_array_equal(out.tokens[start : start + 4], alone.tokens[: len(chunk)])
    np.testing.assert_array_equal(out.logprobs[start : start + 4], alone.logprobs[: len(chunk)])
  # prompts came back left-padded to the widest batch's length, their ids intact
  for p, row, m in zip(prompts, out.prompt_tokens, out.prompt_mask):
    assert list(row[m]) == p


def test_generate_batched_compiles_once_for_a_ragged_last_batch(lm):
  model, params = lm
  before = sampling._generate._cache_size()
  sampling.generate_batched(
    model,
    params,
    [[5, 9], [40], [8, 8, 2], [3], [2, 2]],  # 4 + 1 rows, one prompt-length bucket
    batch_size=4,
    max_new_tokens=5,  # static: a program of its own
    rng=jax.random.PRNGKey(0),
    eos_id=-1,
    pad_id=PAD,
  )
  assert sampling._generate._cache_size() - before == 1  # unpadded, the last batch would add one
