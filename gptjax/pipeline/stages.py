"""The ChatGPT recipe as resumable stages: pretrain -> SFT -> RM -> RLHF -> report.

Each stage runs in its own subfolder of the pipeline workdir and records
`stage.json`: a fingerprint of its config and of the stages it depends on,
whether it finished, and its wall time. A finished stage whose fingerprint is
unchanged is skipped; an unfinished one resumes (every stage checkpoints); a
stage whose config (or an upstream stage) changed is rerun from scratch, and
so are the stages after it. The rerun is deliberate (change a config, rerun
the command), but nothing is deleted: the previous folder of such a stage is
moved to `replaced/<stage>-<its fingerprint>/` in the workdir, with a line
saying so. Delete it to free the space, or move it back to `<stage>/` (with
the config it was run with) to use it again.

`only` (the command line's --stages) runs a subset whose upstream stages are
done: rlhf and rlhf_ptx depend only on sft and reward_model, so two
processes (or two machines sharing the workdir) can run them side by side.
While a stage runs, its stage.json names the process; a second process that
reaches the same stage stops with an error instead of writing beside it.

The stages share JAX's persistent compilation cache in workdir/xla_cache
(`compilation_cache`): a program one stage compiled is read back, not
compiled again, by a later stage (or a resumed or side-by-side one) that
needs it at the same shapes.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import time
from typing import Callable, Sequence

import jax
import ml_collections
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from gptjax import config as config_lib, metrics as metrics_lib, pretraining, runs, sft, train
from gptjax.reward_model import training as rm_training
from gptjax.rlhf import best_of_n, dpo, loop as rlhf_loop

STAGE_FILE = "stage.json"
XLA_CACHE = "xla_cache"  # in the workdir: compiled programs the stages share
ORDER = (
  "pretrain",
  "sft",
  "sft_curated",
  "reward_model",
  "rlhf",
  "rlhf_ptx",
  "dpo",
  "best_of_n",
  "report",
)
# With --config.jobs > 1, among the stages ready at once, these start first:
# the reward model before curated SFT (PPO, DPO and best-of-n wait for it), DPO
# and PPO before PPO-ptx and best-of-n (tiny: 4m09s, 3m36s vs 1m24s, 0m53s).
LONGEST_FIRST = ("reward_model", "dpo", "rlhf")
OPTIONAL = ("sft_curated", "dpo", "best_of_n")  # absent from configs written before them


@dataclasses.dataclass
class Stage:
  name: str
  config: ml_collections.ConfigDict | None
  run: Callable[[str], None]  # run(stage_dir)
  after: tuple[str, ...] = ()


def fingerprint(config, upstream: list[str]) -> str:
  blob = json.dumps(
    {"config": config.to_dict() if config is not None else None, "upstream": upstream},
    sort_keys=True,
    default=str,
  )
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_stage(stage_dir: str) -> dict | None:
  path = os.path.join(stage_dir, STAGE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_stage(stage_dir: str, record: dict) -> None:
  """stage.json, atomically (a crash never leaves half a record)."""
  runs.write_json(os.path.join(stage_dir, STAGE_FILE), record)


def _running_elsewhere(record: dict | None) -> str | None:
  """'pid N on host' if the record says a live process other than this one runs the stage."""
  if not record or record.get("done") or "pid" not in record:
    return None
  pid, host = record["pid"], record.get("host")
  if host != socket.gethostname():
    return f"pid {pid} on {host}"  # cannot check another machine: trust the record
  if pid == os.getpid():
    return None
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return None  # it died (a crash, a kill -9): resume its checkpoints
  except PermissionError:
    pass  # alive, another user's
  return f"pid {pid}"


REPLACED = "replaced"  # the workdir's folder of stage runs a config change replaced


def set_aside(stage_dir: str, fp: str) -> str:
  """Moves a stage's folder to <workdir>/replaced/<stage>-<fp>[.N]; returns where."""
  parent, name = os.path.split(os.path.normpath(stage_dir))
  base = os.path.join(parent, REPLACED, f"{name}-{fp}")
  aside, n = base, 1
  while os.path.exists(aside):  # the same config replaced twice: keep both
    n += 1
    aside = f"{base}.{n}"
  os.makedirs(os.path.dirname(aside), exist_ok=True)
  shutil.move(stage_dir, aside)
  return aside


def run_stage(stage: Stage, workdir: str, upstream: list[str], log=print) -> dict:
  """Runs, resumes or skips one stage. Returns its stage.json record."""
  d = os.path.join(workdir, stage.name)
  fp = fingerprint(stage.config, upstream)
  record = read_stage(d)
  if record and record["fingerprint"] == fp and record["done"]:
    log(f"[pipeline] {stage.name}: done ({metrics_lib.format_seconds(record['seconds'])}), skipped")
    return record
  busy = _running_elsewhere(record)
  if busy:
    raise FileExistsError(
      f"stage {stage.name} is being run by {busy} ({d}/{STAGE_FILE}); "
      "wait for it, run the other stages with --stages, or, if no such process runs "
      "any more, delete the \"pid\" field from that file"
    )
  if record and record["fingerprint"] != fp:
    aside = set_aside(d, record["fingerprint"])
    log(
      f"[pipeline] {stage.name}: its config or an earlier stage changed: rerunning from "
      f"scratch; the previous run is kept in {aside} (delete it to free the space)"
    )
  elif record is None and os.path.exists(d) and os.listdir(d):
    raise FileExistsError(
      f"{d} exists but is not a pipeline stage (no {STAGE_FILE}); "
      "move it away or choose another --workdir"
    )
  elif record:
    log(f"[pipeline] {stage.name}: resuming an unfinished run")
  os.makedirs(d, exist_ok=True)
  previous = record["seconds"] if record and record["fingerprint"] == fp else 0.0
  write_stage(
    d,
    {
      "fingerprint": fp,
      "done": False,
      "seconds": previous,
      "pid": os.getpid(),
      "host": socket.gethostname(),
    },
  )
  log(f"[pipeline] ===== {stage.name} =====")
  t0 = time.perf_counter()
  try:
    stage.run(d)
  finally:
    elapsed = previous + time.perf_counter() - t0
    write_stage(d, {"fingerprint": fp, "done": False, "seconds": elapsed})  # no pid: free
  record = {"fingerprint": fp, "done": True, "seconds": elapsed}
  write_stage(d, record)
  return record


def stages(config, workdir: str, cache_dir: str | None, log=print) -> list[Stage]:
  """The recipe. Stage configs are the stages' own (configs/<stage>.py)."""
  path = lambda name: os.path.join(workdir, name)
  if "convert" in config:  # a released model instead of pretraining (configs/pipeline.py:smollm2)
    base = Stage("pretrain", config.convert, lambda d: convert_into(config.convert, d, log))
  else:
    base = Stage(
      "pretrain", config.pretrain, lambda d: pretraining.run(config.pretrain, d, cache_dir, log=log)
    )
  out = [
    base,
    Stage(
      "sft",
      config.sft,
      lambda d: sft.run(config.sft, d, path("pretrain"), log=log),
      after=("pretrain",),
    ),
    Stage(
      "reward_model",
      config.reward_model,
      lambda d: rm_training.run(config.reward_model, d, path("sft"), log=log),
      after=("sft",),
    ),
    Stage(
      "rlhf",
      _without_ptx(config.rlhf),
      lambda d: rlhf_loop.run(
        _without_ptx(config.rlhf),
        d,
        path("sft"),
        path("reward_model"),
        log=log,
        cache_dir=cache_dir,
      ),
      after=("sft", "reward_model"),
    ),
  ]
  if config.ptx_coef > 0:
    ptx_cfg = _with_ptx(config.rlhf, config.ptx_coef)
    out.append(
      Stage(
        "rlhf_ptx",
        ptx_cfg,
        lambda d: rlhf_loop.run(
          ptx_cfg, d, path("sft"), path("reward_model"), log=log, cache_dir=cache_dir
        ),
        after=("sft", "reward_model"),
      )
    )
  out += baseline_stages(config, path, log)
  from gptjax.pipeline import report

  out.append(
    Stage(
      "report",
      config.report,
      lambda d: report.write(workdir, d, config, ORDER, log=log),
      after=tuple(s.name for s in out),
    )
  )
  return out


def baseline_stages(config, path, log=print) -> list[Stage]:
  """The baselines beside PPO, on the same held-out prompts and judge: SFT on
  the concise writer alone (curation), DPO on the RM's comparisons, and
  best-of-n picked by the RM and by the oracle (the ceiling). A config
  without a section (written before them) skips that stage."""
  out = []
  if "sft_curated" in config:
    out.append(
      Stage(
        "sft_curated",
        config.sft_curated,
        lambda d: _curated_sft(config, d, path("pretrain"), path("sft"), log),
        after=("pretrain", "sft"),
      )
    )
  if "dpo" in config:
    out.append(
      Stage(
        "dpo",
        config.dpo,
        lambda d: dpo.run(config.dpo, d, path("sft"), path("reward_model"), log=log),
        after=("sft", "reward_model"),
      )
    )
  if "best_of_n" in config:
    out.append(
      Stage(
        "best_of_n",
        config.best_of_n,
        lambda d: best_of_n.run(config.best_of_n, d, path("sft"), path("reward_model"), log=log),
        after=("sft", "reward_model"),
      )
    )
  return out


def _curated_sft(config, d: str, pretrain_dir: str, sft_dir: str, log) -> None:
  """SFT on the concise writer alone, then judged against the main SFT model
  on the RLHF stage's held-out prompts (versus_sft.json)."""
  sft.run(config.sft_curated, d, pretrain_dir, log=log)
  ev_config = ml_collections.ConfigDict({"eval": config.rlhf.eval.to_dict(), "seed": config.seed})
  curated = runs.load_run(d)
  result = dpo.evaluate(ev_config, runs.load_run(sft_dir), curated.params, log, "sft_curated")
  runs.write_json(os.path.join(d, "versus_sft.json"), result)


def convert_into(c, stage_dir: str, log=print) -> None:
  """The base model of a pipeline without pretraining: `c.src` (a GGUF file, a
  Hugging Face directory, a gptjax run or 'smollm2') converted into a gptjax
  run in `stage_dir`, with context `c.max_len`. The conversion writes a
  sibling folder and moves its files in; a rerun after a crash starts over."""
  from gptjax.hub import convert

  for name in os.listdir(stage_dir):  # what an interrupted conversion left
    if name != STAGE_FILE:
      p = os.path.join(stage_dir, name)
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
  tmp = f"{os.path.normpath(stage_dir)}.converted"
  shutil.rmtree(tmp, ignore_errors=True)
  convert.convert(c.src, tmp, to="gptjax", max_len=c.get("max_len") or None, log=log)
  for name in os.listdir(tmp):
    os.rename(os.path.join(tmp, name), os.path.join(stage_dir, name))
  os.rmdir(tmp)


def _without_ptx(c):
  c = config_lib.copy(c)
  c.ppo.ptx_coef = 0.0
  return c


def _with_ptx(c, coef: float):
  c = config_lib.copy(c)
  c.ppo.ptx_coef = coef
  return c


def parse_stages(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
  """'rlhf,rlhf_ptx' -> ('rlhf', 'rlhf_ptx'); None or empty -> None (every stage)."""
  if not text:
    return None
  names = tuple(
    n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()
  )
  unknown = [n for n in names if n not in ORDER]
  if unknown:
    raise ValueError(f"Unknown stage(s) {unknown}; stages are {', '.join(ORDER)}")
  return names or None


def prepare(config, workdir: str, cache_dir: str | None = None, log=print):
  """(absolute workdir, the recipe's stages), with the resolved config written
  to workdir/pipeline_config.json."""
  workdir = train.prepare_workdir(workdir)
  runs.write_json(os.path.join(workdir, "pipeline_config.json"), config.to_dict(), default=str)
  return workdir, stages(config, workdir, cache_dir, log)


def run(
  config, workdir: str, cache_dir: str | None = None, log=print, only: Sequence[str] | None = None
) -> dict:
  """Runs every stage in order (or those in `only`, whose upstream stages
  must be done); returns {stage: stage.json record}. Side by side, a process
  each: gptjax/pipeline/parallel.py."""
  workdir, stage_list = prepare(config, workdir, cache_dir, log)
  with compilation_cache(os.path.join(workdir, XLA_CACHE)):
    return run_stages(stage_list, workdir, log, parse_stages(only))


@contextlib.contextmanager
def compilation_cache(path: str):
  """JAX's persistent compilation cache in `path` while the stages run.

  Curated SFT repeats SFT's programs, and the sampling loop recurs at the
  same shapes in several stages: a program that took over a second to
  compile (JAX's threshold) is written once and read back by the next stage
  or process that needs it (the tiny curated-SFT stage: 10 s of its 20 s of
  compilation saved). Entries are keyed by the program, compile options and
  jax version; a damaged one is recompiled with a warning. A cache the user
  chose (JAX_COMPILATION_CACHE_DIR) is left as it is.
  """
  if jax.config.jax_compilation_cache_dir:
    yield
    return
  jax.config.update("jax_compilation_cache_dir", path)
  jax_cache.reset_cache()  # JAX reads the setting once, at its first compilation
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", None)
    jax_cache.reset_cache()


def run_stages(
  stage_list: Sequence[Stage], workdir: str, log=print, only: Sequence[str] | None = None
) -> dict:
  """The loop of `run` over any stages (each stage's `after` names earlier ones)."""
  records, fps = {}, {}
  for stage in stage_list:
    upstream = [fps[a] for a in stage.after]
    if only is None or stage.name in only:
      not_done = [a for a in stage.after if not records[a]["done"]]
      if not_done:
        raise ValueError(
          f"stage {stage.name} needs {', '.join(not_done)}, not done in "
          f"{workdir} with this config; run it first (or leave out --stages)"
        )
      records[stage.name] = run_stage(stage, workdir, upstream, log)
    else:  # not selected: as it stands on disk, or not done if its config changed
      fp = fingerprint(stage.config, upstream)
      record = read_stage(os.path.join(workdir, stage.name))
      done = bool(record and record["fingerprint"] == fp and record["done"])
      records[stage.name] = {
        "fingerprint": fp,
        "done": done,
        "seconds": record["seconds"] if done else 0.0,
      }
    fps[stage.name] = records[stage.name]["fingerprint"]
  return records
