"""The benchmark's PyTorch peer and its JSON (no timings are asserted).

Skipped when PyTorch (requirements-test.txt) is absent.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import pretrain as pretrain_configs
from gptjax import model as model_lib

torch = pytest.importorskip("torch")
from experiments import torch_peer  # noqa: E402  (needs torch)

ROOT = Path(__file__).resolve().parent.parent


def jax_param_count(config) -> int:
  model = model_lib.build(config)
  tokens = jax.numpy.zeros((1, 4), jax.numpy.int32)
  return model_lib.count_params(jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"])


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_peer_has_gptjax_parameter_count_and_shapes(preset):
  config = pretrain_configs.get_config(preset)
  peer = torch_peer.from_config(config.model)
  m = config.model
  assert torch_peer.count_params(peer) == jax_param_count(config)
  assert peer.wte.weight.shape == (m.vocab_size, m.d_model)
  assert peer.wpe.weight.shape == (m.max_len, m.d_model)
  assert len(peer.blocks) == m.n_layer
  b = peer.blocks[0]
  assert b.c_attn.weight.shape == (3 * m.d_model, m.d_model)
  assert b.c_fc.weight.shape == (m.d_ff, m.d_model)
  assert b.mlp_proj.weight.shape == (m.d_model, m.d_ff)


def test_peer_initialisation_matches_gptjax_scheme():
  config = pretrain_configs.get_config("small")
  torch.manual_seed(0)
  peer = torch_peer.from_config(config.model)
  L = config.model.n_layer
  assert abs(peer.wte.weight.std().item() - 0.02) < 1e-3
  assert abs(peer.wpe.weight.std().item() - 0.01) < 1e-3
  assert abs(peer.blocks[0].mlp_proj.weight.std().item() - 0.02 / math.sqrt(2 * L)) < 5e-4
  assert peer.blocks[0].c_attn.bias.abs().max().item() == 0
  assert (peer.blocks[0].ln_1.weight == 1).all()


@pytest.mark.parametrize("bf16", [False, True])
def test_peer_loss_at_init_is_log_vocab_and_a_step_lowers_it(bf16):
  config = pretrain_configs.get_config("tiny")
  torch.manual_seed(0)
  peer = torch_peer.from_config(config.model)
  opt = torch_peer.make_optimizer(peer, config.train)
  rng = np.random.default_rng(0)
  V, T = config.model.vocab_size, config.model.max_len
  w = torch.from_numpy(rng.integers(0, V, (4, T + 1)))
  tokens, targets = w[:, :-1], w[:, 1:]
  first = torch_peer.train_step(peer, opt, tokens, targets, bf16=bf16, clip_norm=1.0)
  assert abs(first - math.log(V)) < 0.05
  for _ in range(5):
    last = torch_peer.train_step(peer, opt, tokens, targets, bf16=bf16, clip_norm=1.0)
  assert last < first - 0.01  # it trains: the same batch, five AdamW steps


def test_peer_is_causal():
  config = pretrain_configs.get_config("tiny")
  peer = torch_peer.from_config(config.model).eval()
  t = torch.randint(0, config.model.vocab_size, (1, 10))
  u = t.clone()
  u[0, 6] = (u[0, 6] + 1) % config.model.vocab_size
  with torch.no_grad():
    a, b = peer(t), peer(u)
  torch.testing.assert_close(a[:, :6], b[:, :6])
  assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-4


@pytest.mark.slow  # ~20 s: keeps the fast subset under its 5 minutes
def test_benchmark_writes_the_fields_the_readme_quotes(tmp_path):
  out = tmp_path / "bench.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it
  cmd = [
    sys.executable,
    "-m",
    "experiments.benchmark",
    "--config=configs/pretrain.py:tiny",
    "--compare=torch",
    "--rounds=1",
    "--steps_per_round=1",
    "--steps=1",
    "--peak_size=128",
    "--decode_batches=1",
    "--decode_tokens=4",
    "--recompute_tokens=2",
    f"--out={out}",
  ]
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(out.read_text())
  for k in ("jax_float32", "jax_bfloat16", "jax_bfloat16_f32_accumulate"):
    assert r["matmul_peaks"][k] > 0
  for k in ("torch_float32", "torch_bfloat16"):
    assert r["matmul_peaks"][k] > 0
  assert 0 < r["mfu"] and r["train"]["tokens_per_s"] > 0
  n = r["train"]["params"]
  for dtype in ("float32", "bfloat16"):
    c = r["compare"][dtype]
    assert c["gptjax"]["tokens_per_s"] > 0 and c["torch"]["tokens_per_s"] > 0
    assert c["ratio"] == pytest.approx(c["gptjax"]["tokens_per_s"] / c["torch"]["tokens_per_s"])
    assert 0 < c["gptjax"]["mfu"] and 0 < c["torch"]["mfu"]
    assert c["torch"]["params"] == c["gptjax"]["params"] == n
    assert abs(c["torch"]["loss"] - math.log(512)) < 0.1  # one step from init
    assert abs(c["gptjax"]["loss"] - math.log(512)) < 0.1
  assert r["decode"][0]["batch"] == 1 and r["decode"][0]["kv_cache_tokens_per_s"] > 0
  assert len(r["load_average"]) == 2
  assert "train float32: gptjax" in p.stdout and "ratio" in p.stdout


@pytest.mark.slow  # the session's tiny reward model, then ~30 s
def test_rm_batches_times_the_three_layouts_of_the_same_batches(reward_model_run, tmp_path):
  out = tmp_path / "rm.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  cmd = [
    sys.executable, "-m", "experiments.benchmark", "--compare=rm_batches",
    f"--workdir={reward_model_run}", "--rm_batches=2", "--rounds=1", f"--out={out}",
  ]  # fmt: skip
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(out.read_text())
  layouts = r["layouts"]
  assert list(layouts) == ["stored", "cut", "packed"]
  stored, cut, packed = (layouts[k] for k in layouts)
  assert stored["time_vs_stored"] == 1.0 and packed["tokens_per_s"] > 0
  assert cut["computed_tokens_per_step"] <= stored["computed_tokens_per_step"]
  assert r["real_tokens_per_step"] <= min(d["computed_tokens_per_step"] for d in layouts.values())
  for d in (cut, packed):  # the same first steps from the same params
    np.testing.assert_allclose(d["first_losses"], stored["first_losses"], rtol=1e-4)
  assert "packed" in p.stdout and "time vs stored" in p.stdout
