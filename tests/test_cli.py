"""Bad command lines fail at start with one line naming the problem, not a traceback."""

import pytest

from conftest import run_entry_point


@pytest.mark.parametrize("module,args,expected", [
    ("experiments.pretrain", ["--config=configs/pretrain.py:tiny", "--config.model.n_layerz=4"],
     ['--config.model.n_layerz=4: unknown config field n_layerz', 'did you mean "n_layer"']),
    ("experiments.pretrain", ["--config=configs/pretrain.py:tiny", "--config.model.n_layer=abc"],
     ["--config.model.n_layer=abc", "invalid literal for int()"]),
    ("experiments.pretrain", ["--config=configs/pretrain.py:tinyy"],
     ["Unknown preset 'tinyy'"]),
    ("experiments.rlhf", ["--config=configs/rlhf.py:tiny", "--config.ppo.betaa=0.1"],
     ["--config.ppo.betaa=0.1: unknown config field betaa", 'did you mean "beta"']),
])
def test_bad_override_is_one_clear_line(module, args, expected, tmp_path):
  proc = run_entry_point(module, *args, f"--workdir={tmp_path / 'w'}", timeout=120)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  first = proc.stderr.splitlines()[0]
  assert first.startswith("FATAL Flags parsing error:")
  for piece in expected:
    assert piece in first, first
  assert not (tmp_path / "w").exists()   # nothing was started, nothing written
