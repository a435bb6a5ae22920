"""The two model families and their weights in Hugging Face's layout.

gptjax's `config.model` switches (see `gptjax.model`) describe many mixtures;
two of them are families a released checkpoint can have:

  gpt2   learned positions, LayerNorm, GELU (tanh), biases, fused q/k/v:
         transformers' GPT2LMHeadModel (Conv1D weights are [in, out];
         c_attn [D, 3D] holds q, k, v side by side, heads inside each)
  llama  RoPE (rotate_half), RMSNorm, SwiGLU, no biases (or all of them),
         grouped-query attention: LlamaForCausalLM (Linear weights are
         [out, in]; q_proj [H*K, D], k_proj and v_proj [G*K, D])

Either may tie its head to the token embedding. Tensors are numpy float32,
named as in the model's state dict (with the `transformer.` / `model.`
prefix); `from_hf` also reads names without it, as older files have them.
Every function is a pure rearrangement (reshape, transpose, stack), so
from_hf(to_hf(params)) == params bit for bit.
"""

import dataclasses
import json

import numpy as np

# Buffers some GPT-2 files carry beside the weights (the causal mask): not parameters.
_GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")


@dataclasses.dataclass
class Model:
  """A model in memory, whichever file it came from: config.model (a plain dict),
  float32 params (nested dicts of numpy arrays), its tokenizer, and `info` on
  the source (format, path, architecture, name, quantization)."""

  model: dict
  params: dict
  tokenizer: object  # gptjax.tokenizer.ChatTokenizer
  info: dict

  def summary(self) -> str:
    """One line on what it is, for logs."""
    m, s = self.model, switches(self.model)
    n = sum(np.size(x) for x in _leaves(self.params))
    quant = self.info.get("quantization")
    return (
      f"{self.info.get('name') or family_of(m)} ({family_of(m)} family): {n / 1e6:.1f}M params, "
      f"{m['n_layer']} layers, d_model {m['d_model']}, {m['n_head']} heads "
      f"({s['n_kv_head']} kv), vocab {m['vocab_size']}, context {m['max_len']}, "
      f"{'tied' if s['tied_head'] else 'untied'} head"
      + (f", tensors {json.dumps(quant)}" if quant else "")
    )


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def switches(model: dict) -> dict:
  """The architecture switches of a `config.model` dict, absent ones at their GPT-2 defaults."""
  return {
    "position": model.get("position", "learned"),
    "norm": model.get("norm", "layernorm"),
    "mlp": model.get("mlp", "gelu"),
    "n_kv_head": model.get("n_kv_head") or model["n_head"],
    "tied_head": model.get("tied_head", True),
    "use_bias": model.get("use_bias", True),
  }


def family_of(model: dict) -> str:
  """'gpt2' or 'llama': the family of a `config.model` dict.

  Raises:
    ValueError: for a mixture neither transformers class computes (e.g. RoPE
      with LayerNorm), naming the switches.
  """
  s = switches(model)
  if (s["position"], s["norm"], s["mlp"], s["use_bias"]) == ("learned", "layernorm", "gelu", True):
    if s["n_kv_head"] == model["n_head"]:
      return "gpt2"
  if (s["position"], s["norm"], s["mlp"]) == ("rope", "rmsnorm", "swiglu"):
    return "llama"
  raise ValueError(
    f"config.model switches {s} mix the families: Hugging Face has a class only for "
    "GPT-2 (learned, layernorm, gelu, use_bias, n_kv_head = n_head) and Llama "
    "(rope, rmsnorm, swiglu)"
  )


def _dims(model: dict) -> tuple[int, int, int, int, int]:
  """(D, H, G, K, F) of a `config.model` dict."""
  D, H = model["d_model"], model["n_head"]
  return D, H, switches(model)["n_kv_head"], D // H, model["d_ff"]


def _f32(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


# ----------------------------------------------------------------------------
# gptjax -> Hugging Face


def to_hf(params, model: dict) -> dict[str, np.ndarray]:
  """gptjax params -> the state dict of GPT2LMHeadModel or LlamaForCausalLM
  (a tied head's lm_head.weight is left out, as transformers saves it)."""
  raw = {"gpt2": _gpt2_to_hf, "llama": _llama_to_hf}[family_of(model)](params, model)
  return {k: _f32(v) for k, v in raw.items()}


def _gpt2_to_hf(params, model: dict) -> dict[str, np.ndarray]:
  D, H, _, K, F = _dims(model)
  t = params["trunk"]
  out = {"transformer.wte.weight": t["wte"], "transformer.wpe.weight": t["wpe"]}
  for i in range(model["n_layer"]):
    b, p = t[f"block_{i}"], f"transformer.h.{i}."
    attn, mlp = b["attn"], b["mlp"]
    out.update(
      {
        p + "ln_1.weight": b["ln_1"]["scale"],
        p + "ln_1.bias": b["ln_1"]["bias"],
        p + "attn.c_attn.weight": np.reshape(attn["w_qkv"], (D, 3 * H * K)),  # [D, (3 H K)]
        p + "attn.c_attn.bias": np.reshape(attn["b_qkv"], (3 * H * K,)),
        p + "attn.c_proj.weight": np.reshape(attn["w_out"], (H * K, D)),  # [(H K), D]
        p + "attn.c_proj.bias": attn["b_out"],
        p + "ln_2.weight": b["ln_2"]["scale"],
        p + "ln_2.bias": b["ln_2"]["bias"],
        p + "mlp.c_fc.weight": mlp["w_fc"],  # [D, F]
        p + "mlp.c_fc.bias": mlp["b_fc"],
        p + "mlp.c_proj.weight": mlp["w_proj"],  # [F, D]
        p + "mlp.c_proj.bias": mlp["b_proj"],
      }
    )
  out["transformer.ln_f.weight"] = t["ln_f"]["scale"]
  out["transformer.ln_f.bias"] = t["ln_f"]["bias"]
  if not switches(model)["tied_head"]:
    out["lm_head.weight"] = np.transpose(params["w_head"])  # [V, D]
  return out


def _llama_to_hf(params, model: dict) -> dict[str, np.ndarray]:
  D, H, G, K, F = _dims(model)
  bias = switches(model)["use_bias"]
  t = params["trunk"]
  out = {"model.embed_tokens.weight": t["wte"]}
  for i in range(model["n_layer"]):
    b, p = t[f"block_{i}"], f"model.layers.{i}."
    attn, mlp = b["attn"], b["mlp"]
    if G == H:
      w_q, w_k, w_v = (np.asarray(attn["w_qkv"])[:, c] for c in range(3))  # [D, H, K] each
    else:
      w_q, (w_k, w_v) = attn["w_q"], (np.asarray(attn["w_kv"])[:, c] for c in range(2))
    for name, w in (("q", w_q), ("k", w_k), ("v", w_v)):
      out[p + f"self_attn.{name}_proj.weight"] = np.reshape(w, (D, -1)).T  # [(N K), D]
    out[p + "self_attn.o_proj.weight"] = np.reshape(attn["w_out"], (H * K, D)).T  # [D, (H K)]
    w_gate_up = np.asarray(mlp["w_gate_up"])  # [D, 2, F]
    out[p + "mlp.gate_proj.weight"] = w_gate_up[:, 0].T  # [F, D]
    out[p + "mlp.up_proj.weight"] = w_gate_up[:, 1].T
    out[p + "mlp.down_proj.weight"] = np.transpose(mlp["w_proj"])  # [D, F]
    out[p + "input_layernorm.weight"] = b["ln_1"]["scale"]
    out[p + "post_attention_layernorm.weight"] = b["ln_2"]["scale"]
    if bias:
      if G == H:
        b_q, b_k, b_v = np.asarray(attn["b_qkv"])  # [H, K] each
      else:
        b_q, (b_k, b_v) = attn["b_q"], np.asarray(attn["b_kv"])
      for name, x in (("q", b_q), ("k", b_k), ("v", b_v)):
        out[p + f"self_attn.{name}_proj.bias"] = np.reshape(x, (-1,))
      out[p + "self_attn.o_proj.bias"] = attn["b_out"]
      out[p + "mlp.gate_proj.bias"], out[p + "mlp.up_proj.bias"] = np.asarray(mlp["b_gate_up"])
      out[p + "mlp.down_proj.bias"] = mlp["b_proj"]
  out["model.norm.weight"] = t["ln_f"]["scale"]
  if not switches(model)["tied_head"]:
    out["lm_head.weight"] = np.transpose(params["w_head"])  # [V, D]
  return out


# ----------------------------------------------------------------------------
# Hugging Face -> gptjax


def from_hf(tensors: dict[str, np.ndarray], model: dict, source: str = "the checkpoint") -> dict:
  """A state dict of the family of `model` -> gptjax params (nested dicts, float32).

  Raises:
    ValueError: naming `source` and the tensors that are missing, unexpected,
      or of the wrong shape.
  """
  family = family_of(model)
  prefix = "transformer." if family == "gpt2" else "model."
  named = {}
  for name, x in tensors.items():
    if family == "gpt2" and name.endswith(_GPT2_BUFFERS):
      continue
    if not name.startswith(prefix) and name != "lm_head.weight":
      name = prefix + name
    named[name] = x
  if switches(model)["tied_head"]:
    named.pop("lm_head.weight", None)  # some files store the tied copy
  raw = {"gpt2": _gpt2_to_hf, "llama": _llama_to_hf}[family](_shapes(model), model)
  want = {k: tuple(np.shape(v)) for k, v in raw.items()}
  missing = sorted(set(want) - set(named))
  unexpected = sorted(set(named) - set(want))
  wrong = [
    f"{k} {tuple(named[k].shape)} (want {want[k]})"
    for k in sorted(want)
    if k in named and tuple(named[k].shape) != want[k]
  ]
  if missing or unexpected or wrong:
    raise ValueError(
      f"{source} does not match its {family} config: "
      + "; ".join(
        f"{what}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if names
      )
    )
  named = {k: _f32(v) for k, v in named.items()}
  return {"gpt2": _gpt2_from_hf, "llama": _llama_from_hf}[family](named, model)


def _shapes(model: dict) -> dict:
  """Zero-strided stand-ins of every gptjax param (no memory): `to_hf`'s names and shapes."""
  D, H, G, K, F = _dims(model)
  V, s = model["vocab_size"], switches(model)
  z = lambda *shape: np.broadcast_to(np.float32(0), shape)
  norm = lambda: {"scale": z(D), "bias": z(D)} if s["norm"] == "layernorm" else {"scale": z(D)}
  trunk = {"wte": z(V, D), "ln_f": norm()}
  if s["position"] == "learned":
    trunk["wpe"] = z(model["max_len"], D)
  for i in range(model["n_layer"]):
    if G == H:
      attn = {"w_qkv": z(D, 3, H, K), "b_qkv": z(3, H, K)}
    else:
      attn = {"w_q": z(D, H, K), "w_kv": z(D, 2, G, K), "b_q": z(H, K), "b_kv": z(2, G, K)}
    attn.update(w_out=z(H, K, D), b_out=z(D))
    if s["mlp"] == "gelu":
      mlp = {"w_fc": z(D, F), "b_fc": z(F), "w_proj": z(F, D), "b_proj": z(D)}
    else:
      mlp = {"w_gate_up": z(D, 2, F), "b_gate_up": z(2, F), "w_proj": z(F, D), "b_proj": z(D)}
    trunk[f"block_{i}"] = {"ln_1": norm(), "attn": attn, "ln_2": norm(), "mlp": mlp}
  params = {"trunk": trunk}
  if not s["tied_head"]:
    params["w_head"] = z(D, V)
  return params


def _gpt2_from_hf(w: dict[str, np.ndarray], model: dict) -> dict:
  D, H, _, K, F = _dims(model)
  trunk = {"wte": w["transformer.wte.weight"], "wpe": w["transformer.wpe.weight"]}
  for i in range(model["n_layer"]):
    p = f"transformer.h.{i}."
    trunk[f"block_{i}"] = {
      "ln_1": {"scale": w[p + "ln_1.weight"], "bias": w[p + "ln_1.bias"]},
      "attn": {
        "w_qkv": w[p + "attn.c_attn.weight"].reshape(D, 3, H, K),
        "b_qkv": w[p + "attn.c_attn.bias"].reshape(3, H, K),
        "w_out": w[p + "attn.c_proj.weight"].reshape(H, K, D),
        "b_out": w[p + "attn.c_proj.bias"],
      },
      "ln_2": {"scale": w[p + "ln_2.weight"], "bias": w[p + "ln_2.bias"]},
      "mlp": {
        "w_fc": w[p + "mlp.c_fc.weight"],
        "b_fc": w[p + "mlp.c_fc.bias"],
        "w_proj": w[p + "mlp.c_proj.weight"],
        "b_proj": w[p + "mlp.c_proj.bias"],
      },
    }
  trunk["ln_f"] = {"scale": w["transformer.ln_f.weight"], "bias": w["transformer.ln_f.bias"]}
  params = {"trunk": trunk}
  if not switches(model)["tied_head"]:
    params["w_head"] = _f32(w["lm_head.weight"].T)  # [D, V]
  return params


def _llama_from_hf(w: dict[str, np.ndarray], model: dict) -> dict:
  D, H, G, K, F = _dims(model)
  bias = switches(model)["use_bias"]
  heads = lambda x, n: x.T.reshape(D, n, K)  # [(N K), D] -> [D, N, K]
  trunk = {"wte": w["model.embed_tokens.weight"]}
  for i in range(model["n_layer"]):
    p = f"model.layers.{i}.self_attn."
    q, k, v = (w[p + f"{n}_proj.weight"] for n in "qkv")
    if G == H:
      attn = {"w_qkv": _f32(np.stack([heads(q, H), heads(k, H), heads(v, H)], axis=1))}
    else:
      attn = {"w_q": _f32(heads(q, H)), "w_kv": _f32(np.stack([heads(k, G), heads(v, G)], axis=1))}
    attn["w_out"] = _f32(w[p + "o_proj.weight"].T.reshape(H, K, D))
    if bias:
      bq, bk, bv = (w[p + f"{n}_proj.bias"] for n in "qkv")
      if G == H:
        attn["b_qkv"] = _f32(np.stack([bq, bk, bv]).reshape(3, H, K))
      else:
        attn["b_q"], attn["b_kv"] = bq.reshape(H, K), _f32(np.stack([bk, bv]).reshape(2, G, K))
      attn["b_out"] = w[p + "o_proj.bias"]
    p = f"model.layers.{i}.mlp."
    gate, up = w[p + "gate_proj.weight"], w[p + "up_proj.weight"]  # [F, D]
    mlp = {
      "w_gate_up": _f32(np.stack([gate.T, up.T], axis=1)),
      "w_proj": _f32(w[p + "down_proj.weight"].T),
    }
    if bias:
      mlp["b_gate_up"] = _f32(np.stack([w[p + "gate_proj.bias"], w[p + "up_proj.bias"]]))
      mlp["b_proj"] = w[p + "down_proj.bias"]
    p = f"model.layers.{i}."
    trunk[f"block_{i}"] = {
      "ln_1": {"scale": w[p + "input_layernorm.weight"]},
      "attn": attn,
      "ln_2": {"scale": w[p + "post_attention_layernorm.weight"]},
      "mlp": mlp,
    }
  trunk["ln_f"] = {"scale": w["model.norm.weight"]}
  params = {"trunk": trunk}
  if not switches(model)["tied_head"]:
    params["w_head"] = _f32(w["lm_head.weight"].T)  # [D, V]
  return params


def with_max_len(m: Model, max_len: int) -> Model:
  """`m` with another context length. RoPE models: any length (only the KV cache
  changes). Learned positions: at most the table's length, whose first rows are kept.

  Raises:
    ValueError: for a learned table shorter than `max_len`, or max_len < 1.
  """
  if not isinstance(max_len, int) or max_len < 1:
    raise ValueError(f"max_len={max_len!r} must be a positive integer")
  model = dict(m.model, max_len=max_len)
  params = m.params
  if switches(m.model)["position"] == "learned":
    if max_len > m.model["max_len"]:
      raise ValueError(
        f"max_len={max_len} exceeds the {m.model['max_len']} learned positions of the model"
      )
    params = dict(params, trunk=dict(params["trunk"], wpe=params["trunk"]["wpe"][:max_len]))
  return dataclasses.replace(m, model=model, params=params)
