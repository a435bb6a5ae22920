"""Device mesh, logical-axis rules, and moving host batches onto the mesh.

The mesh has three axes:
  data    pure data parallelism (the `pmap` case): batch split, params replicated
  fsdp    batch split AND parameters/optimizer state sharded along `embed`
  tensor  Megatron-style: heads, MLP hidden and vocab split across devices

Modules name their axes logically (see gptjax.model); `RULES` maps names to
mesh axes, so one model runs on any mesh shape without changes.
"""

import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

RULES = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("kv", None),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
)


def maybe_initialize_distributed() -> None:
  """Joins a multi-host job when the environment describes one.

  On Cloud TPU / Slurm, `jax.distributed.initialize()` discovers everything
  itself; elsewhere set GPTJAX_COORDINATOR=host:port, GPTJAX_NUM_PROCESSES
  and GPTJAX_PROCESS_ID. Single-process runs do nothing.
  """
  if jax.distributed.is_initialized():
    return
  coordinator = os.environ.get("GPTJAX_COORDINATOR")
  if coordinator:
    jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=int(os.environ["GPTJAX_NUM_PROCESSES"]),
      process_id=int(os.environ["GPTJAX_PROCESS_ID"]),
    )
  elif os.environ.get("SLURM_JOB_ID") or os.environ.get("TPU_WORKER_HOSTNAMES"):
    jax.distributed.initialize()


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, n_devices: int) -> tuple[int, int, int]:
  """Resolves `config.mesh` (one axis may be -1 = the rest) to a concrete shape."""
  shape = [mesh_cfg[a] for a in MESH_AXES]
  if sum(s == -1 for s in shape) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(
      f"config.mesh={dict(zip(MESH_AXES, shape))}: use positive sizes and at most one -1"
    )
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if n_devices % known:
      raise ValueError(f"config.mesh: {n_devices} devices are not divisible by {known}")
    shape[shape.index(-1)] = n_devices // known
  if int(np.prod(shape)) != n_devices:
    raise ValueError(
      f"config.mesh={dict(zip(MESH_AXES, shape))} needs "
      f"{int(np.prod(shape))} devices; {n_devices} are available"
    )
  return tuple(shape)


def mesh_devices(mesh_cfg: ml_collections.ConfigDict, devices=None) -> list:
  """The devices a mesh spans: all of them, or the first `mesh.num_devices`."""
  devices = list(jax.devices() if devices is None else devices)
  n = mesh_cfg.get("num_devices", -1)
  if n is not None and n > 0:
    if n > len(devices):
      raise ValueError(f"config.mesh.num_devices={n} but only {len(devices)} devices exist")
    devices = devices[:n]
  return devices


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  devices = mesh_devices(mesh_cfg, devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_sharding(logical_tree, mesh: Mesh):
  """Pytree of PartitionSpecs with logical names -> pytree of NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_tree, mesh, RULES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Host numpy batch -> global jax arrays on the mesh.

  Single process: `batch` is the global batch. Multi-host: each process
  passes its own slice (global_batch / process_count rows), and
  `make_array_from_process_local_data` stitches them together.
  """

  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, x.ndim)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)

  return {k: put(v) for k, v in batch.items()}


def check_divisible(global_batch: int, mesh: Mesh, what: str = "config.train.batch_size") -> None:
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % n:
    raise ValueError(f"{what}={global_batch} must be divisible by data x fsdp = {n} devices")
