"""Independent pipeline stages side by side: a process per stage, up to `jobs` at once.

After SFT the recipe is a graph, not a line: the curated SFT needs only the
pretrained model and the demonstrations; PPO, PPO-ptx, DPO and best-of-n need
only SFT and the reward model. One small model's stage rarely keeps both of a
2-core CPU's cores busy (the tiny pipeline's processes used 0.9 of them), so
two stages at once finish the recipe sooner with the same numbers: each stage
is still one process running its own deterministic program on XLA's usual
thread pool, and it writes exactly what it writes when it runs alone.

`run` starts `command(stage)` (the pipeline's own command line with
`--stages=<stage>`) for every stage whose upstream stages are done, most
upstream first, and re-prints each child's output a whole line at a time, with
the stage's name in front of lines that do not start with it. Stop signals: the children
run in their own sessions, so a Ctrl-C or SIGTERM reaches this process only;
it passes one SIGTERM to every child (each saves and exits 130, the usual
graceful stop), waits for them and exits 130; a second signal passes a second
SIGTERM (abort without saving). If this process is killed outright, Linux
sends every child SIGTERM (PR_SET_PDEATHSIG), so nothing is left running
unsaved. A stage that fails lets the others running beside it finish, starts
nothing new, and the error names it.
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

from gptjax import metrics as metrics_lib, train
from gptjax.pipeline import stages as stages_lib

CHILD_ENV = "GPTJAX_PIPELINE_STAGE"  # set in each stage's process: the stage it runs
STOPPED = 130  # a child's exit status after a graceful stop (gptjax.cli)


class StageFailed(RuntimeError):
  """A stage's process exited with an error (its output says which)."""


def _die_with_parent():
  """A preexec_fn that asks Linux to SIGTERM the child when its parent dies
  (PR_SET_PDEATHSIG), or None elsewhere. libc is loaded here, in the parent:
  between fork and exec the child only calls the function (no dlopen, whose
  locks another thread of this process may hold at the fork)."""
  if sys.platform != "linux":
    return None
  try:
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
  except OSError:
    return None
  return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _relay(proc: subprocess.Popen, name: str, lock: threading.Lock, log) -> None:
  """Re-prints a child's output line by line (whole lines: no interleaving)."""
  for raw in proc.stdout:
    line = raw.rstrip("\n")
    if not line.startswith((f"[{name}]", "[pipeline]")):
      line = f"[{name}] {line}"  # e.g. PPO-ptx's lines say [rlhf]: say which run
    with lock:
      log(line)
      sys.stdout.flush()  # a pipeline's log file follows its stages as they go


def plan(
  stage_list: Sequence[stages_lib.Stage], workdir: str, only: Sequence[str] | None = None
) -> tuple[dict, list[str]]:
  """(fingerprints, stages to run): every stage's fingerprint as `run_stages`
  chains them, and the selected stages not done on disk, in order."""
  fps, todo = {}, []
  for stage in stage_list:
    fps[stage.name] = stages_lib.fingerprint(stage.config, [fps[a] for a in stage.after])
    if not _done(workdir, stage.name, fps[stage.name]) and (only is None or stage.name in only):
      todo.append(stage.name)
  return fps, todo


def run(
  stage_list: Sequence[stages_lib.Stage],
  workdir: str,
  command: Callable[[str], list[str]],
  jobs: int,
  log=print,
  only: Sequence[str] | None = None,
  first: Sequence[str] = (),
  poll_s: float = 0.2,
) -> dict:
  """Runs the stages not yet done, up to `jobs` processes at once; returns
  {stage: stage.json record} like `stages.run_stages`.

  command(name): the argv of a process that runs stage `name` alone (and
  writes its stage.json). `first`: stages to start before the others when
  several are ready (the longest, so that the short ones fill in beside them);
  the rest in `stage_list` order. Raises KeyboardInterrupt after a stop signal (once
  every child has saved), StageFailed if a stage's process failed.
  """
  if jobs < 1:
    raise ValueError(f"jobs must be >= 1, got {jobs}")
  after = {s.name: s.after for s in stage_list}
  unknown = [n for n in only or () if n not in after]
  if unknown:
    raise ValueError(f"Unknown stage(s) {unknown}; stages are {', '.join(after)}")
  fps, todo = plan(stage_list, workdir, only)
  done = {name for name in after if name not in todo and _done(workdir, name, fps[name])}
  blocked = [n for n in todo for a in after[n] if a not in done and a not in todo]
  if blocked:
    raise ValueError(
      f"stage {blocked[0]} needs {', '.join(a for a in after[blocked[0]] if a not in done)}, "
      f"not done in {workdir} with this config; run it first (or leave out --stages)"
    )
  for name in after:
    if name in done and (only is None or name in only):
      log(f"[pipeline] {name}: done, skipped")
  running: dict[str, subprocess.Popen] = {}
  relays: list[threading.Thread] = []
  lock = threading.Lock()
  failed: list[str] = []
  stopped: list[str] = []
  signalled = 0
  die_with_parent = _die_with_parent()
  t0 = time.perf_counter()
  try:
    while todo or running:
      if train.stop_requested() and not signalled:
        signalled = 1
        for proc in running.values():
          proc.send_signal(signal.SIGTERM)
      ready = [n for n in todo if all(a in done for a in after[n])]
      ready.sort(key=lambda n: list(first).index(n) if n in first else len(first))
      while ready and len(running) < jobs and not (failed or stopped or signalled):
        name = ready.pop(0)
        todo.remove(name)
        with lock:
          log(f"[pipeline] starting {name} ({len(running) + 1} running)")
        proc = subprocess.Popen(
          command(name),
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
          bufsize=1,
          start_new_session=True,  # terminal signals reach the scheduler only
          preexec_fn=die_with_parent,
          env={**os.environ, "PYTHONUNBUFFERED": "1", CHILD_ENV: name},
        )
        running[name] = proc
        relays.append(threading.Thread(target=_relay, args=(proc, name, lock, log), daemon=True))
        relays[-1].start()
      if not running:
        break  # stopped or failed before everything was started
      for name, proc in list(running.items()):
        rc = proc.poll()
        if rc is None:
          continue
        del running[name]
        if rc == 0 and _done(workdir, name, fps[name]):
          done.add(name)
        elif rc == 0:
          failed.append(f"{name} (exited without finishing)")
        elif rc == STOPPED:  # a stop signal (ours, or sent to the stage's process)
          stopped.append(name)
        elif rc < 0:
          hint = ": out of memory?" if rc == -signal.SIGKILL else ""  # the OOM killer's
          failed.append(f"{name} (killed by {signal.Signals(-rc).name}{hint})")
        else:
          failed.append(f"{name} (exit status {rc})")
      time.sleep(poll_s)
  except KeyboardInterrupt:  # a second signal: the children abort too
    for proc in running.values():
      proc.send_signal(signal.SIGTERM)
    for proc in running.values():
      proc.wait()
    raise
  finally:
    for r in relays:
      r.join(timeout=5)
  elapsed = metrics_lib.format_seconds(time.perf_counter() - t0)
  log(f"[pipeline] {len(done)} of {len(after)} stages done; wall time {elapsed}")
  if failed:
    raise StageFailed(f"stage {', '.join(failed)} failed: its error is in the output above")
  if signalled or stopped or train.stop_requested():
    raise KeyboardInterrupt("stopped: every running stage saved; rerun the command to resume")
  return {s.name: _record(workdir, s.name, fps[s.name]) for s in stage_list}


def run_pipeline(
  config,
  workdir: str,
  command: Callable[[str], list[str]],
  jobs: int,
  cache_dir: str | None = None,
  log=print,
  only: Sequence[str] | None = None,
) -> dict:
  """`stages.run` with up to `jobs` stages at once, the longest first."""
  workdir, stage_list = stages_lib.prepare(config, workdir, cache_dir, log)
  return run(stage_list, workdir, command, jobs, log, only, first=stages_lib.LONGEST_FIRST)


def _record(workdir: str, name: str, fp: str) -> dict:
  """The stage's stage.json if it holds this fingerprint, else a not-done record."""
  record = stages_lib.read_stage(os.path.join(workdir, name))
  if record and record["fingerprint"] == fp:
    return {"fingerprint": fp, "done": bool(record["done"]), "seconds": record["seconds"]}
  return {"fingerprint": fp, "done": False, "seconds": 0.0}


def _done(workdir: str, name: str, fp: str) -> bool:
  return _record(workdir, name, fp)["done"]
