"""Workdirs written by an earlier layout of the package keep working.

tests/fixtures/pre_restructure/ was written by commit 506ee95 (the flat
package, before the subpackages): a 4-step pretraining workdir on one CPU
device (1 layer, d_model 16, checkpoint at step 4) and the pipeline's stage
configs and fingerprints for the test, tiny and small presets. A pipeline workdir skips a
finished stage only when its fingerprint is unchanged, and a pretraining
workdir resumes only if its checkpoint restores into today's state (and then
trains on as a fresh run of today's code would, to float32 rounding).
"""

import json
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from conftest import REPO

from gptjax import config as config_lib, pretraining
from gptjax.pipeline import stages as pipeline_lib

FIXTURE = REPO / "tests" / "fixtures" / "pre_restructure"

pytestmark = pytest.mark.usefixtures("jax_compilation_cache")


@pytest.mark.parametrize("preset", ["test", "tiny", "small"])
def test_pipeline_fingerprints_of_old_stage_configs_are_unchanged(preset):
  """A stage finished under the old layout is skipped when its config is unchanged:
  today's fingerprint of each stored stage config equals the one written then."""
  old = json.loads((FIXTURE / "pipeline_fingerprints.json").read_text())["presets"][preset]
  for name, stage in old["stages"].items():
    config = ml_collections.ConfigDict(stage["config"])
    upstream = [old["fingerprints"][a] for a in stage["after"]]
    assert pipeline_lib.fingerprint(config, upstream) == old["fingerprints"][name], name


def _config(steps: int):
  config = config_lib.load(str(FIXTURE / "pretrain" / "config.json"))
  config.mesh.num_devices = 1  # as written: one device
  config.train.steps = steps
  config.train.eval_every = steps
  return config


@pytest.mark.slow  # ~10 s: the fast subset stays under 5 minutes
def test_old_pretraining_workdir_resumes(tmp_path, data_cache_dir):
  old = tmp_path / "old"
  shutil.copytree(FIXTURE / "pretrain", old)
  lines = []
  resumed, summary, _, _ = pretraining.run(_config(6), str(old), str(data_cache_dir), lines.append)
  assert any("resumed" in line and "at step 4" in line for line in lines), lines
  assert summary["steps"] == 6

  # The same 6 steps from scratch with today's code, on the old run's tokenizer.
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  shutil.copy(FIXTURE / "pretrain" / "tokenizer.model", fresh / "tokenizer.model")
  straight, _, _, _ = pretraining.run(_config(6), str(fresh), str(data_cache_dir), lambda _: None)
  # Equal to float32 rounding, not bit for bit: the old run's first 4 steps
  # summed the weight gradients in autodiff's operand order, today's code in
  # model._weight_gradient's (session 13; same sums, other rounding, which
  # Adam's normalised steps carry to ~7e-8 in the parameters near zero). An
  # update here is ~5e-4 (lr 6e-4 in the warmup), so a wrong data position or
  # state would fail this by far. A resume with unchanged code is bit-identical
  # (test_reliability).
  for a, b in zip(
    jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(straight.params)
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
