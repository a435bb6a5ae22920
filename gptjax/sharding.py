"""Device mesh, logical-axis rules, and moving host batches onto the mesh.

The mesh has three axes:
  data    pure data parallelism (the `pmap` case): batch split, params replicated
  fsdp    batch split AND parameters/optimizer state sharded along `embed`
  tensor  Megatron-style: heads, MLP hidden and vocab split across devices

Modules name their axes logically (see gptjax.model); `RULES` maps names to
mesh axes, so one model runs on any mesh shape without changes.

Multi-process runs (several hosts, or one process per GPU) use JAX's own
runtime: `initialize_distributed` joins the job first thing in an entry
point's main(), one mesh spans every process's devices, and each process
feeds only its rows of a global batch (`process_rows`, `shard_batch`). The
global batch, hence the data order and a checkpoint's meaning, does not
depend on the number of processes or devices.
"""

import contextlib
import os
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

RULES = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  # Grouped-query attention's key/value heads (w_kv, b_kv) stay whole on every
  # tensor shard. A rule cannot look at shapes, and G = n_kv_head is often not
  # a multiple of the tensor axis (SmolLM2-135M: G = 3; Llama 3 70B: G = 8 on
  # 16-way tensor parallelism), where a split would be uneven, which jit
  # rejects. Replication is what Megatron does for G < tensor; w_kv is 2 G / H
  # the size of w_q and is still split along `embed` over fsdp.
  ("kv_heads", None),
  ("kv", None),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
)


# ----------------------------------------------------------------------------
# Multi-process runs (one process per host, or per GPU under Slurm)

ENV_COORDINATOR = "GPTJAX_COORDINATOR"  # host:port of process 0
ENV_NUM_PROCESSES = "GPTJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "GPTJAX_PROCESS_ID"
ENV_AUTO = "GPTJAX_DISTRIBUTED"  # '1': let JAX detect the cluster (TPU pod, Slurm, MPI)
ENV_LOG_ALL_PROCESSES = "GPTJAX_LOG_ALL_PROCESSES"  # '1': every process prints its progress


def _int_setting(value, name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}={value!r} must be an integer") from None


def _slurm_tasks(env) -> int:
  """Tasks of the Slurm job step this process belongs to (0 outside `srun`)."""
  needed = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
  return int(env["SLURM_NTASKS"]) if all(k in env for k in needed) else 0


def distributed_settings(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  env=None,
) -> dict | None:
  """Keyword arguments for `jax.distributed.initialize`, or None for one process.

  A pure function of its arguments and `env` (default os.environ), so the
  choice is testable without starting JAX. In order of precedence:
    1. flags --coordinator_address/--num_processes/--process_id (all three);
    2. GPTJAX_COORDINATOR=host:port, GPTJAX_NUM_PROCESSES, GPTJAX_PROCESS_ID;
    3. GPTJAX_DISTRIBUTED=1, a Slurm step of more than one task (`srun`), or a
       Cloud TPU pod slice (TPU_WORKER_HOSTNAMES names several hosts): {} --
       JAX reads the cluster's own description.
  One process (num_processes=1, or nothing set) needs no coordinator: None.

  Raises:
    ValueError: naming the flag or variable that is missing or out of range.
  """
  env = os.environ if env is None else env
  explicit = {
    "--coordinator_address": coordinator_address,
    "--num_processes": num_processes,
    "--process_id": process_id,
  }
  from_env = {
    ENV_COORDINATOR: env.get(ENV_COORDINATOR) or None,
    ENV_NUM_PROCESSES: env.get(ENV_NUM_PROCESSES) or None,
    ENV_PROCESS_ID: env.get(ENV_PROCESS_ID) or None,
  }
  for given in (explicit, from_env):
    if all(v is None for v in given.values()):
      continue
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise ValueError(
        f"{', '.join(missing)} not set: a multi-process run needs all of {', '.join(given)}"
      )
    (addr_name, addr), (n_name, n), (id_name, i) = given.items()
    n, i = _int_setting(n, n_name), _int_setting(i, id_name)
    if n < 1:
      raise ValueError(f"{n_name}={n} must be at least 1")
    if not 0 <= i < n:
      raise ValueError(f"{id_name}={i} must be in [0, {n_name}={n})")
    if ":" not in str(addr):
      raise ValueError(f"{addr_name}={addr!r} must be host:port (the address of process 0)")
    return None if n == 1 else dict(coordinator_address=str(addr), num_processes=n, process_id=i)
  tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
  if env.get(ENV_AUTO, "") not in ("", "0") or _slurm_tasks(env) > 1 or len(tpu_hosts) > 1:
    return {}
  return None


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  env=None,
) -> bool:
  """Joins a multi-process job if the arguments or the environment describe one.

  Call it first thing in a program, before any JAX computation or device
  query (`jax.devices()` starts the backend, after which JAX refuses to
  initialise). A no-op when already initialised or when one process runs;
  returns whether this process is part of a multi-process job. On CPUs the
  cross-process collectives go through gloo (what the localhost test runs).
  """
  if jax.distributed.is_initialized():
    return True
  settings = distributed_settings(coordinator_address, num_processes, process_id, env)
  if settings is None:
    return False
  from jax._src import xla_bridge  # no public query for "backend started"

  if xla_bridge.backends_are_initialized():
    raise RuntimeError(
      "A multi-process run is configured but JAX has already started its backend: call "
      "gptjax.sharding.initialize_distributed() before any JAX computation (the "
      "experiments/ entry points do it first thing in main())."
    )
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**settings)
  return True


def maybe_initialize_distributed() -> None:
  """`initialize_distributed()` from the environment; harmless when the entry
  point (or anyone) has initialised already, and in single-process runs."""
  initialize_distributed()


def define_flags() -> None:
  """--coordinator_address, --num_processes, --process_id for an absl entry point
  (idempotent, so several entry points can live in one process, as in tests)."""
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_string(
    "coordinator_address",
    None,
    f"host:port of process 0 in a multi-process run ({ENV_COORDINATOR}).",
  )
  flags.DEFINE_integer("num_processes", None, f"Processes in the run ({ENV_NUM_PROCESSES}).")
  flags.DEFINE_integer("process_id", None, f"This process's index, 0-based ({ENV_PROCESS_ID}).")


def initialize_from_flags() -> bool:
  """`initialize_distributed` from the flags of `define_flags` (or the environment);
  then, in a multi-process run, `quiet_other_processes`."""
  f = flags.FLAGS
  joined = initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
  if joined:
    quiet_other_processes()
  return joined


def quiet_other_processes(env=None) -> bool:
  """Progress output (stdout) from process 0 only; returns whether this one was silenced.

  Every process runs the same loop, so N processes would print N copies of
  each loss line (and of every evaluation sample). Warnings and errors go to
  stderr and stay on, so a failure on any process is still seen.
  GPTJAX_LOG_ALL_PROCESSES=1 keeps every process's stdout (debugging).
  """
  env = os.environ if env is None else env
  if jax.process_index() == 0 or env.get(ENV_LOG_ALL_PROCESSES) == "1":
    return False
  sys.stdout.flush()
  sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
  return True


@contextlib.contextmanager
def primary_first(what: str):
  """Process 0 runs the block first, then the others, who find its caches.

  For preparing shared caches (datasets, token streams) in a multi-process
  run: processes preparing one cache side by side would race on its files.
  On hosts with separate disks each host still prepares its own copy, one
  after the other. A no-op in single-process runs.
  """
  if jax.process_count() == 1:
    yield
    return
  from jax.experimental import multihost_utils

  if jax.process_index() != 0:
    multihost_utils.sync_global_devices(f"gptjax primary_first {what}")
  try:
    yield
  finally:  # on an error too: the others then meet it themselves, with its message
    if jax.process_index() == 0:
      multihost_utils.sync_global_devices(f"gptjax primary_first {what}")


def log_processes(log=print) -> None:
  """One line naming this process and its devices, in multi-process runs only."""
  if jax.process_count() > 1:
    log(
      f"[distributed] process {jax.process_index()} of {jax.process_count()}: "
      f"{jax.local_device_count()} local of {jax.device_count()} devices"
    )


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
  """The mesh of `config.mesh` over `devices` (default: every device of every process).

  In a multi-process run each process must own some of the mesh's devices:
  a process outside the mesh could not feed its rows of the batch.
  """
  devices = mesh_devices(mesh_cfg, devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  if jax.process_count() > 1 and {d.process_index for d in devices} != set(
    range(jax.process_count())
  ):
    raise ValueError(
      f"config.mesh.num_devices={mesh_cfg.get('num_devices')}: in a run of "
      f"{jax.process_count()} processes the mesh must span devices of every process "
      "(use -1 for all devices)"
    )
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_sharding(logical_tree, mesh: Mesh):
  """Pytree of PartitionSpecs with logical names -> pytree of NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_tree, mesh, RULES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def process_rows(mesh: Mesh, global_batch: int) -> np.ndarray:
  """Indices of the rows of a global batch that this process feeds, ascending.

  The union of the batch slices of this process's devices under
  `batch_sharding`: all rows in a single process; with P processes on a
  batch-split mesh, B/P rows (fewer than B whenever the processes do not
  replicate one another). A data pipeline builds only these rows; their
  order is the one `jax.make_array_from_process_local_data` expects.
  """
  if jax.process_count() == 1:
    return np.arange(global_batch)
  index_map = batch_sharding(mesh, 1).addressable_devices_indices_map((global_batch,))
  rows = set()
  for (rows_slice,) in index_map.values():
    rows.update(range(*rows_slice.indices(global_batch)))
  return np.array(sorted(rows), dtype=np.int64)


def shard_batch(batch: dict, mesh: Mesh, global_batch: int | None = None) -> dict:
  """Host numpy batch -> global jax arrays on the mesh.

  global_batch=None: `batch` is the whole global batch; in a multi-process
  run each process keeps its own rows of each array (arrays may differ in
  length: a packed reward-model batch has R rows of sequences, B of labels).
  global_batch=B: `batch` holds only this process's rows,
  `batch[k] = global[process_rows(mesh, B)[k]]` (how a pipeline that reads
  only its own shard feeds the mesh). Either way
  `make_array_from_process_local_data` stitches the processes' rows together.
  """
  if not batch:
    return {}

  def put(name, x):
    x = np.asarray(x)
    if jax.process_count() == 1:
      return jax.device_put(x, batch_sharding(mesh, x.ndim))
    size = global_batch or len(x)  # whole: each array's own rows (packed rows and labels differ)
    rows = process_rows(mesh, size)
    if global_batch is None:
      x = x[rows] if len(rows) < len(x) else x
    elif len(x) != len(rows):
      raise ValueError(
        f"batch[{name!r}] has {len(x)} rows; this process feeds {len(rows)} of {size}"
      )
    return jax.make_array_from_process_local_data(
      batch_sharding(mesh, x.ndim), x, (size,) + x.shape[1:]
    )

  return {k: put(k, v) for k, v in batch.items()}


def to_host(tree):
  """A pytree of (global) jax arrays as numpy arrays on every process.

  `jax.device_get` in one process; with several, arrays that span other
  processes' devices (a sharded output, e.g. generated tokens on a
  batch-split mesh) are gathered first, which `device_get` refuses to do.
  Arrays this process holds whole (numpy, or already a `local_copy`) are
  read as they are: gathering those would concatenate every process's copy.
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return multihost_utils.process_allgather(x, tiled=True)  # the global value
    return jax.device_get(x)

  return jax.tree_util.tree_map(one, tree)


def local_copy(tree):
  """The whole pytree on this process's first device, gathered from every process.

  For work off the training mesh (sampling during evaluation, chat): in a
  multi-process run `jax.devices()[0]` belongs to process 0 and other
  processes' shards cannot be fetched with `device_get`.
  """
  return jax.device_put(to_host(tree), jax.local_devices()[0])


def local_mesh():
  """A one-device mesh over this process's first device, as a context: jitted
  work on a `local_copy` inside a training loop's `jax.set_mesh(mesh)`."""
  device = jax.local_devices()[0]
  return jax.set_mesh(Mesh(np.array([device]).reshape(1, 1, 1), MESH_AXES))


def check_divisible(global_batch: int, mesh: Mesh, what: str = "config.train.batch_size") -> None:
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % n:
    raise ValueError(f"{what}={global_batch} must be divisible by data x fsdp = {n} devices")


def replicated_global(x, mesh: Mesh):
  """`x` as a global array replicated over `mesh` (`device_put` for arrays on a mesh).

  A multi-host checkpoint holds only global arrays, but values made outside
  any jitted step (a fresh step counter, a PRNG key, an optimizer's count)
  live on one local device. Every process holds the same value, so each
  places its copy on its own devices.
  """
  replicated = NamedSharding(mesh, P())
  if isinstance(getattr(x, "sharding", None), NamedSharding):
    return jax.device_put(x, replicated)
  value = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(value.shape, replicated, lambda index: value[index])
