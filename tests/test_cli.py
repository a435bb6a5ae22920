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


CONFIGS = ["pretrain", "sft", "reward_model", "rlhf", "pipeline", "scaling_sweep"]


def _leaves(node, prefix=""):
  for k, v in node.items():
    if hasattr(v, "items"):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


@pytest.mark.parametrize("name", CONFIGS)
def test_sequence_fields_are_tuples_so_the_command_line_can_override_them(name):
  """ml_collections overrides tuples from the command line but refuses lists."""
  import importlib
  module = importlib.import_module(f"configs.{name}")
  for preset in module.PRESETS:
    lists = [k for k, v in _leaves(module.get_config(preset)) if isinstance(v, list)]
    assert not lists, f"configs/{name}.py:{preset}: list fields {lists}"


def test_tuple_field_override_parses():
  from absl import flags
  from ml_collections import config_flags
  for value, expected in [("(0.125,)", (0.125,)), ("()", ())]:
    argv = ["prog", "--config=configs/reward_model.py:tiny",
            f"--config.eval.data_fractions={value}"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", "configs/reward_model.py:tiny",
                                    flag_values=fv, sys_argv=argv)
    fv(argv)
    assert fv.config.eval.data_fractions == expected
