"""Memory per device of a training step, before anything is allocated.

`plan(config, mesh)` answers "will this config fit on these devices?" from
shapes alone: the TrainState comes from `jax.eval_shape` (no parameter is
materialised), each leaf's bytes are divided as its sharding divides it, and
activations follow a count of what the backward pass keeps per token (below).
`compiled(config, mesh)` then lowers and compiles the real step on abstract
inputs and reads XLA's own buffer assignment (`memory_analysis()`), which
includes fusion, rematerialisation and workspace: the number to trust, at
the price of one compilation (seconds to minutes, nothing allocated).

Activations kept for the backward pass, per token and layer, in
`config.model.dtype` (the model materialises the [T, T] attention scores;
there is no rematerialisation), with t = mesh.tensor:

  residual stream, norm in- and outputs        6 D        (replicated over tensor)
  q and the attention output                   2 D / t    (heads split over tensor)
  k and v, G key/value heads of K dims         2 G K / t  (= 2 D / t in GPT-2)
  attention scores, masked scores, probs       3 H T / t
  MLP pre- and post-activation (GELU)          2 F / t
  or SwiGLU's gate, up, silu, product          4.5 F / t
  with model.dropout > 0: dropped probs and    H T / t + 4 D
  the residual branches' dropout outputs

plus the final norm (2 D) and float32 logits and their softmax (2 V / t).
With grouped-query attention (G < H) k and v are not divided by t: the
`kv_heads` axis is replicated over tensor (`gptjax.sharding.RULES`). RoPE
adds nothing measurable (the rotated q and k replace q and k), and RMSNorm
is counted as LayerNorm (XLA keeps a little less).
Tokens per device = batch_size / (data x fsdp) / grad_accum x T: gradient
accumulation divides activations, not parameters. The counts are calibrated
on XLA's own buffer assignment (CPU, float32, GPT-2-small widths, T = 256 and
1024, one layer against two): 3.0 H T + 17.9 D per layer measured, 3 H T + 18 D
counted. SwiGLU's 4.5 F was measured the same way (D = 256, F = 3 D, T = 128:
2.5 F above GELU's), and so were GQA's k and v (2 G K). XLA on a CPU computes
bfloat16 in float32, so there its compiled figure for a bfloat16 model is about
twice this count; on TPUs and GPUs run `--print_memory` on the device itself
for the compiled figure of that backend.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax import losses, model as model_lib, sharding, train

GIB = 2**30


def shard_bytes(tree) -> int:
  """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings
  (the largest shard: uneven splits round up)."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize
  return total


def activation_bytes(cfg: model_lib.TransformerConfig, tokens: int, tensor: int) -> int:
  """Activations a training step keeps for the backward pass (module docstring)."""
  D, F, H, T, V = cfg.d_model, cfg.d_ff, cfg.n_head, cfg.max_len, cfg.vocab_size
  kv = 2 * cfg.kv_heads * cfg.head_dim  # k and v
  kv_split = cfg.kv_heads == cfg.n_head  # else `kv_heads`, replicated over tensor
  mlp = 4.5 * F if cfg.mlp == "swiglu" else 2 * F
  per_layer = 6 * D + (2 * D + (kv if kv_split else 0) + 3 * H * T + mlp) / tensor
  per_layer += 0 if kv_split else kv  # values per token
  if cfg.dropout > 0:
    per_layer += H * T / tensor + 4 * D
  act = jnp.dtype(cfg.dtype).itemsize
  head = 2 * D * act + 2 * V / tensor * 4  # final LayerNorm; float32 logits + softmax
  return int(tokens * (cfg.n_layer * per_layer * act + head))


@dataclasses.dataclass
class MemoryPlan:
  """Bytes per device. `compiled` holds XLA's figures once `compiled()` ran."""

  mesh: dict
  tokens_per_device: int
  params: int
  optimizer: int
  gradients: int
  activations: int
  batch: int
  compiled: dict | None = None

  @property
  def total(self) -> int:
    return self.params + self.optimizer + self.gradients + self.activations + self.batch


def _shell_task(config) -> train.Task:
  """The language model's Task without data: enough for shapes and the step."""
  model = model_lib.build(config)
  return train.Task(
    name="memory",
    model=model,
    loss_fn=losses.lm_loss_fn(model),
    train_batch=None,
    example_batch={"tokens": np.zeros((1, config.model.max_len), np.int32)},
    tokens_per_step=0,
  )


def abstract_batch(config, mesh) -> dict:
  """The global training batch as ShapeDtypeStructs laid out over the mesh."""
  B, T = config.train.batch_size, config.model.max_len
  spec = functools.partial(jax.ShapeDtypeStruct, sharding=sharding.batch_sharding(mesh, 2))
  return {
    "tokens": spec((B, T), jnp.int32),
    "targets": spec((B, T), jnp.int32),
    "loss_mask": spec((B, T), jnp.float32),
  }


def plan(config, mesh) -> MemoryPlan:
  """Parameter, optimizer, gradient, activation and batch bytes per device.

  Raises ValueError naming config.train.batch_size when the mesh or
  gradient accumulation does not divide the batch.
  """
  t, cfg = config.train, model_lib.TransformerConfig.from_config(config.model)
  split = mesh.shape["data"] * mesh.shape["fsdp"] * t.grad_accum
  if t.batch_size % split:
    raise ValueError(
      f"config.train.batch_size={t.batch_size} must be divisible by grad_accum x data x fsdp"
      f" = {split}"
    )
  tx = train.make_optimizer(t)
  state = train.abstract_state(_shell_task(config), tx, mesh, config.seed)
  tokens = t.batch_size // split * cfg.max_len
  return MemoryPlan(
    mesh=dict(mesh.shape),
    tokens_per_device=tokens,
    params=shard_bytes(state.params),
    optimizer=shard_bytes(state.opt_state),
    gradients=shard_bytes(state.params),  # same shapes and layout as the parameters
    activations=activation_bytes(cfg, tokens, mesh.shape["tensor"]),
    batch=shard_bytes(abstract_batch(config, mesh)),
  )


def compiled(config, mesh) -> dict:
  """XLA's memory analysis of the compiled train step, per device, in bytes.

  `total` = arguments + outputs - aliased (the state is donated) + temporaries.
  Compiles (no allocation); empty where the backend reports nothing.
  """
  task, tx = _shell_task(config), train.make_optimizer(config.train)
  state = train.abstract_state(task, tx, mesh, config.seed)
  shardings = train.state_shardings(task, tx, mesh, config.seed)
  step = jax.jit(
    functools.partial(
      train.train_step, loss_fn=task.loss_fn, tx=tx, grad_accum=config.train.grad_accum
    ),
    out_shardings=(shardings, None),
    donate_argnums=(0,),
  )
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    stats = step.lower(state, abstract_batch(config, mesh)).compile().memory_analysis()
  if stats is None:
    return {}
  out = {
    "arguments": stats.argument_size_in_bytes,
    "outputs": stats.output_size_in_bytes,
    "aliased": stats.alias_size_in_bytes,
    "temporaries": stats.temp_size_in_bytes,
  }
  out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
  return out


def device_capacity(mesh) -> int | None:
  """Bytes one device of the mesh can allocate, where the backend says (TPU, GPU)."""
  try:
    stats = mesh.devices.flat[0].memory_stats()
  except Exception:  # CPU backends raise or return None: no limit known
    return None
  return (stats or {}).get("bytes_limit")


def human(n_bytes: float) -> str:
  """'1.23 GiB' / '45.6 MiB' / '7.8 KiB'."""
  for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n_bytes) >= size:
      return f"{n_bytes / size:.2f} {unit}"
  return f"{int(n_bytes)} B"


def table(p: MemoryPlan, capacity: int | None = None) -> str:
  """The plan as an aligned text table, per device."""
  rows = [
    ("parameters", p.params),
    ("optimizer state (AdamW mu, nu)", p.optimizer),
    ("gradients", p.gradients),
    (f"activations (estimate, {p.tokens_per_device:,} tokens)", p.activations),
    ("batch", p.batch),
    ("total (estimate)", p.total),
  ]
  for name, value in (p.compiled or {}).items():
    rows.append((f"XLA compiled step: {name}", value))
  lines = [f"memory per device, mesh {p.mesh}:"]
  lines += [f"  {name:<48}{human(value):>12}" for name, value in rows]
  if capacity:
    need = (p.compiled or {}).get("total", p.total)
    verdict = "fits" if need <= capacity else "DOES NOT FIT: raise mesh.fsdp or train.grad_accum"
    lines.append(f"  {'device memory':<48}{human(capacity):>12}   {verdict}")
  return "\n".join(lines)
