"""A multi-turn conversation with a trained model: history, truncation, streaming.

Used by the terminal chat (`experiments/chat.py`), the pipeline's report
(side-by-side transcripts) and the Colab notebook. Generation is the shared
sampler's `stream`; the history follows the chat template and, when it
outgrows the context, drops the oldest turns but keeps the system message.
"""

import os
import sys

import jax

from gptjax import runs, sampling, sharding


class Chat:
  """A conversation with one loaded run; `reply` streams the answer."""

  def __init__(
    self,
    run: runs.LoadedRun,
    params_sampling: sampling.SamplingParams,
    max_new_tokens: int,
    system: str = "",
    seed: int = 0,
  ):
    self.run, self.sampling = run, params_sampling.validate()
    self.params = sharding.local_copy(run.params)
    self.max_new_tokens = max_new_tokens
    self.rng = jax.random.PRNGKey(seed)
    self.system = system
    self.reset()

  def reset(self) -> None:
    self.messages = [{"role": "system", "content": self.system}] if self.system else []

  def set_system(self, text: str) -> None:
    self.system = text
    self.reset()

  def reply(self, user_text: str, write=sys.stdout.write) -> str:
    """Adds the user's message, streams the answer through `write`, returns it."""
    tok = self.run.tokenizer
    self.messages.append({"role": "user", "content": user_text})
    budget = self.run.model.cfg.max_len - self.max_new_tokens
    try:
      prompt = tok.encode_chat_truncated(self.messages, budget, add_generation_prompt=True)
    except ValueError:
      self.messages.pop()
      raise
    self.rng, rng = jax.random.split(self.rng)
    ids, shown = [], ""
    for t in sampling.stream(
      self.run.model,
      self.params,
      prompt,
      max_new_tokens=self.max_new_tokens,
      rng=rng,
      eos_id=tok.end_turn_id,
      pad_id=tok.pad_id,
      sampling=self.sampling,
    ):
      if t in (tok.end_turn_id, tok.eos_id):
        break
      ids.append(t)
      text = tok.decode(ids)
      if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
        write(text[len(shown) :])
        shown = text
      sys.stdout.flush()
    answer = tok.decode(ids)
    write(answer[len(shown) :])
    self.messages.append({"role": "assistant", "content": answer})
    return answer


def load(workdir: str) -> runs.LoadedRun:
  """A chat-able run: an SFT/pretraining workdir, or an RLHF workdir's exported policy."""
  policy = os.path.join(workdir, "policy")
  if os.path.exists(os.path.join(policy, "config.json")):
    workdir = policy
  return runs.load_run(workdir)


def transcript(
  run: runs.LoadedRun, turns: list[str], max_new_tokens: int, system: str = ""
) -> list[dict[str, str]]:
  """Greedy answers to a scripted multi-turn conversation (history kept)."""
  chat = Chat(run, sampling.GREEDY, max_new_tokens, system)
  for text in turns:
    try:
      chat.reply(text, write=lambda _: None)
    except ValueError as e:  # a turn that cannot fit even alone
      chat.messages.append({"role": "assistant", "content": f"(not sent: {e})"})
  return chat.messages
