"""SmolLM2-135M-Instruct (Q4_1 GGUF, from requirements-weights.txt) imported into gptjax.

transformers reading the same file (`from_pretrained(dir, gguf_file=...)`,
local, its own dequantisation and Q/K un-permutation) is the reference: the
logits agree to float32 rounding over 30 layers, the tokenizers agree id for
id, the chat templates character for character, and the converted run
answers in chat as the original model does.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import run_entry_point

from gptjax import model as model_lib, sampling
from gptjax.hub import convert, gguf

pytestmark = pytest.mark.weights

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TEXTS = [
  "Hello, world! The quick brown fox jumps over the lazy dog.",
  "In 2024, 12345 apples cost $3.99 (or 3,99 €) — 10% off; 0x1F, 1e-5, 3.14159.",
  "    def f(x):\n        return x ** 2  # square\n\n\n\tpass\n",
  "Unicode: Café naïve façade, 中文测试，你好世界！ 🎉👍🏽 👨‍👩‍👧 ℃ Ω x²",
  "  leading  and   multiple   spaces  \n\n\n trailing   ",
  "don't won't I'm you'll they've she'd it's",
  "",
]


@pytest.fixture(scope="module")
def path():
  try:
    return convert.smollm2_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def imported(path):
  return gguf.read(path)


@pytest.fixture(scope="module")
def reference(path):
  """transformers' model and tokenizer of the same GGUF file (float32)."""
  pytest.importorskip("accelerate", reason="transformers loads GGUF files only with accelerate")
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer

  d, name = os.path.split(path)
  model = AutoModelForCausalLM.from_pretrained(
    d, gguf_file=name, local_files_only=True, dtype=torch.float32
  )
  return model.eval(), AutoTokenizer.from_pretrained(d, gguf_file=name, local_files_only=True)


def test_config_of_the_file(imported):
  m = imported.model
  assert (m["n_layer"], m["d_model"], m["n_head"], m["n_kv_head"], m["d_ff"]) == (
    30,
    576,
    9,
    3,
    1536,
  )
  assert (m["position"], m["norm"], m["mlp"], m["tied_head"], m["use_bias"]) == (
    "rope",
    "rmsnorm",
    "swiglu",
    True,
    False,
  )
  assert m["rope_theta"] == 100000.0 and m["norm_eps"] == 1e-5 and m["vocab_size"] == 49152
  assert imported.info["quantization"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}


@pytest.mark.slow
def test_tokenizer_and_chat_template_match_transformers(imported, reference):
  ours, (_, theirs) = imported.tokenizer, reference
  for text in TEXTS:
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False), text
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == text
  conversations = [
    QUESTION,
    [
      {"role": "system", "content": "Be brief."},
      *QUESTION,
      {"role": "assistant", "content": "Paris."},
    ],
  ]
  for messages in conversations:
    for prompt in (False, True):
      text = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
      assert ours.render(messages, prompt) == text
      ids = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
      ids = ids["input_ids"] if hasattr(ids, "keys") else ids
      assert ours.encode_chat(messages, prompt) == list(ids)
  assert ours.end_turn_id == theirs.convert_tokens_to_ids("<|im_end|>")
  assert ours.assistant_header == tuple(theirs.encode("<|im_start|>assistant\n"))


@pytest.mark.slow
def test_number_signs_after_a_space_split_as_llama_cpp_does(imported, reference):
  """The one known difference from transformers' GGUF loader, which has no entry
  for tokenizer.ggml.pre = "smollm" and falls back to GPT-2's regex: llama.cpp
  (and SmolLM2's own tokenizer.json, Digits(individual_digits)) first isolates
  every \\p{N} character, so " ²" is 'Ġ' 'Â²', where GPT-2's regex keeps ' ²'
  together ('ĠÂ' '²'). The text decodes the same either way."""
  ours, (_, theirs) = imported.tokenizer, reference
  for text in (" ²", "a ½ b"):
    ids, ref = ours.encode(text), theirs.encode(text, add_special_tokens=False)
    assert "Ġ" in [ours.id_to_piece(i) for i in ids] and ids != ref
    assert ours.decode(ids) == theirs.decode(ref) == text


@pytest.mark.slow
def test_logits_match_transformers_and_greedy_answer_is_paris(imported, reference):
  import torch

  model_hf, _ = reference
  tok = imported.tokenizer
  model = model_lib.build(ml_collections.ConfigDict({"model": dict(imported.model, max_len=128)}))
  apply = jax.jit(model.apply)
  prompts = [
    tok.encode_chat(QUESTION, add_generation_prompt=True),
    tok.encode("The quick brown fox jumps over the lazy dog. In 2024, 12345"),
    tok.encode("def fibonacci(n):\n    if n < 2:\n        return n\n"),
  ]
  worst = 0.0
  for ids in prompts:
    ours = np.asarray(apply({"params": imported.params}, jnp.asarray([ids])))[0]
    with torch.no_grad():
      theirs = model_hf(torch.tensor([ids])).logits[0].numpy()
    worst = max(worst, float(np.abs(ours - theirs).max()))
    np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))
  # Both dequantise the same Q4_1 blocks to the same float32 weights; what
  # differs is float32 summation order over 30 layers (logits up to ~40).
  assert worst < 1e-3, worst
  answer = sampling.generate(
    model,
    imported.params,
    [prompts[0]],
    max_new_tokens=12,
    rng=jax.random.PRNGKey(0),
    eos_id=tok.end_turn_id,
    pad_id=tok.pad_id,
    sampling=sampling.GREEDY,
  )
  assert "Paris" in answer.texts(tok, cut_at=(tok.end_turn_id,))[0]


@pytest.mark.slow
def test_convert_and_chat_from_the_command_line(path, tmp_path):
  run = tmp_path / "smollm2"
  proc = run_entry_point("experiments.convert", f"--src={path}", f"--dst={run}", "--max_len=512")
  assert proc.returncode == 0, proc.stderr
  assert "llama family" in proc.stdout and (run / "tokenizer.json").is_file()
  proc = run_entry_point(
    "experiments.chat", f"--workdir={run}", "--prompt=What is the capital of France?"
  )
  assert proc.returncode == 0, proc.stderr
  assert "Paris" in proc.stdout and "<|im_end|>" not in proc.stdout
