"""Scaling-law fits, IsoFLOP analysis, the sweep grid's shards, and a resumable tiny sweep."""

import json
import math
import os
import re

import numpy as np
import pytest

from configs import scaling_sweep as sweep_configs
from gptjax.scaling import grid, laws, probes as scaling_probes, sweep

# ----------------------------------------------------------------------------
# Fits recover known laws.


@pytest.mark.parametrize("E,A,alpha", [(1.7, 40.0, 0.35), (2.0, 10.0, 0.15), (0.9, 300.0, 0.6)])
def test_power_law_fit_recovers_known_law(E, A, alpha):
  rng = np.random.default_rng(0)
  N = np.geomspace(1e4, 1e7, 20)
  clean = E + A * N**-alpha
  noisy = clean * (1 + 0.002 * rng.standard_normal(len(N)))
  out = laws.fit_with_ci(N, noisy, n_boot=200, seed=1)
  fit = out["fit"]
  assert fit["alpha"] == pytest.approx(alpha, rel=0.15)
  assert fit["E"] == pytest.approx(E, rel=0.1)
  assert fit["A"] == pytest.approx(A, rel=0.5)  # A trades off against alpha
  lo, hi = out["ci"]["alpha"]
  assert lo <= alpha <= hi and hi - lo < alpha
  # The fitted curve reproduces the clean law well inside the noise.
  assert np.max(np.abs(laws.PowerLaw(**fit)(N) - clean) / clean) < 0.01


def test_pure_power_law_is_exact_on_a_straight_line():
  D = np.geomspace(1e5, 1e9, 8)
  law = laws.fit_pure_power_law(D, 12.0 * D**-0.095)
  assert law.alpha == pytest.approx(0.095, abs=1e-9) and law.A == pytest.approx(12.0)
  assert law.E == 0.0


def test_bootstrap_interval_covers_truth_in_most_repetitions():
  truth, hits = 0.3, 0
  for seed in range(10):
    rng = np.random.default_rng(100 + seed)
    N = np.geomspace(1e3, 1e6, 12)
    y = 2.0 + 20.0 * N**-truth + 0.01 * rng.standard_normal(len(N))
    lo, hi = laws.fit_with_ci(N, y, n_boot=100, seed=seed)["ci"]["alpha"]
    hits += lo <= truth <= hi
  assert hits >= 8


def test_fit_rejects_bad_input():
  with pytest.raises(ValueError):
    laws.fit_power_law([1, 2], [3.0, 2.0])
  with pytest.raises(ValueError):
    laws.fit_power_law([1, -2, 3], [3.0, 2.0, 1.0])


# ----------------------------------------------------------------------------
# IsoFLOP (approach 2) recovers known exponents.


def _synthetic_isoflop(a, b, noise, seed=0, n_runs=7):
  """Loss parabolas in log N around N_opt = kN C^a; D = C / (6 N)."""
  rng = np.random.default_rng(seed)
  budgets = []
  for C in np.geomspace(1e15, 1e19, 5):
    n_opt = 0.1 * C**a
    N = n_opt * np.geomspace(1 / 8, 8, n_runs) * np.exp(0.1 * rng.standard_normal(n_runs))
    D = C / (6 * N)
    loss = 2.0 + 0.3 * np.log(C) ** -0.5 + 0.08 * np.log(N / n_opt) ** 2
    loss = loss + noise * rng.standard_normal(n_runs)
    budgets.append({"C": C, "N": N, "D": D, "loss": loss})
  return budgets


@pytest.mark.parametrize("a", [0.5, 0.73])
def test_isoflop_approach2_recovers_exponents(a):
  b = 1 - a  # D = C / 6N
  res = laws.isoflop_analysis(_synthetic_isoflop(a, b, noise=0.003), n_boot=200, seed=0)
  assert res["a"] == pytest.approx(a, abs=0.03)
  assert res["b"] == pytest.approx(b, abs=0.03)
  assert res["ci"]["a"][0] <= a <= res["ci"]["a"][1]
  assert res["ci"]["b"][0] <= b <= res["ci"]["b"][1]
  assert all(o["interior"] for o in res["optima"])
  n, d = laws.optimal_at(res, 1e17)
  assert 6 * n * d == pytest.approx(1e17, rel=0.15)


def test_isoflop_exact_parabola_vertex():
  p = laws.fit_parabola(
    [1e3, 1e4, 1e5, 1e6], [3 + (z - math.log(3e4)) ** 2 for z in np.log([1e3, 1e4, 1e5, 1e6])]
  )
  assert p.x_opt == pytest.approx(3e4, rel=1e-6) and p.loss_opt == pytest.approx(3.0)


def test_frontier_is_the_running_minimum():
  c, l = laws.frontier([4, 1, 3, 2, 5], [2.0, 5.0, 3.0, 4.0, 2.5])
  assert c.tolist() == [1, 2, 3, 4] and l.tolist() == [5.0, 4.0, 3.0, 2.0]


def test_grid_accounting_by_hand():
  """A tiny sweep size's counts and FLOPs per token, counted by hand (model.py does the
  counting; the grid only builds the abstract parameter tree)."""
  config = sweep_configs.get_config("tiny").base.copy_and_resolve_references()
  config.model.update(n_layer=2, d_model=32, n_head=2, d_ff=128)
  V, T, L, D, F = config.model.vocab_size, config.model.max_len, 2, 32, 128
  per_block = (4 * D) + (D * 3 * D + 3 * D) + (D * D + D) + (D * F + F) + (F * D + D)
  non_embedding = L * per_block + 2 * D  # blocks (2 LayerNorms each) + the final LayerNorm
  assert grid.param_counts(config.model) == (
    non_embedding,
    non_embedding + V * D + T * D,
    non_embedding + V * D,  # the tied LM head is a matmul; the position embedding is not
  )
  assert grid.flops_per_token(config) == 6 * (non_embedding + V * D) + 12 * L * D * T


# ----------------------------------------------------------------------------
# Probes' scoring pieces.


def test_logprob_batch_marks_target_positions():
  b = scaling_probes.logprob_batch([[2, 10, 11], [2]], [[20, 21], [30]], max_len=6, pad_id=0)
  assert b["tokens"].tolist() == [[2, 10, 11, 20, 21, 0], [2, 30, 0, 0, 0, 0]]
  # logits at position i score token i + 1
  assert b["predict"].tolist() == [
    [False, False, True, True, False, False],
    [True, False, False, False, False, False],
  ]
  logits = np.zeros([2, 6, 40])
  logits[0, 2, 20] = logits[0, 3, 21] = logits[1, 0, 30] = 50.0  # certain of the gold
  lp = scaling_probes.target_logprobs(logits, b["tokens"], b["predict"])
  assert lp == pytest.approx([0.0, 0.0], abs=1e-9)
  uniform = scaling_probes.target_logprobs(np.zeros([2, 6, 40]), b["tokens"], b["predict"])
  assert uniform == pytest.approx([-math.log(40)] * 2)


def test_probe_items_are_well_formed():
  from gptjax.tasks.world import make_world

  world = make_world(0)
  add2 = scaling_probes.probe_items(world, "add2", 6, 3)
  assert len(add2) == 6
  for it in add2:
    q = it.prompt.rsplit("Q: ", 1)[1]
    a, b = (int(t) for t in re.findall(r"\d+", q))
    assert 10 <= a <= 99 and 10 <= b <= 99 and ("plus" in q or "+" in q or "Add" in q)
    assert it.context.endswith("A: The answer is") and it.target == f" {a + b}"
    assert scaling_probes.exact_match(it, f" The answer is {a + b}.\n\nQ: next")
    assert not scaling_probes.exact_match(it, f" The answer is {a + b + 1}.")
    assert it.prompt.count("Q: ") == 4  # 3 demonstrations + the query
  facts = scaling_probes.probe_items(world, "facts", 5, 3)
  assert all(it.target.startswith(" ") and it.context == it.prompt for it in facts)
  assert scaling_probes.exact_match(facts[0], facts[0].target + ". More text")
  rev = scaling_probes.probe_items(world, "reverse", 4, 3)
  assert all(it.context == it.prompt and it.target == " " + it.gold for it in rev)


# ----------------------------------------------------------------------------
# The grid and its shards.


def test_small_grid_spans_two_orders_of_magnitude():
  points = sweep.make_points(sweep_configs.get_config("small"))
  Ns = sorted({p.N for p in points})
  assert len(Ns) >= 6 and Ns[-1] / Ns[0] >= 100
  budgets = {p.budget for p in points}
  assert len(budgets) >= 3
  for b in budgets:  # every IsoFLOP profile can hold a parabola
    assert sum(p.budget == b for p in points) >= 3
  for p in points:
    assert p.flops == pytest.approx(p.budget, rel=0.05)
    assert p.config.data.mixture["world"] > 0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 20])
def test_shards_partition_the_grid(n):
  points = sweep.make_points(sweep_configs.get_config("tiny"))
  shards = [grid.shard(points, i, n) for i in range(n)]
  names = [p.name for s in shards for p in s]
  assert sorted(names) == sorted(p.name for p in points)  # union = all
  assert len(names) == len(set(names))  # pairwise disjoint
  assert [p.index for p in shards[0]] == list(range(0, len(points), n))


def test_parse_shard_rejects_bad_specs():
  assert grid.parse_shard("2/5") == (2, 5)
  for bad in ("5/5", "-1/2", "1", "a/b", "0/0"):
    with pytest.raises(ValueError):
      grid.parse_shard(bad)


def test_dry_run_commands_name_every_override():
  config = sweep_configs.get_config("tiny")
  p = sweep.make_points(config)[0]
  cmd = grid.point_command(p, config.base_preset, "/tmp/x")
  assert cmd.startswith("python -m experiments.pretrain --config=configs/pretrain.py:tiny+world")
  for k, v in p.overrides.items():
    assert f"--config.{k}={v}" in cmd


# ----------------------------------------------------------------------------
# A two-point tiny sweep: interrupted, resumed, the finished point skipped.


def _two_point_config():
  config = sweep_configs.get_config("tiny")
  config.sizes = config.sizes[:2]
  config.budgets = [3e9]  # ~37 and ~15 steps
  config.min_steps, config.max_steps = 10, 40
  config.overrides.data = {"max_chars": 60_000, "tokenizer_chars": 60_000}
  config.overrides.train.eval_batches = 2
  config.overrides.mesh = {"num_devices": 1}  # no collectives on the 8 fake devices
  config.probes.n, config.probes.n_facts, config.probes.batch_size = 4, 4, 8
  config.probes.families = ("add2",)
  config.probes.max_new_tokens = 6
  config.bootstrap = 20
  return config


@pytest.mark.slow
def test_tiny_sweep_resumes_and_skips_finished_points(tmp_path, data_cache_dir):
  config = _two_point_config()
  points = sweep.make_points(config)
  assert len(points) == 2 and all(10 <= p.config.train.steps <= 40 for p in points)
  workdir = str(tmp_path / "sweep")

  # "Interrupted" after the first point: only shard 0/2 ran.
  lines = []
  status = sweep.run_sweep(config, workdir, data_cache_dir, (0, 2), log=lines.append)
  assert status["ran"] == [points[0].name] and not status["failed"]
  done0 = os.path.join(workdir, "points", points[0].name, "done.json")
  mtime = os.stat(done0).st_mtime_ns
  assert not os.path.exists(os.path.join(workdir, "points", points[1].name, "done.json"))

  # Resume the whole grid: point 0 is skipped (not retrained), point 1 runs.
  lines = []
  status = sweep.run_sweep(config, workdir, data_cache_dir, (0, 1), log=lines.append)
  assert status["skipped"] == [points[0].name] and status["ran"] == [points[1].name]
  assert os.stat(done0).st_mtime_ns == mtime
  assert any(f"skipped {points[0].name}" in l for l in lines)
  assert not any(f"[{points[0].name}]" in l for l in lines)  # no training log of point 0
  for p in points:
    rec = json.load(open(os.path.join(workdir, "points", p.name, "done.json")))
    assert rec["steps"] == p.config.train.steps and math.isfinite(rec["final_eval"]["mixed/loss"])
    assert set(rec["probes"]) == {"add2", "facts"}
    # All points share the sweep's tokenizer.
    assert (
      open(os.path.join(workdir, "points", p.name, "tokenizer.model"), "rb").read()
      == open(os.path.join(workdir, "tokenizer.model"), "rb").read()
    )

  # A failing point is recorded and the sweep goes on.
  broken = sweep.make_points(config)
  broken[1].config.train.lr = -1.0  # fails validation at start
  os.remove(os.path.join(workdir, "points", points[1].name, "done.json"))
  status = sweep.run_sweep(config, workdir, data_cache_dir, (0, 1), log=lines.append, points=broken)
  assert [f["name"] for f in status["failed"]] == [points[1].name]
  assert os.path.exists(os.path.join(workdir, "points", points[1].name, "error.txt"))

  # Analysis works with what finished and lists what did not.
  fits = sweep.analyze(config, workdir, log=lines.append)
  assert fits["n_runs"] == 1 and fits["missing"][0]["state"] == "failed"
  for name in ("results.csv", "fits.json", "report.md"):
    assert os.path.exists(os.path.join(workdir, name))


def test_l_of_n_leaves_out_data_limited_sizes():
  # Converged sizes follow L = 2 + 30 N^-0.3; the largest size saw 2 tokens per
  # parameter and sits far above the law (the compute grid's largest model).
  rows = []
  for i, (N, tokens) in enumerate([(1e4, 1e6), (3e4, 2e6), (1e5, 4e6), (3e5, 8e6), (1e6, 2e6)]):
    converged = tokens / N >= 20
    loss = 2 + 30 * N**-0.3 if converged else 4.5
    rows.append(
      {
        "name": f"r{i}",
        "size": f"s{i}",
        "N": N,
        "n_params": 2 * N,
        "tokens": tokens,
        "budget": 1e12,
        "flops": 6 * N * tokens,
        "final_eval": {"mixed/loss": loss},
      }
    )
  fits = sweep.compute_fits(rows, n_boot=50, min_tokens_per_param=20)
  assert fits["L_N"]["runs"] == ["r0", "r1", "r2", "r3"]
  assert fits["L_N"]["data_limited"] == {"s4": 2.0}
  assert fits["L_N"]["offset"]["fit"]["alpha"] == pytest.approx(0.3, abs=0.02)
  everything = sweep.compute_fits(rows, n_boot=50)  # threshold 0: every size
  assert len(everything["L_N"]["runs"]) == 5 and not everything["L_N"]["data_limited"]
