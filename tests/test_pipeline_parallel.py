"""Stages side by side (gptjax/pipeline/parallel.py), on a fake recipe whose
stages sleep, fail or wait for a stop signal, each in a process of its own:
dependency order, concurrency, failure, graceful stop and resume."""

import json
import os
import signal
import sys
import textwrap
import threading
import time

import pytest

from gptjax import train
from gptjax.pipeline import parallel, stages as pipeline_lib

# A recipe a -> (b, c) -> d. Each stage records when it ran; `behaviour` (a
# JSON file beside the workdir) makes a stage sleep, fail, or run until a stop.
FAKE = textwrap.dedent(
  """
  import json, os, sys, time
  import ml_collections
  from gptjax import cli, train
  from gptjax.pipeline import stages

  def stage_list(workdir):
    def make(name):
      def run(d):
        how = json.load(open(os.path.join(workdir, "..", "behaviour.json"))).get(name, {})
        t0 = time.time()
        with open(os.path.join(d, "runs.txt"), "a") as f:
          f.write("run\\n")
        with open(os.path.join(d, "pid"), "w") as f:
          f.write(str(os.getpid()))
        print(f"[{name}] started", flush=True)
        if how.get("fail"):
          raise ValueError(f"{name} fails")
        while how.get("until_stop") and not train.stop_requested():
          time.sleep(0.05)
        if train.stop_requested():
          raise KeyboardInterrupt
        time.sleep(how.get("sleep", 0.0))
        print("a line without a prefix", flush=True)
        json.dump([t0, time.time()], open(os.path.join(d, "times.json"), "w"))
      return run
    after = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    return [stages.Stage(n, ml_collections.ConfigDict({"v": n}), make(n), after[n])
            for n in after]

  if __name__ == "__main__":
    cli.graceful_stop_signals()
    workdir, name = sys.argv[1], sys.argv[2]
    try:
      stages.run_stages(stage_list(workdir), workdir, only=[name])
    except KeyboardInterrupt:
      sys.exit(130)
  """
)


@pytest.fixture
def recipe(tmp_path):
  (tmp_path / "fake.py").write_text(FAKE)
  sys.path.insert(0, str(tmp_path))
  import fake

  workdir = tmp_path / "work"
  workdir.mkdir()
  lines = []

  def run(behaviour, jobs=2, only=None, first=()):
    (tmp_path / "behaviour.json").write_text(json.dumps(behaviour))
    command = lambda name: [sys.executable, str(tmp_path / "fake.py"), str(workdir), name]
    return parallel.run(
      fake.stage_list(str(workdir)),
      str(workdir),
      command,
      jobs,
      lines.append,
      only,
      first,
      poll_s=0.05,
    )

  yield run, workdir, lines
  sys.path.remove(str(tmp_path))
  sys.modules.pop("fake", None)
  train.clear_stop()


def _times(workdir, name):
  return json.loads((workdir / name / "times.json").read_text())


def _runs(workdir, name):
  return (workdir / name / "runs.txt").read_text().count("run")


@pytest.mark.slow  # ~8 s: stage processes: the fast subset stays under 5 minutes
def test_independent_stages_run_side_by_side_after_their_upstream(recipe):
  run, workdir, lines = recipe
  records = run({"b": {"sleep": 1.5}, "c": {"sleep": 1.5}})
  assert all(r["done"] for r in records.values())
  a, b, c, d = (_times(workdir, n) for n in "abcd")
  assert b[0] >= a[1] and c[0] >= a[1]  # after their upstream
  assert max(b[0], c[0]) < min(b[1], c[1])  # beside each other
  assert d[0] >= max(b[1], c[1])
  assert "[c] a line without a prefix" in lines  # each child's lines, named
  # The fingerprints chain exactly as one process running them in order would.
  import fake

  sequential = pipeline_lib.run_stages(fake.stage_list(str(workdir)), str(workdir), lambda _: None)
  assert {n: r["fingerprint"] for n, r in sequential.items()} == {
    n: r["fingerprint"] for n, r in records.items()
  }
  # A rerun starts nothing: every stage is done.
  lines.clear()
  run({})
  assert [_runs(workdir, n) for n in "abcd"] == [1, 1, 1, 1]
  assert not any("starting" in line for line in lines)


@pytest.mark.slow
def test_one_process_at_a_time_with_one_job_the_first_named_first(recipe):
  run, workdir, _ = recipe
  run({"b": {"sleep": 0.5}, "c": {"sleep": 0.5}}, jobs=1, first=("c",))
  spans = sorted(_times(workdir, n) for n in "abcd")
  assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))
  assert _times(workdir, "c")[1] <= _times(workdir, "b")[0]  # c before its sibling b


@pytest.mark.slow
def test_a_failed_stage_lets_its_sibling_finish_and_starts_nothing_after(recipe):
  run, workdir, lines = recipe
  with pytest.raises(parallel.StageFailed, match=r"stage b \(exit status 1\) failed"):
    run({"b": {"fail": True}, "c": {"sleep": 1.0}})
  assert (workdir / "c" / "times.json").exists()  # c ran to its end beside b
  assert not (workdir / "d").exists()
  assert any("b fails" in line for line in lines)  # b's own error, in the output
  records = run({})  # fixed: the rerun runs b and d only
  assert all(r["done"] for r in records.values())
  assert [_runs(workdir, n) for n in "abcd"] == [1, 2, 1, 1]


@pytest.mark.slow  # ~10 s: six processes
def test_a_stop_reaches_every_running_stage_and_the_rerun_resumes(recipe):
  run, workdir, _ = recipe

  def stop_when_both_run():
    while not ((workdir / "b" / "runs.txt").exists() and (workdir / "c" / "runs.txt").exists()):
      time.sleep(0.05)
    time.sleep(0.5)
    train.request_stop("SIGTERM")  # what the scheduler's own signal handler does

  threading.Thread(target=stop_when_both_run, daemon=True).start()
  with pytest.raises(KeyboardInterrupt, match="every running stage saved"):
    run({"b": {"until_stop": True}, "c": {"until_stop": True}})
  train.clear_stop()
  records = pipeline_lib.run_stages(
    sys.modules["fake"].stage_list(str(workdir)), str(workdir), lambda _: None, only=["a"]
  )
  assert records["a"]["done"] and not records["b"]["done"] and not records["c"]["done"]
  for name in "bc":  # stopped gracefully: no process named in stage.json
    assert "pid" not in pipeline_lib.read_stage(os.path.join(workdir, name))
  records = run({})
  assert all(r["done"] for r in records.values())
  assert [_runs(workdir, n) for n in "abcd"] == [1, 2, 2, 1]


def _signal_when_running(workdir, name, signum):
  def send():
    while not (workdir / name / "pid").exists():
      time.sleep(0.05)
    time.sleep(0.5)
    os.kill(int((workdir / name / "pid").read_text()), signum)

  threading.Thread(target=send, daemon=True).start()


@pytest.mark.slow
def test_a_killed_stage_is_named_and_nothing_after_it_starts(recipe):
  run, workdir, _ = recipe
  _signal_when_running(workdir, "b", signal.SIGKILL)
  with pytest.raises(parallel.StageFailed, match=r"b \(killed by SIGKILL: out of memory\?\)"):
    run({"b": {"until_stop": True}, "c": {"sleep": 1.0}})
  assert (workdir / "c" / "times.json").exists() and not (workdir / "d").exists()


@pytest.mark.slow
def test_a_stage_stopped_on_its_own_stops_the_pipeline(recipe):
  """SIGTERM sent to one stage's process (not the scheduler's): it saves and
  exits 130, its sibling finishes, nothing after them starts, exit 130."""
  run, workdir, _ = recipe
  _signal_when_running(workdir, "b", signal.SIGTERM)
  with pytest.raises(KeyboardInterrupt, match="every running stage saved"):
    run({"b": {"until_stop": True}, "c": {"sleep": 1.0}})
  assert (workdir / "c" / "times.json").exists() and not (workdir / "d").exists()
  assert not pipeline_lib.read_stage(os.path.join(workdir, "b"))["done"]


@pytest.mark.slow
def test_a_dead_scheduler_takes_its_stages_with_it(tmp_path):
  """PR_SET_PDEATHSIG: a stage's process gets SIGTERM when its scheduler is
  killed outright (kill -9), so nothing runs on unsaved."""
  script = tmp_path / "scheduler.py"
  script.write_text(
    textwrap.dedent(
      f"""
      import sys, time
      sys.path.insert(0, {str(tmp_path)!r})
      from gptjax.pipeline import parallel
      child = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: "
      child += "(open({str(tmp_path / "got")!r}, 'w').write('SIGTERM'), sys.exit(0))); "
      child += "open({str(tmp_path / "ready")!r}, 'w').write('1'); time.sleep(60)"
      import subprocess
      proc = subprocess.Popen([sys.executable, "-c", child], preexec_fn=parallel._die_with_parent())
      time.sleep(60)
      """
    )
  )
  import subprocess

  scheduler = subprocess.Popen([sys.executable, str(script)])
  deadline = time.time() + 60
  while not (tmp_path / "ready").exists() and time.time() < deadline:
    time.sleep(0.05)
  scheduler.kill()
  scheduler.wait()
  got = tmp_path / "got"
  while not (got.exists() and got.read_text()) and time.time() < deadline:
    time.sleep(0.05)
  assert got.read_text() == "SIGTERM"


def test_upstream_not_done_and_bad_jobs_are_named(recipe):
  run, _, _ = recipe
  with pytest.raises(ValueError, match="stage d needs b, c"):
    run({}, only=["d"])
  with pytest.raises(ValueError, match="jobs must be >= 1"):
    run({}, jobs=0)
  with pytest.raises(ValueError, match="Unknown stage"):
    run({}, only=["e"])
