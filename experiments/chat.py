"""Chat with a trained model in the terminal: streamed tokens, multi-turn history.

Run:
  python -m experiments.chat --workdir=/tmp/sft_tiny
  python -m experiments.chat --workdir=/tmp/sft_tiny --prompt "What is 12 plus 30?"
  python -m experiments.chat --workdir=runs/small --temperature=0.8 --top_p=0.9

--workdir is an SFT, pretraining or RLHF run (RLHF: its exported policy/): its
config.json, tokenizer.model and latest checkpoint are loaded. The conversation
is kept in the chat template;
when it outgrows the context, the oldest turns are dropped and the system
message is kept. Commands: /reset (forget the history), /system <text> (set
the system message and reset), /quit. --prompt answers once and exits.
"""

import sys

from absl import app, flags, logging

from gptjax import cli, sampling
from gptjax.chat import Chat, load

_WORKDIR = flags.DEFINE_string(
  "workdir", None, "An SFT or pretraining run's workdir.", required=True
)
_PROMPT = flags.DEFINE_string("prompt", None, "Answer this one message and exit.")
_SYSTEM = flags.DEFINE_string("system", "", "System message ('' = none).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
_MAX_NEW_TOKENS = flags.DEFINE_integer(
  "max_new_tokens", None, "Longest answer (default: a third of the context)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")

HELP = "commands: /reset  /system <text>  /quit"


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
      chat.set_system(line[len("/system") :].strip())
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
    run = load(_WORKDIR.value)
  except (FileNotFoundError, OSError) as e:
    sys.exit(f"error: {e}")
  max_new = _MAX_NEW_TOKENS.value or max(1, run.model.cfg.max_len // 3)
  if not 0 < max_new < run.model.cfg.max_len:
    sys.exit(
      f"error: --max_new_tokens={max_new} must be in [1, {run.model.cfg.max_len}) "
      "(the model's context)"
    )
  params_sampling = sampling.SamplingParams(
    temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value
  )
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
  print(f"[chat] {_WORKDIR.value} (step {run.step}), {params_sampling}, max_new_tokens {max_new}")
  interactive(chat)


if __name__ == "__main__":
  cli.run(main)
