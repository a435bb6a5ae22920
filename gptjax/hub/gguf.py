"""A llama.cpp GGUF file -> gptjax's config.model, float32 params and tokenizer.

GGUF holds metadata (hyperparameters under `<architecture>.*`, the tokenizer
under `tokenizer.*`) and tensors, most of them quantized in blocks (Q4_1,
Q8_0, ...). Reading one:

  architecture  only "llama" (Llama 1-3, SmolLM, Mistral-style models): RoPE,
                RMSNorm, SwiGLU, grouped-query attention, no biases
  tensors       dequantized to float32 by the `gguf` package's `dequantize`;
                numpy's shape is [out, in], as a torch Linear weight, so they
                are renamed to LlamaForCausalLM's names and share its mapping
                (`gptjax.hub.families`)
  Q and K       llama.cpp's converter permutes the rows of attn_q and attn_k
                within each head, for its rotary convention that pairs
                neighbouring dimensions (2i, 2i+1); gptjax (as transformers)
                pairs i with i + K/2 ("rotate_half"), so the rows are put back
  tokenizer     tokenizer.ggml.model "gpt2" (byte-level BPE): tokens, merges
                and token types become a `tokenizers` tokenizer with the
                pre-tokenizer named by tokenizer.ggml.pre; control tokens
                (type 3) are special; the chat template is
                tokenizer.chat_template. Sentencepiece vocabularies ("llama")
                are not read.

Anything else (another architecture, RoPE scaling, a tensor not in the
layout, a quantization the `gguf` package cannot dequantize) is a ValueError
naming the file and what is unsupported.
"""

import os

import numpy as np
from gguf import GGUFReader, dequantize
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from gptjax import tokenizer as tokenizer_lib
from gptjax.hub import families

MAGIC = b"GGUF"
ARCHITECTURES = ("llama",)
TOKENIZER_MODELS = ("gpt2",)

# GGUF tensor names -> LlamaForCausalLM's (blk.{i}. -> model.layers.{i}.).
_GLOBAL_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
  "attn_norm": "input_layernorm",
  "attn_q": "self_attn.q_proj",
  "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj",
  "attn_output": "self_attn.o_proj",
  "ffn_norm": "post_attention_layernorm",
  "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj",
  "ffn_down": "mlp.down_proj",
}

# tokenizer.ggml.pre -> how text is split before BPE (llama.cpp's table, for
# the kinds read here). 'digits': each digit alone, then GPT-2's regex
# (SmolLM's and StarCoder's tokenizer.json).
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS = {
  "default": "gpt2",
  "gpt2": "gpt2",
  "smollm": "digits",
  "starcoder": "digits",
  "refact": "digits",
  "codeshell": "digits",
  "llama-bpe": "llama3",
  "llama3": "llama3",
  "llama-v3": "llama3",
  "smaug-bpe": "llama3",
  "dbrx": "llama3",
}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


def check_file(path: str) -> None:
  """Raises FileNotFoundError / ValueError unless `path` is a file starting with GGUF's magic."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such GGUF file")
  with open(path, "rb") as f:
    head = f.read(4)
  if head != MAGIC:
    raise ValueError(f"{path} is not a GGUF file: it starts with {head!r}, not {MAGIC!r}")


def read(path: str) -> families.Model:
  """The model in GGUF file `path` (see the module docstring); its context is the
  file's context_length (`families.with_max_len` changes it)."""
  check_file(path)
  reader = GGUFReader(path)
  meta = _Metadata(reader, path)
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise ValueError(
      f"{path}: architecture {arch!r} is not supported; gptjax reads {list(ARCHITECTURES)} "
      "GGUF files (Llama, SmolLM, Mistral-style decoders)"
    )
  model = model_section(meta, reader)
  tensors, quant = _tensors(reader, model, path)
  params = families.from_hf(tensors, model, source=path)
  info = {
    "format": "gguf",
    "source": os.path.abspath(path),
    "architecture": arch,
    "name": meta.get("general.name", ""),
    "quantization": quant,
  }
  return families.Model(model, params, tokenizer(meta), info)


class _Metadata:
  """The key-value fields of a GGUF file, with errors that name the file and key."""

  def __init__(self, reader, path: str):
    self.fields, self.path = reader.fields, path

  def get(self, key: str, default=None):
    if key not in self.fields:
      return default
    return self.fields[key].contents()

  def require(self, key: str):
    if key not in self.fields:
      raise ValueError(f"{self.path}: GGUF metadata has no {key}")
    return self.fields[key].contents()


def _float(x) -> float:
  """A float32 metadata value as the shortest decimal that round-trips it (1e-05, not 9.99e-06)."""
  return float(str(np.float32(x)))


def model_section(meta: _Metadata, reader) -> dict:
  """config.model of a llama-architecture file (float32 parameters and activations)."""
  p = "llama."
  D, H = int(meta.require(p + "embedding_length")), int(meta.require(p + "attention.head_count"))
  G = int(meta.get(p + "attention.head_count_kv", H))
  K = D // H
  rope_dim = int(meta.get(p + "rope.dimension_count", K))
  scaling = meta.get(p + "rope.scaling.type", "none")
  unsupported = []
  if rope_dim != K:
    unsupported.append(f"{p}rope.dimension_count={rope_dim} (partial rotary; K = {K})")
  if scaling not in ("none", None):
    unsupported.append(f"{p}rope.scaling.type={scaling!r}")
  if meta.get(p + "expert_count"):
    unsupported.append(f"{p}expert_count={meta.get(p + 'expert_count')} (mixture of experts)")
  if D % H:
    unsupported.append(f"d_model {D} is not a multiple of {H} heads")
  if any(t.name == "rope_freqs.weight" for t in reader.tensors):
    unsupported.append("rope_freqs.weight (Llama 3.1's RoPE scaling)")
  if unsupported:
    raise ValueError(f"{meta.path}: not supported: {'; '.join(unsupported)}")
  names = {t.name for t in reader.tensors}
  vocab = meta.get(p + "vocab_size") or len(meta.require("tokenizer.ggml.tokens"))
  context = int(meta.require(p + "context_length"))
  return {
    "vocab_size": int(vocab),
    "max_len": context,
    "n_layer": int(meta.require(p + "block_count")),
    "n_head": H,
    "d_model": D,
    "d_ff": int(meta.require(p + "feed_forward_length")),
    "dropout": 0.0,
    "dtype": "float32",
    "param_dtype": "float32",
    "position": "rope",
    "rope_theta": _float(meta.get(p + "rope.freq_base", 10000.0)),
    "norm": "rmsnorm",
    "norm_eps": _float(meta.require(p + "attention.layer_norm_rms_epsilon")),
    "mlp": "swiglu",
    "n_kv_head": G,
    "tied_head": "output.weight" not in names,
    "use_bias": "blk.0.attn_q.bias" in names,
  }


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's row permutation of a Q or K weight [n_head * K, D].

  llama.cpp's converter writes head h's rows (c, j) -- half c in {0, 1} of
  the head dim, index j < K/2 in it -- at row (j, c), so that rotary pairs are
  neighbours; this reads row (j, c) back into (c, j).
  """
  rows, cols = w.shape
  K = rows // n_head
  return w.reshape(n_head, K // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _tensors(reader, model: dict, path: str) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """({LlamaForCausalLM name: float32 [out, in] array}, {quantization type: tensors})."""
  H, G = model["n_head"], model["n_kv_head"]
  out, quant = {}, {}
  for t in reader.tensors:
    name = _hf_name(t.name, path)
    kind = t.tensor_type.name
    try:
      w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    except (NotImplementedError, KeyError, ValueError) as e:
      raise ValueError(
        f"{path}: tensor {t.name} is stored as {kind}, which the gguf package cannot "
        f"dequantize ({e})"
      ) from None
    want = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first
    w = w.reshape(want)
    if t.name.endswith("attn_q.weight"):
      w = unpermute_rows(w, H)
    elif t.name.endswith("attn_k.weight"):
      w = unpermute_rows(w, G)
    elif t.name.endswith(("attn_q.bias", "attn_k.bias")):
      w = unpermute_rows(w[:, None], H if "attn_q" in t.name else G)[:, 0]
    out[name] = w
    quant[kind] = quant.get(kind, 0) + 1
  return out, dict(sorted(quant.items()))


def _hf_name(name: str, path: str) -> str:
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  parts = name.split(".")  # blk.{i}.{kind}.{weight|bias}
  if len(parts) == 4 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
    return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
  raise ValueError(f"{path}: tensor {name!r} is not part of the llama layout gptjax reads")


# ----------------------------------------------------------------------------
# The tokenizer


def tokenizer(meta: _Metadata) -> tokenizer_lib.BPETokenizer:
  """The file's byte-level BPE tokenizer and chat template."""
  kind = meta.get("tokenizer.ggml.model")
  if kind not in TOKENIZER_MODELS:
    raise ValueError(
      f"{meta.path}: tokenizer.ggml.model={kind!r} is not supported; gptjax builds "
      f"{list(TOKENIZER_MODELS)} (byte-level BPE) tokenizers from GGUF files"
    )
  pre = meta.get("tokenizer.ggml.pre", "default")
  if pre not in PRE_TOKENIZERS:
    raise ValueError(
      f"{meta.path}: tokenizer.ggml.pre={pre!r} is not supported; known: {sorted(PRE_TOKENIZERS)}"
    )
  tokens = list(meta.require("tokenizer.ggml.tokens"))
  types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
  merges = list(meta.require("tokenizer.ggml.merges"))
  tok_json = byte_level_bpe(tokens, merges, types, PRE_TOKENIZERS[pre])

  def spelling(key):
    i = meta.get(f"tokenizer.ggml.{key}_token_id")
    return None if i is None else tokens[int(i)]

  config = {
    "bos_token": spelling("bos"),
    "eos_token": spelling("eos"),
    "unk_token": spelling("unknown"),
    "pad_token": spelling("padding"),
    "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
    "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    "clean_up_tokenization_spaces": False,
  }
  config = {k: v for k, v in config.items() if v is not None}
  template = meta.get("tokenizer.chat_template")
  if template:
    config["chat_template"] = template
  return tokenizer_lib.BPETokenizer(tok_json, config, source=meta.path)


def byte_level_bpe(tokens: list[str], merges: list[str], types: list[int], split: str) -> str:
  """A `tokenizers` byte-level BPE (as JSON) from a GGUF vocabulary.

  split: 'gpt2' (GPT-2's regex), 'digits' (each digit alone, then GPT-2's
  regex) or 'llama3' (Llama 3's regex). Control tokens (type 3) become
  special added tokens (never merged into, dropped by decode), user-defined
  ones (type 4) added tokens; a control token spelled outside the byte-level
  alphabet is a llama.cpp mislabel and stays an ordinary entry.
  """
  bpe = models.BPE(
    vocab={t: i for i, t in enumerate(tokens)},
    merges=[tuple(m.split(" ", 1)) for m in merges],
    fuse_unk=False,
    byte_fallback=False,
  )
  tok = Tokenizer(bpe)
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split != "llama3")
  tok.pre_tokenizer = {
    "gpt2": byte_level,
    "digits": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]),
    "llama3": pre_tokenizers.Sequence(
      [pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"), byte_level]
    ),
  }[split]
  tok.decoder = decoders.ByteLevel()
  alphabet = set(pre_tokenizers.ByteLevel.alphabet())
  control = [t for t, k in zip(tokens, types) if k == _CONTROL and set(t) <= alphabet]
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
  user = [t for t, k in zip(tokens, types) if k == _USER_DEFINED]
  tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
  return tok.to_str()
