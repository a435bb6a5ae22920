"""Chat with a trained model in the terminal: streamed tokens, multi-turn history.

Run:
  python -m experiments.chat --workdir=/tmp/sft_tiny
  python -m experiments.chat --workdir=/tmp/sft_tiny --prompt "What is 12 plus 30?"
  python -m experiments.chat --workdir=runs/small --temperature=0.8 --top_p=0.9

--workdir is an SFT (or pretraining) run: its config.json, tokenizer.model and
latest checkpoint are loaded. The conversation is kept in the chat template;
when it outgrows the context, the oldest turns are dropped and the system
message is kept. Commands: /reset (forget the history), /system <text> (set
the system message and reset), /quit. --prompt answers once and exits.
"""

import sys

from absl import app, flags, logging

import jax

from gptjax import sampling, sft

_WORKDIR = flags.DEFINE_string("workdir", None, "An SFT or pretraining run's workdir.",
                               required=True)
_PROMPT = flags.DEFINE_string("prompt", None, "Answer this one message and exit.")
_SYSTEM = flags.DEFINE_string("system", "", "System message ('' = none).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", None,
                                       "Longest answer (default: a third of the context).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")

HELP = "commands: /reset  /system <text>  /quit"


class Chat:
  """A conversation with one loaded run; `reply` streams the answer."""

  def __init__(self, run: sft.LoadedRun, params_sampling: sampling.SamplingParams,
               max_new_tokens: int, system: str = "", seed: int = 0):
    self.run, self.sampling = run, params_sampling.validate()
    self.params = jax.device_put(jax.device_get(run.params), jax.devices()[0])
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
    for t in sampling.stream(self.run.model, self.params, prompt,
                             max_new_tokens=self.max_new_tokens, rng=rng,
                             eos_id=tok.end_turn_id, pad_id=tok.pad_id,
                             sampling=self.sampling):
      if t in (tok.end_turn_id, tok.eos_id):
        break
      ids.append(t)
      text = tok.decode(ids)
      if not text.endswith("\ufffd"):        # wait for the rest of a multi-byte character
        write(text[len(shown):])
        shown = text
      sys.stdout.flush()
    answer = tok.decode(ids)
    write(answer[len(shown):])
    self.messages.append({"role": "assistant", "content": answer})
    return answer


def interactive(chat: Chat) -> None:
  print(f"{HELP}\n")
  while True:
    try:
      line = input("you> ").strip()
    except (EOFError, KeyboardInterrupt):
      print()
      return
    if not line:
      continue
    if line == "/quit":
      return
    if line == "/reset":
      chat.reset()
      print("(history cleared)")
      continue
    if line.startswith("/system"):
      chat.set_system(line[len("/system"):].strip())
      print(f"(system message set to {chat.system!r}; history cleared)")
      continue
    if line.startswith("/"):
      print(HELP)
      continue
    sys.stdout.write("assistant> ")
    try:
      chat.reply(line)
    except ValueError as e:
      print(f"(not sent: {e})")
    print()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  try:
    run = sft.load_run(_WORKDIR.value)
  except (FileNotFoundError, OSError) as e:
    sys.exit(f"error: {e}")
  max_new = _MAX_NEW_TOKENS.value or max(1, run.model.cfg.max_len // 3)
  if not 0 < max_new < run.model.cfg.max_len:
    sys.exit(f"error: --max_new_tokens={max_new} must be in [1, {run.model.cfg.max_len}) "
             "(the model's context)")
  params_sampling = sampling.SamplingParams(temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                                            top_p=_TOP_P.value)
  try:
    chat = Chat(run, params_sampling, max_new, _SYSTEM.value, _SEED.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  if _PROMPT.value is not None:
    try:
      chat.reply(_PROMPT.value)
    except ValueError as e:
      sys.exit(f"error: {e}")
    print()
    return
  print(f"[chat] {_WORKDIR.value} (step {run.step}), {params_sampling}, "
        f"max_new_tokens {max_new}")
  interactive(chat)


if __name__ == "__main__":
  app.run(main)
