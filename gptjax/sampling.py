"""KV-cache generation: greedy, temperature, top-k, top-p. One sampler for all.

Chat, evaluation and PPO rollouts all call `generate`. Prompts of different
lengths are left-padded into one batch; each row gets its own position ids
and a mask, so a row computes exactly what it would compute alone.

`generate` is one jitted program: prefill the prompt into the cache, then
`lax.while_loop`s that sample one token per step and stop when every row has
emitted EOS or `max_new_tokens` is reached. The loops run in phases of
DECODE_PHASE tokens over a cache grown between them (`model.grow_cache`), so
that each step reads only the slots its phase can reach. `stream` runs the same two
functions step by step from Python, for a chat that prints as it goes.
`generate_batched` serves any number of prompts in fixed-size batches (one
compilation), and `Generation.texts` reads answers back without the stop token.

Returned log-probs are those of the *model's* distribution (temperature 1,
no truncation) for the chosen tokens: what PPO's ratio and KL need.
"""

import dataclasses
import functools
from typing import Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import model as model_lib

PROMPT_BUCKET = 16  # prompt lengths are padded up to a multiple: fewer compilations
RESPONSE_BUCKET = 16  # `Generation.trimmed` keeps response columns up to a multiple of this


def bucketed(length: int, multiple: int, limit: int) -> int:
  """`length` rounded up to a multiple of `multiple` (at least one multiple),
  never beyond `limit`: the padded widths a few compiled programs serve."""
  return min(limit, -(-max(length, 1) // multiple) * multiple)


DECODE_PHASE = 64  # new tokens per decode phase (`_generate`): each reads a cache that long


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  temperature: float = 1.0  # 0 means greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off

  def validate(self):
    if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
      raise ValueError(
        f"Invalid sampling params {self}: need temperature >= 0, top_k >= 0, 0 < top_p <= 1"
      )
    return self


GREEDY = SamplingParams(temperature=0.0)


@dataclasses.dataclass
class Generation:
  tokens: np.ndarray  # [B, N] int32, pad after the stop token
  logprobs: np.ndarray  # [B, N] float32, model log-prob of each token (0 where masked)
  mask: np.ndarray  # [B, N] bool, True for generated tokens up to and including the stop token
  prompt_tokens: np.ndarray  # [B, P] int32, left-padded prompts
  prompt_mask: np.ndarray  # [B, P] bool
  stop_id: int  # the `eos_id` generation stopped at

  def response_ids(self) -> list[list[int]]:
    """Each row's generated ids, the stop token included when it was emitted."""
    return [[int(t) for t in row[m]] for row, m in zip(self.tokens, self.mask)]

  def texts(self, tokenizer, cut_at: Sequence[int] = ()) -> list[str]:
    """Each row's text without its stop token (see `response_texts`); ids in
    `cut_at` end a response too (e.g. the document's EOS when the stop is a newline)."""
    return response_texts(tokenizer, self.tokens, self.mask, (self.stop_id, *cut_at))

  def trimmed(self, multiple: int = RESPONSE_BUCKET) -> "Generation":
    """The same generation with the response axis cut after the longest
    response, rounded up to `multiple` (`bucketed`): the columns cut are
    padding in every row. Sampling stops once every row has stopped, but its
    output keeps max_new_tokens columns; programs that read a rollout (PPO's
    scoring and updates) then compute on the responses' real width, in a few
    compiled shapes.
    """
    N = self.tokens.shape[1]
    keep = bucketed(int(self.mask.sum(-1).max(initial=0)), multiple, N)
    cut = lambda a: a[:, :keep]
    return dataclasses.replace(
      self, tokens=cut(self.tokens), logprobs=cut(self.logprobs), mask=cut(self.mask)
    )


def response_texts(tokenizer, tokens, mask, stop_ids: Sequence[int]) -> list[str]:
  """The text of each generated row [B, N]: its masked tokens up to, not
  including, the first of `stop_ids` (the sampler's stop token, which it emits
  last; any other id listed also ends the text, with what follows it)."""
  stops = {int(t) for t in stop_ids}
  out = []
  for row, m in zip(tokens, mask):
    ids = [int(t) for t in row[m]]
    end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    out.append(tokenizer.decode(ids[:end]))
  return out


def filter_logits(logits, temperature, top_k, top_p):
  """Scaled and truncated logits [B, V]; removed tokens get -inf.

  top-k keeps the k largest; top-p keeps the smallest set of tokens whose
  probability mass (after top-k) reaches p; the most likely token is always
  kept and ties at the cutoff are kept together. Temperature, k and p may be
  traced values: one compilation serves all. One sort of [B, V].
  """
  logits = logits / jnp.maximum(temperature, 1e-6)
  B, V = logits.shape
  sorted_desc = -jnp.sort(-logits, axis=-1)  # [B, V]
  rank = jnp.arange(V)[None, :]  # [1, V]
  k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
  in_top_k = rank < k  # [1, V]
  probs = jax.nn.softmax(jnp.where(in_top_k, sorted_desc, -jnp.inf), axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs  # [B, V]
  n_keep = jnp.maximum((in_top_k & (mass_before < top_p)).sum(-1, keepdims=True), 1)
  cutoff = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)  # [B, 1]
  return jnp.where(logits < cutoff, -jnp.inf, logits)


def first_argmax(x):
  """jnp.argmax(x, axis=-1) as two plain reductions: the maximum, then the
  smallest index that holds it (a NaN counts as the maximum, as in argmax).
  The same index as argmax, ties and NaN included; int32 [...].

  XLA:CPU compiles argmax as one variadic (value, index) reduction that runs
  far slower than a max: over a 49,152-token vocabulary at batch 32 it took
  ~3.5 ms of each decode step (SmolLM2).
  """
  V = x.shape[-1]
  m = jnp.max(x, axis=-1, keepdims=True)
  hit = (x == m) | jnp.isnan(x)
  return jnp.min(jnp.where(hit, jnp.arange(V, dtype=jnp.int32), V), axis=-1)


def sample_token(rng, logits, params_tuple):
  """Chooses one token per row from logits [B, V]. Returns (token [B], logprob [B]).

  `lax.cond` runs only the branch asked for: greedy decoding never samples,
  and plain sampling (what PPO rollouts use) never pays for the sort that
  top-k / top-p need (on a CPU the sort costs more than the model's step).
  """
  temperature, top_k, top_p = params_tuple
  logp = jax.nn.log_softmax(logits, axis=-1)

  def sampled(_):
    truncated = jax.lax.cond(
      (top_k > 0) | (top_p < 1.0),
      lambda l: filter_logits(l, temperature, top_k, top_p),
      lambda l: l / jnp.maximum(temperature, 1e-6),
      logits,
    )
    # the Gumbel-max draw of jax.random.categorical (the same noise, the same token)
    return first_argmax(truncated + jax.random.gumbel(rng, truncated.shape, truncated.dtype))

  token = jax.lax.cond(temperature <= 0.0, lambda _: first_argmax(logits), sampled, None)
  return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, length: int):
  """Left-pads token lists to `length`. Returns tokens [B, L] int32, mask [B, L] bool."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    if len(p):
      tokens[i, length - len(p) :] = p
      mask[i, length - len(p) :] = True
  return tokens, mask


def _prefill(model, params, tokens, mask, cache):
  """Runs the prompt through the model, filling the cache.

  Returns (last logits, cache, next pos).
  """
  positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)  # [B, P]
  logits, mut = model.apply(
    {"params": params, "cache": cache}, tokens, positions, mask, decode=True, mutable=["cache"]
  )
  return logits[:, -1], mut["cache"], positions[:, -1] + mask.any(-1)


def _decode_one(model, params, token, position, cache):
  """Feeds one token per row [B] at `position` [B]. Returns (logits [B, V], cache)."""
  logits, mut = model.apply(
    {"params": params, "cache": cache},
    token[:, None],
    position[:, None],
    jnp.ones_like(token[:, None], jnp.bool_),
    decode=True,
    mutable=["cache"],
  )
  return logits[:, 0], mut["cache"]


class SamplingState(NamedTuple):
  """What `_generate`'s loop carries from one step to the next."""

  step: jax.Array  # [] int32: index of the token sampled next
  logits: jax.Array  # [B, V] the model's logits for that token
  cache: dict  # the KV cache, filled up to `position`
  position: jax.Array  # [B] int32: position id of the token sampled next
  done: jax.Array  # [B] bool: the row has emitted its stop token
  tokens: jax.Array  # [B, N] int32 generated so far (pad_id elsewhere)
  logprobs: jax.Array  # [B, N] float32 (0 elsewhere)
  mask: jax.Array  # [B, N] bool: True for generated tokens


def decode_phases(max_new_tokens: int, phase: int | None = None) -> list[int]:
  """The steps at which `_generate`'s decode phases end: every `phase` new
  tokens (default DECODE_PHASE), and at `max_new_tokens`. [N] for N <= phase."""
  phase = phase or DECODE_PHASE
  return [*range(phase, max_new_tokens, phase), max_new_tokens]


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _generate(model, params, tokens, mask, rng, sampling, eos_id, pad_id, max_new_tokens):
  B, P = tokens.shape
  ends = decode_phases(max_new_tokens)
  cache = model_lib.init_cache(model, B, P + ends[0])
  logits, cache, pos = _prefill(model, params, tokens, mask, cache)

  def body(s: SamplingState) -> SamplingState:
    tok, lp = sample_token(jax.random.fold_in(rng, s.step), s.logits, sampling)
    live = ~s.done
    logits, cache = _decode_one(model, params, tok, s.position, s.cache)
    return SamplingState(
      step=s.step + 1,
      logits=logits,
      cache=cache,
      position=s.position + 1,
      done=s.done | (tok == eos_id),
      tokens=s.tokens.at[:, s.step].set(jnp.where(live, tok, pad_id)),
      logprobs=s.logprobs.at[:, s.step].set(jnp.where(live, lp, 0.0)),
      mask=s.mask.at[:, s.step].set(live),
    )

  init = SamplingState(
    step=jnp.array(0),
    logits=logits,
    cache=cache,
    position=pos,
    done=jnp.zeros((B,), jnp.bool_),
    tokens=jnp.full((B, max_new_tokens), pad_id, jnp.int32),
    logprobs=jnp.zeros((B, max_new_tokens), jnp.float32),
    mask=jnp.zeros((B, max_new_tokens), jnp.bool_),
  )
  # Each decode step reads every slot of the cache, so the loop runs in
  # phases of DECODE_PHASE steps over a cache that grows between them: a
  # phase reads the slots up to its own end, not up to the generation's.
  # One loop per phase (each compiled); the same tokens as one loop over the
  # full cache (the slots not yet written are masked out either way).
  state = init
  for end in ends:
    state = state._replace(cache=model_lib.grow_cache(model, state.cache, P + end))
    state = jax.lax.while_loop(lambda s, end=end: (s.step < end) & ~s.done.all(), body, state)
  return state.tokens, state.logprobs, state.mask


def prepare_prompts(
  prompts: Sequence[Sequence[int]],
  max_new_tokens: int,
  max_len: int,
  pad_id: int,
  truncate: str = "error",
):
  """Checks lengths and left-pads to a bucketed length.

  truncate='error' raises if prompt + max_new_tokens exceeds the context;
  truncate='left' keeps the most recent tokens of a too-long prompt.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
  if not prompts:
    raise ValueError("generate() needs at least one prompt")
  budget = max_len - max_new_tokens
  if budget < 1:
    raise ValueError(
      f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
      f"context of {max_len} tokens"
    )
  longest = max(len(p) for p in prompts)
  if longest > budget:
    if truncate == "left":
      prompts = [list(p)[-budget:] for p in prompts]
    elif truncate == "error":
      raise ValueError(
        f"A prompt of {longest} tokens plus max_new_tokens={max_new_tokens} "
        f"exceeds the context of {max_len} tokens; shorten it, lower "
        "max_new_tokens, or pass truncate='left'"
      )
    else:
      raise ValueError(f"truncate={truncate!r}; allowed: 'error', 'left'")
  longest = max(max(len(p) for p in prompts), 1)
  length = bucketed(longest, PROMPT_BUCKET, budget)
  return left_pad(prompts, pad_id, length)


def generate(
  model,
  params,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  rng,
  eos_id: int,
  pad_id: int,
  sampling: SamplingParams = SamplingParams(),
  truncate: str = "error",
) -> Generation:
  """Generates continuations of token-id prompts (see module docstring)."""
  sampling.validate()
  tokens, mask = prepare_prompts(prompts, max_new_tokens, model.cfg.max_len, pad_id, truncate)
  s = (jnp.float32(sampling.temperature), jnp.int32(sampling.top_k), jnp.float32(sampling.top_p))
  out = _generate(
    model,
    params,
    jnp.asarray(tokens),
    jnp.asarray(mask),
    rng,
    s,
    jnp.int32(eos_id),
    jnp.int32(pad_id),
    max_new_tokens,
  )
  out_tok, out_lp, out_mask = jax.device_get(out)
  return Generation(
    np.asarray(out_tok), np.asarray(out_lp), np.asarray(out_mask), tokens, mask, eos_id
  )


def padded_batches(n: int, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
  """Fixed-size batches of row indices covering range(n): (start, index [batch_size]).

  The last batch repeats its last row up to `batch_size`, so every batch has
  one shape and one compilation serves all; a caller keeps the first
  min(batch_size, n - start) results of each batch.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  for start in range(0, n, batch_size):
    yield start, np.minimum(np.arange(start, start + batch_size), n - 1)


def generate_batched(
  model,
  params,
  prompts: Sequence[Sequence[int]],
  *,
  batch_size: int,
  max_new_tokens: int,
  rng,
  eos_id: int,
  pad_id: int,
  sampling: SamplingParams = SamplingParams(),
  truncate: str = "error",
  progress: Callable[[int], None] | None = None,
) -> Generation:
  """`generate` over any number of prompts, in batches of `batch_size` rows.

  Batches are padded to `batch_size` (`padded_batches`), so one compilation
  serves them all; batch `start` samples with `fold_in(rng, start)`. Rows come
  back in order, prompts left-padded to the widest batch's. `progress` is
  called with the number of rows done after each batch.
  """
  if not prompts:
    raise ValueError("generate_batched() needs at least one prompt")
  parts = []
  for start, index in padded_batches(len(prompts), batch_size):
    gen = generate(
      model,
      params,
      [prompts[i] for i in index],
      max_new_tokens=max_new_tokens,
      rng=jax.random.fold_in(rng, start),
      eos_id=eos_id,
      pad_id=pad_id,
      sampling=sampling,
      truncate=truncate,
    )
    parts.append((gen, min(batch_size, len(prompts) - start)))
    if progress is not None:
      progress(start + parts[-1][1])
  return _concatenate(parts, pad_id)


def _concatenate(parts: Sequence[tuple[Generation, int]], pad_id: int) -> Generation:
  """The first n rows of each (generation, n), in order; prompts left-padded to the widest."""
  P = max(g.prompt_tokens.shape[1] for g, _ in parts)
  widen = lambda x, fill: np.pad(x, ((0, 0), (P - x.shape[1], 0)), constant_values=fill)
  cat = lambda rows: np.concatenate([rows(g)[:n] for g, n in parts])
  return Generation(
    tokens=cat(lambda g: g.tokens),
    logprobs=cat(lambda g: g.logprobs),
    mask=cat(lambda g: g.mask),
    prompt_tokens=cat(lambda g: widen(g.prompt_tokens, pad_id)),
    prompt_mask=cat(lambda g: widen(g.prompt_mask, False)),
    stop_id=parts[0][0].stop_id,
  )


_prefill_jit = jax.jit(_prefill, static_argnames=("model",))
_decode_one_jit = jax.jit(_decode_one, static_argnames=("model",))
_sample_jit = jax.jit(sample_token)


def stream(
  model,
  params,
  prompt: Sequence[int],
  *,
  max_new_tokens: int,
  rng,
  eos_id: int,
  pad_id: int,
  sampling: SamplingParams = SamplingParams(),
  truncate: str = "left",
) -> Iterator[int]:
  """Yields generated token ids one at a time (batch of one), stopping after EOS."""
  sampling.validate()
  tokens, mask = prepare_prompts([prompt], max_new_tokens, model.cfg.max_len, pad_id, truncate)
  s = (jnp.float32(sampling.temperature), jnp.int32(sampling.top_k), jnp.float32(sampling.top_p))
  cache = model_lib.init_cache(model, 1, tokens.shape[1] + max_new_tokens)
  logits, cache, pos = _prefill_jit(model, params, jnp.asarray(tokens), jnp.asarray(mask), cache)
  for i in range(max_new_tokens):
    tok, _ = _sample_jit(jax.random.fold_in(rng, i), logits, s)
    t = int(tok[0])
    yield t
    if t == eos_id:
      return
    logits, cache = _decode_one_jit(model, params, tok, pos, cache)
    pos = pos + 1


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def recompute_generate(model, params, prompts, max_new_tokens: int):
  """Greedy decoding WITHOUT the cache: a full forward pass every step.

  prompts [B, P] int32 (equal lengths). The buffer [B, P + N] is filled left to
  right; causality makes the right-hand padding invisible to position i, so
  the logits read at i are those of the prefix alone. This is the baseline of
  the decode benchmark and an independent check of `generate`.
  Returns tokens [B, N].
  """
  B, P = prompts.shape
  buf = jnp.zeros((B, P + max_new_tokens), jnp.int32).at[:, :P].set(prompts)

  def body(i, buf):
    logits = model.apply({"params": params}, buf)  # [B, L, V]
    nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, P + i - 1, 1, False), -1)
    return jax.lax.dynamic_update_slice(buf, nxt[:, None].astype(jnp.int32), (0, P + i))

  return jax.lax.fori_loop(0, max_new_tokens, body, buf)[:, P:]
