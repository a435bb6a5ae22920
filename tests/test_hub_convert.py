"""Checkpoint converters on tiny random models (no released weights needed).

transformers is the independent implementation: a model exported to a Hugging
Face directory must compute gptjax's logits there, and a GGUF file written
the way llama.cpp writes one (Q and K rows permuted) must load into both to
the same logits. Conversions through files are exact: import(export(p)) == p.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import run_entry_point
from test_tokenizer_interface import CHATML, CONTROL, MERGES, tiny_bpe

from gptjax import chat as chat_lib, model as model_lib, runs, sampling
from gptjax.hub import convert, families, gguf, hf, workdir

V = 3 + 256 + len(MERGES)  # tiny_bpe's vocabulary: a GGUF's token list sizes the embedding
BASE = {
  "vocab_size": V,
  "max_len": 16,
  "n_layer": 2,
  "n_head": 4,
  "d_model": 32,
  "d_ff": 48,
  "dropout": 0.0,
  "dtype": "float32",
  "param_dtype": "float32",
}
GPT2 = dict(BASE)
LLAMA = dict(
  BASE,
  position="rope",
  rope_theta=500.0,
  norm="rmsnorm",
  norm_eps=1e-6,
  mlp="swiglu",
  n_kv_head=2,
  tied_head=False,
  use_bias=False,
)
LLAMAS = {
  "gqa_untied": LLAMA,
  "mha_tied": dict(LLAMA, n_kv_head=4, tied_head=True),
  "mqa_bias": dict(LLAMA, n_kv_head=1, use_bias=True),
}


def random_model(model: dict, seed: int = 0) -> families.Model:
  """Random params of `model` (std 0.5, so logits are far from zero) and the tiny BPE."""
  module = model_lib.build(ml_collections.ConfigDict({"model": model}))
  tokens = jnp.zeros((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.PRNGKey(0), tokens)))
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(
    lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32), shapes["params"]
  )
  return families.Model(dict(model), params, tiny_bpe(), {"format": "test"})


def gptjax_logits(m: families.Model, tokens: np.ndarray) -> np.ndarray:
  module = model_lib.build(ml_collections.ConfigDict({"model": m.model}))
  return np.asarray(module.apply({"params": m.params}, jnp.asarray(tokens)))


def torch_logits(hf_model, tokens: np.ndarray) -> np.ndarray:
  import torch

  with torch.no_grad():
    return hf_model(torch.as_tensor(tokens)).logits.numpy()


def assert_same_tree(a, b):
  flat_a, tree_a = jax.tree_util.tree_flatten(a)
  flat_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


TOKENS = np.random.default_rng(1).integers(0, V, (2, 12))


# ----------------------------------------------------------------------------
# Export -> transformers


@pytest.mark.parametrize("name", ["gpt2", *LLAMAS])
def test_export_computes_the_same_logits_in_transformers(name, tmp_path):
  import torch
  from transformers import AutoModelForCausalLM

  m = random_model(GPT2 if name == "gpt2" else LLAMAS[name])
  files = hf.write(m, str(tmp_path))
  assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
  ref = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True, dtype=torch.float32)
  want = "GPT2LMHeadModel" if name == "gpt2" else "LlamaForCausalLM"
  assert type(ref).__name__ == want
  ours, theirs = gptjax_logits(m, TOKENS), torch_logits(ref.eval(), TOKENS)
  scale = np.abs(theirs).max()
  assert scale > 1.0  # random weights of std 0.5: logits far from zero
  assert np.abs(ours - theirs).max() <= 1e-5 * scale


def test_exported_tokenizer_is_read_by_transformers(tmp_path):
  from transformers import AutoTokenizer

  m = random_model(LLAMA)
  hf.write(m, str(tmp_path))
  theirs = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
  messages = [{"role": "user", "content": "the cat in the hat"}]
  ids = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
  assert list(ids) == m.tokenizer.encode_chat(messages, add_generation_prompt=True)
  config = json.loads((tmp_path / "generation_config.json").read_text())
  assert config["eos_token_id"] == m.tokenizer.end_turn_id


# ----------------------------------------------------------------------------
# Exact round trips


@pytest.mark.parametrize("name", ["gpt2", *LLAMAS])
def test_import_of_export_is_the_identity(name, tmp_path):
  m = random_model(GPT2 if name == "gpt2" else LLAMAS[name])
  assert_same_tree(families.from_hf(families.to_hf(m.params, m.model), m.model), m.params)
  hf.write(m, str(tmp_path / "hf"))
  back = hf.read(str(tmp_path / "hf"))
  assert back.model == m.model
  assert_same_tree(back.params, m.params)
  assert back.tokenizer.fingerprint == m.tokenizer.fingerprint


@pytest.mark.parametrize("name", ["gpt2", "gqa_untied"])
def test_reads_what_transformers_saves_also_in_bfloat16(name, tmp_path):
  import ml_dtypes
  import torch
  from transformers import AutoModelForCausalLM

  m = random_model(GPT2 if name == "gpt2" else LLAMAS[name])
  hf.write(m, str(tmp_path / "ours"))
  ref = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.bfloat16)
  ref.save_pretrained(tmp_path / "theirs")  # transformers' own names, config and bf16 tensors
  m.tokenizer.save_to(tmp_path / "theirs")
  back = hf.read(str(tmp_path / "theirs"))
  assert back.model == m.model
  rounded = jax.tree_util.tree_map(
    lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), m.params
  )
  assert_same_tree(back.params, rounded)


@pytest.mark.slow  # ~4 s: the fast subset stays under 5 minutes
def test_workdir_is_a_run_that_load_run_and_chat_read(tmp_path):
  m = families.with_max_len(random_model(LLAMA), 128)  # room for the chat template
  files = workdir.write(m, str(tmp_path / "run"))
  assert files == ["checkpoints", "config.json", "tokenizer.json", "tokenizer_config.json"]
  run = runs.load_run(str(tmp_path / "run"))
  assert run.step == 0 and run.config.preset == "converted"
  assert run.config.model.to_dict() == m.model
  assert_same_tree(jax.device_get(run.params), m.params)
  assert run.tokenizer.fingerprint == m.tokenizer.fingerprint
  chat = chat_lib.Chat(run, sampling.GREEDY, max_new_tokens=4)
  assert isinstance(chat.reply("the cat", write=lambda _: None), str)
  assert chat.messages[-1]["role"] == "assistant"
  # and back out: gptjax run -> Hugging Face -> gptjax run, exactly
  done = convert.convert(str(tmp_path / "run"), str(tmp_path / "hf"), log=lambda _: None)
  assert (done["source_kind"], done["destination_kind"]) == ("gptjax", "hf")
  done = convert.convert(str(tmp_path / "hf"), str(tmp_path / "again"), log=lambda _: None)
  assert (done["source_kind"], done["destination_kind"]) == ("hf", "gptjax")
  assert_same_tree(workdir.read(str(tmp_path / "again")).params, m.params)


def test_sentencepiece_run_exports_its_tokenizer_model(tiny_tokenizer, tmp_path):
  m = families.Model(dict(GPT2), random_model(GPT2).params, tiny_tokenizer, {})
  files = hf.write(m, str(tmp_path))
  assert "tokenizer.model" in files and "tokenizer.json" not in files
  assert hf.read(str(tmp_path)).tokenizer.fingerprint == tiny_tokenizer.fingerprint


def test_max_len_cuts_learned_positions_and_keeps_rope(tmp_path):
  gpt2 = families.with_max_len(random_model(GPT2), 8)
  assert gpt2.params["trunk"]["wpe"].shape == (8, 32) and gpt2.model["max_len"] == 8
  np.testing.assert_array_equal(
    gptjax_logits(gpt2, TOKENS[:, :8]), gptjax_logits(random_model(GPT2), TOKENS[:, :8])
  )
  assert families.with_max_len(random_model(LLAMA), 64).model["max_len"] == 64
  with pytest.raises(ValueError, match="learned positions"):
    families.with_max_len(random_model(GPT2), 17)


# ----------------------------------------------------------------------------
# GGUF


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's convert_hf_to_gguf permutation of a Q or K weight [n_head * K, D]."""
  rows, cols = w.shape
  return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def write_gguf(path, m: families.Model, cast: dict | None = None) -> None:
  """`m` as llama.cpp writes a llama GGUF (float32 tensors, permuted Q/K, BPE vocabulary);
  `cast` stores the named GGUF tensors in another numpy dtype."""
  from gguf import GGUFWriter
  from tokenizers import pre_tokenizers

  c = m.model
  w = GGUFWriter(str(path), "llama")
  w.add_block_count(c["n_layer"])
  w.add_context_length(c["max_len"])
  w.add_embedding_length(c["d_model"])
  w.add_feed_forward_length(c["d_ff"])
  w.add_head_count(c["n_head"])
  w.add_head_count_kv(c["n_kv_head"])
  w.add_rope_freq_base(c["rope_theta"])
  w.add_layer_norm_rms_eps(c["norm_eps"])
  w.add_rope_dimension_count(c["d_model"] // c["n_head"])
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  tokens = CONTROL + alphabet + ["".join(m.split(" ")) for m in MERGES]
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("smollm")
  w.add_token_list(tokens)
  w.add_token_types([3] * len(CONTROL) + [1] * (len(tokens) - len(CONTROL)))
  w.add_token_merges(MERGES)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_chat_template(CHATML)
  names = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
  }
  names["lm_head.weight"] = "output.weight"
  blocks = {v: k for k, v in gguf._BLOCK_NAMES.items()}
  for name, x in families.to_hf(m.params, m.model).items():
    if name in names:
      name = names[name]
    else:
      _, _, i, *kind, leaf = name.split(".")
      kind = ".".join(kind)
      if kind in ("self_attn.q_proj", "self_attn.k_proj"):
        n = c["n_head"] if kind == "self_attn.q_proj" else c["n_kv_head"]
        x = llama_cpp_permute(x if x.ndim == 2 else x[:, None], n).reshape(x.shape)
      name = f"blk.{i}.{blocks[kind]}.{leaf}"
    w.add_tensor(name, np.ascontiguousarray(x, dtype=(cast or {}).get(name, np.float32)))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.mark.parametrize("name", ["gqa_untied", "mha_tied"])
def test_gguf_import_is_exact_and_matches_transformers(name, tmp_path):
  pytest.importorskip("accelerate", reason="transformers loads GGUF files only with accelerate")
  import torch
  from transformers import AutoModelForCausalLM

  m = random_model(LLAMAS[name])
  write_gguf(tmp_path / "tiny.gguf", m)
  got = gguf.read(str(tmp_path / "tiny.gguf"))
  assert got.model == m.model
  assert_same_tree(got.params, m.params)  # float32 tensors: the permutation undone exactly
  ref = AutoModelForCausalLM.from_pretrained(
    tmp_path, gguf_file="tiny.gguf", local_files_only=True, dtype=torch.float32
  )
  ours, theirs = gptjax_logits(got, TOKENS), torch_logits(ref.eval(), TOKENS)
  assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_gguf_tokenizer_matches_transformers(tmp_path):
  from transformers import AutoTokenizer

  write_gguf(tmp_path / "tiny.gguf", random_model(LLAMA))
  ours = gguf.read(str(tmp_path / "tiny.gguf")).tokenizer
  theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf", local_files_only=True)
  for text in ["the cat sat in the hat", "  x\n\n\ty = 'as'  ", "中文 🎉 ½", "", "99 + 1"]:
    ids = ours.encode(text)
    assert ids == theirs.encode(text, add_special_tokens=False), text
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True) == text
  messages = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "as in"}]
  for prompt in (False, True):
    assert ours.render(messages, prompt) == theirs.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=prompt
    )


# ----------------------------------------------------------------------------
# Clear errors


def test_errors_name_the_file_and_the_problem(tmp_path):
  text = tmp_path / "model.gguf"
  text.write_text("hello")
  with pytest.raises(ValueError, match=r"model.gguf is not a GGUF file"):
    convert.kind_of(str(text))
  with pytest.raises(FileNotFoundError, match="no such"):
    convert.kind_of(str(tmp_path / "absent"))
  neither = tmp_path / "neither"
  neither.mkdir()
  (neither / "notes.txt").write_text("x")
  with pytest.raises(ValueError, match="neither a gptjax run .* nor a Hugging Face"):
    convert.kind_of(str(neither))
  with pytest.raises(ValueError, match="not a Hugging Face model directory"):
    hf.read(str(neither))
  bert = tmp_path / "bert"
  bert.mkdir()
  (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
  with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
    convert.load(str(bert))
  with pytest.raises(FileExistsError, match="not empty"):
    convert.convert(str(bert), str(neither), log=lambda _: None)
  mixed = random_model(dict(GPT2, position="rope"))
  with pytest.raises(ValueError, match="mix the families"):
    hf.write(mixed, str(tmp_path / "mixed"))


def test_unsupported_gguf_architecture_and_quantization(tmp_path):
  from gguf import GGUFWriter

  w = GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
  w.add_block_count(1)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match="falcon.gguf: architecture 'falcon' is not supported"):
    convert.load(str(tmp_path / "falcon.gguf"))
  f64 = tmp_path / "f64.gguf"
  write_gguf(f64, random_model(LLAMA), cast={"output_norm.weight": np.float64})
  with pytest.raises(ValueError, match="f64.gguf: tensor output_norm.weight is stored as F64"):
    convert.load(str(f64))


# ----------------------------------------------------------------------------
# The command line


@pytest.mark.slow
def test_convert_then_chat_from_the_command_line(tmp_path):
  write_gguf(tmp_path / "tiny.gguf", random_model(LLAMA))
  proc = run_entry_point(
    "experiments.convert",
    f"--src={tmp_path / 'tiny.gguf'}",
    f"--dst={tmp_path / 'run'}",
    "--max_len=128",  # the file's 16 tokens hold no chat prompt
  )
  assert proc.returncode == 0, proc.stderr
  assert "read gguf" in proc.stdout and "wrote gptjax" in proc.stdout
  proc = run_entry_point(
    "experiments.chat", f"--workdir={tmp_path / 'run'}", "--prompt=the cat", "--max_new_tokens=4"
  )
  assert proc.returncode == 0, proc.stderr
  proc = run_entry_point("experiments.convert", f"--src={tmp_path}", f"--dst={tmp_path / 'x'}")
  assert proc.returncode != 0 and "neither a gptjax run" in proc.stderr
