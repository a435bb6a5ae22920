"""gptjax.files: atomic writes that sibling processes of one job cannot tear."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gptjax import files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_processes_writing_one_file_interleaved_both_succeed(tmp_path, monkeypatch):
  """Process A opens its temporary, B opens its own, A renames, B renames: both
  succeed (with one shared temporary name, B's rename found nothing), the
  file holds the last writer's bytes, and no temporary is left. The two have
  the same pid, as processes on two hosts of one job may."""
  path = tmp_path / "result.json"
  monkeypatch.setattr(os, "getpid", lambda: 7)
  a = files.atomic_path(path)
  tmp_a = a.__enter__()
  with files.atomic_path(path) as tmp_b:
    assert tmp_b != tmp_a
    with open(tmp_a, "w") as f:
      f.write("A")
    with open(tmp_b, "w") as f:
      f.write("B")
    a.__exit__(None, None, None)
    assert path.read_text() == "A"
  assert path.read_text() == "B"
  assert os.listdir(tmp_path) == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "config.json"
  files.write_text(path, "old")
  with pytest.raises(RuntimeError), files.atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write("half")
    raise RuntimeError("crash mid-write")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("name", ["a.npz", "a.npy"])
def test_the_temporary_keeps_the_extension_numpy_infers_from(tmp_path, name):
  """np.save / np.savez append '.npy' / '.npz' to a name without it: the
  temporary carries the extension, so the rename finds what numpy wrote."""
  path = tmp_path / name
  with files.atomic_path(path) as tmp:
    if name.endswith(".npz"):
      np.savez(tmp, x=np.arange(3))
    else:
      np.save(tmp, np.arange(3))
  loaded = np.load(path)
  np.testing.assert_array_equal(loaded["x"] if name.endswith(".npz") else loaded, np.arange(3))
  assert os.listdir(tmp_path) == [name]


SAVER = textwrap.dedent("""
  import sys
  import numpy as np
  from gptjax.reward_model import comparisons as comp_lib
  P, K, T = 16, 4, 24
  rng = np.random.default_rng(0)
  c = comp_lib.Comparisons(
    rng.integers(0, 100, (P, K, T)).astype(np.int32), np.ones((P, K, T), bool),
    np.tile(np.arange(K, dtype=np.int32), (P, 1)), np.zeros((P, K), np.float32),
    ["p"] * P, [["r"] * K] * P, ["f"] * P)
  for _ in range(100):
    c.save(sys.argv[1])
""")


def test_two_processes_saving_the_same_comparisons_do_not_race(tmp_path):
  """Both processes of a two-process reward-model run sample the same
  comparisons and save them into the one workdir, at about the same moment.
  With shared temporary names this failed (FileNotFoundError on the rename)
  within 200 saves each; it once killed a two-process CI run."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", SAVER, str(tmp_path / "comparisons")], cwd=REPO, env=env,
      stderr=subprocess.PIPE, text=True,
    )
    for _ in range(2)
  ]  # fmt: skip
  errs = [p.communicate(timeout=300)[1] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], errs
  assert sorted(os.listdir(tmp_path / "comparisons")) == ["comparisons.jsonl", "comparisons.npz"]
