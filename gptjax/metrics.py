"""Metrics: JSONL + TensorBoard writer, a progress line, and MFU.

One writer serves every experiment. Each record is one JSON line
`{"step": s, "split": "train"|"eval"|..., <name>: <float>, ...}` in
`workdir/metrics.jsonl`; the same scalars go to TensorBoard under
`<split>/<name>`. Plots and reports are generated from the JSONL alone.

A resumed run replays the steps after its checkpoint, so the train loop cuts
the file back to that step first (`truncate`): the records of a resumed run
are those of an uninterrupted one. `read_metrics` also tolerates what an
older or killed writer leaves (a half-written last line, repeated records).
"""

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import files


class MetricsWriter:
  """Appends records to workdir/metrics.jsonl (and TensorBoard, if available)."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if tensorboard and jax.process_index() == 0:
      try:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:  # TensorBoard is optional; the JSONL is the record.
        pass

  def write(self, step: int, split: str, **scalars: Any) -> None:
    if jax.process_index() != 0:
      return
    record = {"step": int(step), "split": split}
    record.update({k: _plain(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "split") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{split}/{k}", v, step)

  def truncate(self, step: int) -> None:
    """Keeps only the records at or before `step` (atomically)."""
    self._rewrite(lambda r: r.get("step", 0) <= step)

  def drop_split(self, split: str) -> None:
    """Removes a split's records, before writing them anew (a stage's final scores)."""
    self._rewrite(lambda r: r.get("split") != split)

  def _rewrite(self, keep) -> None:
    if jax.process_index() != 0 or not os.path.exists(self.path):
      return
    records = _parse(self.path)
    kept = [r for r in records if keep(r)]
    if len(kept) == len(records):
      return
    files.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes TensorBoard; safe to call twice."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _plain(v):
  """numpy / jax scalars -> JSON-friendly Python values."""
  if isinstance(v, (str, bool, int, float)) or v is None:
    return v
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def read_metrics(workdir_or_path: str, split: str | None = None) -> list[dict]:
  """Reads back a metrics.jsonl, optionally keeping one split.

  A (split, step) written more than once (by a run resumed before resumes cut
  the file back) counts once, with its last value; a line cut short by a kill
  is skipped."""
  path = workdir_or_path
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  unique: dict = {}
  for r in _parse(path):
    unique[(r.get("split"), r.get("step"))] = r  # keeps the first position, the last value
  return [r for r in unique.values() if split is None or r.get("split") == split]


def _parse(path: str) -> list[dict]:
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue  # a line cut short by a kill mid-write
  return records


# Keys that measure time rather than the computation: the only ones in which a
# resumed run's records may differ from an uninterrupted run's.
TIMING_KEYS = (
  "tokens_per_s",
  "steps_per_s",
  "eta_s",
  "mfu",
  "rollout_tokens_per_s",
  "rollout_s",
  "generate_s",
  "update_s",
)


def without_timing(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def measure_matmul_peak(dtype=jnp.float32, n: int = 2048, repeats: int = 5, devices=None) -> float:
  """FLOP/s of a large jitted matmul on `devices` (default: all local ones).

  This is the MFU denominator. Each device multiplies its own n x n matrices,
  so the figure is the sum over devices. The best of `repeats` timings is
  taken (the least disturbed one).
  """
  devices = jax.local_devices() if devices is None else list(devices)
  k = len(devices)
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  a = jax.device_put(jnp.ones((k, n, n), dtype) / n, spec)  # [k, n, n]
  matmul = jax.jit(lambda x: jnp.einsum("kij,kjl->kil", x, x), out_shardings=spec)
  matmul(a).block_until_ready()  # compile
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 * k / best


class Progress:
  """A one-line progress report: step, loss, tokens/s, MFU, ETA."""

  def __init__(
    self,
    total_steps: int,
    start_step: int,
    tokens_per_step: int,
    flops_per_token: float,
    peak_flops: float | None,
  ):
    self.total = total_steps
    self.tokens_per_step = tokens_per_step
    self.flops_per_token = flops_per_token
    self.peak = peak_flops
    self._t0, self._s0 = time.perf_counter(), start_step

  def rates(self, step: int) -> dict:
    """Throughput since the last call (tokens/s, MFU, steps/s, ETA seconds)."""
    now = time.perf_counter()
    steps = max(step - self._s0, 1)
    dt = max(now - self._t0, 1e-9)
    self._t0, self._s0 = now, step
    tok_s = steps * self.tokens_per_step / dt
    out = {
      "tokens_per_s": tok_s,
      "steps_per_s": steps / dt,
      "eta_s": (self.total - step) * dt / steps,
    }
    if self.peak and self.flops_per_token:
      out["mfu"] = tok_s * self.flops_per_token / self.peak
    return out

  @staticmethod
  def line(step: int, total: int, loss: float, rates: dict) -> str:
    mfu = f"  mfu {100 * rates['mfu']:.1f}%" if "mfu" in rates else ""
    return (
      f"step {step:>6d}/{total}  loss {loss:.4f}  "
      f"{rates['tokens_per_s']:,.0f} tok/s{mfu}  eta {format_seconds(rates['eta_s'])}"
    )


class CountProgress:
  """'<label> done/total (pct) eta ...' about every 10% of a long loop."""

  def __init__(self, total: int, log=None, label: str = "", every: float = 0.1):
    self.total, self.log, self.label = total, log, label
    self.step = max(1, int(total * every))
    self._next, self._t0 = self.step, time.perf_counter()

  def update(self, done: int) -> None:
    if self.log is None or done < self._next or not done:
      return
    while self._next <= done:
      self._next += self.step
    elapsed = time.perf_counter() - self._t0
    eta = elapsed * (self.total - done) / done
    self.log(
      f"{self.label}{done:,}/{self.total:,} ({100 * done / self.total:.0f}%)  "
      f"elapsed {format_seconds(elapsed)}  eta {format_seconds(eta)}"
    )


def format_seconds(s: float) -> str:
  s = int(round(s))
  h, m = divmod(s, 3600)
  m, s = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
