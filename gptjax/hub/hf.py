"""Hugging Face model directories <-> gptjax's config.model, params and tokenizer.

A directory as transformers writes and reads it (`from_pretrained(dir)`,
local files only):

  config.json             GPT2Config (model_type "gpt2") or LlamaConfig ("llama")
  model.safetensors       float32 weights in the model's state-dict layout
                          (`gptjax.hub.families`), written with the
                          `safetensors` package's numpy API; a tied head is
                          not stored (tie_word_embeddings)
  generation_config.json  bos, pad, and the ids generation stops on (eos and
                          the end of an assistant turn)
  tokenizer files         a BPE tokenizer (`gptjax.tokenizer.BPETokenizer`):
                          tokenizer.json + tokenizer_config.json (with the chat
                          template), which transformers' AutoTokenizer reads.
                          gptjax's own sentencepiece tokenizer: tokenizer.model
                          is copied as it is and nothing else is written, since
                          transformers' sentencepiece tokenizers would add a
                          dummy prefix space and normalise text, which gptjax's
                          model does not (identity normalization, see
                          gptjax/tokenizer.py); read it with gptjax (or with the
                          sentencepiece library), not AutoTokenizer

Reading takes the same files, also bf16/fp16 weights (cast to float32) and
weights sharded as model-0000i-of-0000n.safetensors with their index. Other
model types, PyTorch .bin weights, RoPE scaling, partial biases or a head
dimension other than d_model / n_head are a ValueError naming the file.
"""

import json
import os

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from gptjax import runs, tokenizer as tokenizer_lib
from gptjax.hub import families

MODEL_TYPES = ("gpt2", "llama")
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
_GPT2_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # tanh-approximated GELU, as gptjax


def is_hf_dir(path: str) -> bool:
  """A directory with a config.json that names a model_type (transformers' mark)."""
  config = os.path.join(path, "config.json")
  if not os.path.isfile(config):
    return False
  try:
    with open(config) as f:
      return "model_type" in json.load(f)
  except (OSError, ValueError):
    return False


# ----------------------------------------------------------------------------
# Writing


def hf_config(model: dict, tokenizer) -> dict:
  """config.json of a gptjax `config.model` dict and its tokenizer."""
  family, s = families.family_of(model), families.switches(model)
  ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
  ids["pad_token_id"] = tokenizer.pad_id
  common = {"vocab_size": model["vocab_size"], "tie_word_embeddings": s["tied_head"], **ids}
  common.update(dtype="float32", use_cache=True)
  if family == "gpt2":
    dropout = model.get("dropout", 0.0)
    return {
      "architectures": ["GPT2LMHeadModel"],
      "model_type": "gpt2",
      "n_positions": model["max_len"],
      "n_embd": model["d_model"],
      "n_layer": model["n_layer"],
      "n_head": model["n_head"],
      "n_inner": model["d_ff"],
      "activation_function": "gelu_new",
      "layer_norm_epsilon": model.get("norm_eps", 1e-5),
      "resid_pdrop": dropout,
      "embd_pdrop": dropout,
      "attn_pdrop": dropout,
      "scale_attn_weights": True,
      **common,
    }
  theta = model.get("rope_theta", 10000.0)
  return {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": model["d_model"],
    "intermediate_size": model["d_ff"],
    "num_hidden_layers": model["n_layer"],
    "num_attention_heads": model["n_head"],
    "num_key_value_heads": s["n_kv_head"],
    "head_dim": model["d_model"] // model["n_head"],
    "max_position_embeddings": model["max_len"],
    "rms_norm_eps": model.get("norm_eps", 1e-5),
    "rope_parameters": {"rope_type": "default", "rope_theta": theta},
    "rope_theta": theta,  # transformers < 5 reads this key
    "hidden_act": "silu",
    "attention_bias": s["use_bias"],
    "mlp_bias": s["use_bias"],
    "attention_dropout": model.get("dropout", 0.0),
    **common,
  }


def write(m: families.Model, directory: str) -> list[str]:
  """Writes `m` as a Hugging Face directory (see the module docstring); returns
  the files written. `directory` must be new or empty; the files are written
  into a temporary sibling, renamed when complete."""
  config = hf_config(m.model, m.tokenizer)  # raises for a mixture, before any file
  with runs.new_directory(directory) as tmp:
    runs.write_json(os.path.join(tmp, "config.json"), config)
    tok = m.tokenizer
    stop = sorted({tok.eos_id, tok.end_turn_id})
    generation = {"bos_token_id": tok.bos_id, "pad_token_id": tok.pad_id}
    generation["eos_token_id"] = stop if len(stop) > 1 else stop[0]
    runs.write_json(os.path.join(tmp, "generation_config.json"), generation)
    save_file(families.to_hf(m.params, m.model), os.path.join(tmp, WEIGHTS), {"format": "pt"})
    tok.save_to(tmp)
  return sorted(os.listdir(directory))


# ----------------------------------------------------------------------------
# Reading


def model_section(config: dict, path: str) -> dict:
  """gptjax's `config.model` (float32) of a transformers config.json dict.

  Raises:
    ValueError: naming `path` for a model type or setting gptjax does not compute.
  """
  kind = config.get("model_type")
  if kind not in MODEL_TYPES:
    raise ValueError(
      f"{path}: model_type {kind!r} is not supported; gptjax reads {list(MODEL_TYPES)}"
    )
  base = {"dropout": 0.0, "dtype": "float32", "param_dtype": "float32"}
  if kind == "gpt2":
    act = config.get("activation_function", "gelu_new")
    if act not in _GPT2_GELUS:
      raise ValueError(f"{path}: activation_function {act!r}; gptjax computes {_GPT2_GELUS}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
      if config.get(flag):
        raise ValueError(f"{path}: {flag}=True is not supported")
    D = config.get("n_embd", 768)
    model = {
      "vocab_size": config["vocab_size"],
      "max_len": config.get("n_positions", 1024),
      "n_layer": config.get("n_layer", 12),
      "n_head": config.get("n_head", 12),
      "d_model": D,
      "d_ff": config.get("n_inner") or 4 * D,
      **base,
    }
    eps = config.get("layer_norm_epsilon", 1e-5)
    if eps != 1e-5:
      model["norm_eps"] = eps
    if not config.get("tie_word_embeddings", True):
      model["tied_head"] = False
    return model
  D, H = config["hidden_size"], config["num_attention_heads"]
  problems = []
  if config.get("hidden_act", "silu") != "silu":
    problems.append(f"hidden_act {config.get('hidden_act')!r} (SwiGLU needs 'silu')")
  if config.get("head_dim") not in (None, D // H) or D % H:
    problems.append(f"head_dim {config.get('head_dim')} (gptjax needs d_model / n_head)")
  rope = config.get("rope_parameters") or {}
  if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
    problems.append(f"RoPE scaling {rope or config.get('rope_scaling')}")
  if bool(config.get("attention_bias")) != bool(config.get("mlp_bias")):
    problems.append("attention_bias != mlp_bias (gptjax has one use_bias switch)")
  if problems:
    raise ValueError(f"{path}: not supported: {'; '.join(problems)}")
  return {
    "vocab_size": config["vocab_size"],
    "max_len": config.get("max_position_embeddings", 2048),
    "n_layer": config["num_hidden_layers"],
    "n_head": H,
    "d_model": D,
    "d_ff": config["intermediate_size"],
    **base,
    "position": "rope",
    "rope_theta": float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
    "norm": "rmsnorm",
    "norm_eps": float(config.get("rms_norm_eps", 1e-6)),
    "mlp": "swiglu",
    "n_kv_head": config.get("num_key_value_heads") or H,
    "tied_head": bool(config.get("tie_word_embeddings", False)),
    "use_bias": bool(config.get("attention_bias", False)),
  }


def read(directory: str) -> families.Model:
  """The model of a Hugging Face directory (see the module docstring)."""
  path = os.path.join(directory, "config.json")
  if not is_hf_dir(directory):
    raise ValueError(f"{directory} is not a Hugging Face model directory (no model_type in {path})")
  with open(path) as f:
    config = json.load(f)
  model = model_section(config, path)
  params = families.from_hf(read_weights(directory), model, source=directory)
  info = {
    "format": "hf",
    "source": os.path.abspath(directory),
    "architecture": config["model_type"],
    "name": config.get("_name_or_path", ""),
  }
  return families.Model(model, params, tokenizer_lib.load_from(directory), info)


def read_weights(directory: str) -> dict[str, np.ndarray]:
  """Every tensor of the directory's safetensors file(s), as float32 numpy arrays."""
  single, index = os.path.join(directory, WEIGHTS), os.path.join(directory, INDEX)
  if os.path.exists(single):
    files = [single]
  elif os.path.exists(index):
    with open(index) as f:
      files = [os.path.join(directory, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
  else:
    other = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
    found = [n for n in other if os.path.exists(os.path.join(directory, n))]
    raise FileNotFoundError(
      f"{directory} has no {WEIGHTS} (nor {INDEX})"
      + (f"; only {found}: gptjax reads safetensors weights" if found else "")
    )
  out = {}
  for file in files:
    out.update(_read_safetensors(file))
  return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A safetensors file's tensors as float32; bf16 (which numpy lacks) through ml_dtypes."""
  out, low = {}, []
  with safe_open(path, framework="np") as f:
    for name in f.keys():
      try:
        out[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
      except TypeError:  # "data type 'bfloat16' not understood"
        low.append(name)
  if low:
    out.update(_read_raw(path, low))
  return out


def _read_raw(path: str, names: list[str]) -> dict[str, np.ndarray]:
  """Tensors `names` of a safetensors file read from its header and bytes (for
  dtypes numpy has no name for): 8-byte header length, JSON header, data."""
  dtypes = {"BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn}
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
  out = {}
  for name in names:
    h = header[name]
    if h["dtype"] not in dtypes:
      raise ValueError(f"{path}: tensor {name} has dtype {h['dtype']}, which gptjax does not read")
    start, end = h["data_offsets"]
    x = np.frombuffer(data[start:end].tobytes(), dtype=dtypes[h["dtype"]])
    out[name] = x.reshape(h["shape"]).astype(np.float32)
  return out
