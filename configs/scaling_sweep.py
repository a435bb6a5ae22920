"""Scaling-law sweep: a grid of ordinary pretraining runs, fits and emergence probes.

Run:
  python -m experiments.scaling_sweep --config=configs/scaling_sweep.py:tiny \
      --workdir=/tmp/sweep_tiny
  python -m experiments.scaling_sweep --config=configs/scaling_sweep.py:small \
      --workdir=runs/sweep_small --dry_run          # the grid and each point's command
  python -m experiments.scaling_sweep --config=configs/scaling_sweep.py:small \
      --workdir=runs/sweep_small --shard=0/4        # points 0, 4, 8, ... (one machine of 4)
  python -m experiments.scaling_sweep --config=configs/scaling_sweep.py:small \
      --workdir=runs/sweep_small --analyze_only     # results.csv, fits.json, plots, report.md

Presets:
  tiny   4 sizes x 3 compute budgets (10 points of 30-500 steps): CI, a few minutes.
  small  8 sizes (7k to 3.0M non-embedding parameters, 2.6 orders of magnitude)
         x 3 budgets, 1e12 to 1e13 FLOPs (17 points, 9.2e13 FLOPs in all): 2h53m
         of run time on a 2-core CPU shared with another job (README, "Scaling
         sweep"); a 2.5e13 profile would add about three hours.
  base   8 sizes (3M to 680M) x 5 budgets, 1e17 to 1e19 FLOPs: for accelerators.

The grid. Every point is `configs/pretrain.py:<base_preset>` (with `+world`,
so knowledge probes have facts to recall) with `overrides` applied, a model
shape from `sizes`, and `train.steps` chosen so that the run spends one of the
compute `budgets` (FLOPs C = flops_per_token x D, with flops_per_token =
6 N_matmul + 12 n_layer d_model T, see gptjax/scaling.py). A (size, budget)
pair is kept when its step count lies in [min_steps, max_steps]: each budget
thus spans the sizes around its compute-optimal one (an IsoFLOP profile), and
each size appears at several token budgets (L(D)). All points share one
tokenizer, trained once into <workdir>/tokenizer.model.
"""

import ml_collections

from configs import pretrain

PRESETS = ("tiny", "small", "base")


def _size(n_layer: int, d_model: int, n_head: int, lr: float) -> dict:
  return {
    "name": f"L{n_layer}-d{d_model}",
    "n_layer": n_layer,
    "d_model": d_model,
    "n_head": n_head,
    "lr": lr,
  }


def sizes(preset: str) -> list[dict]:
  """Model shapes (d_ff = 4 d_model) and their peak learning rates."""
  if preset == "tiny":
    return [
      _size(1, 16, 2, 3e-3),
      _size(1, 32, 2, 3e-3),
      _size(2, 32, 2, 3e-3),
      _size(2, 64, 4, 3e-3),
    ]
  if preset == "small":
    return [
      _size(1, 24, 2, 3e-3),
      _size(1, 48, 4, 3e-3),
      _size(2, 64, 4, 3e-3),
      _size(2, 96, 4, 2.5e-3),
      _size(3, 128, 4, 2e-3),
      _size(4, 160, 5, 2e-3),
      _size(4, 192, 6, 1.5e-3),
      _size(5, 224, 7, 1.5e-3),
    ]
  return [
    _size(4, 256, 4, 1e-3),
    _size(6, 384, 6, 8e-4),
    _size(8, 512, 8, 7e-4),
    _size(10, 640, 10, 6e-4),
    _size(12, 768, 12, 6e-4),
    _size(16, 1024, 16, 4e-4),
    _size(20, 1280, 20, 3e-4),
    _size(24, 1536, 24, 2.5e-4),
  ]


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  c = ml_collections.ConfigDict()
  c.preset = preset
  # Every point is an ordinary configs/pretrain.py config of this preset ...
  c.base_preset = {"tiny": "tiny+world", "small": "small+world", "base": "base+world"}[preset]
  c.base = pretrain.get_config(c.base_preset)
  # ... with these fields replaced (same nesting as the pretraining config).
  # measure_peak off: the sweep plots loss against FLOPs, not MFU, and on a
  # CPU timing the matmul peak costs as much as a tiny run.
  c.overrides = {
    "tiny": {
      # The sweep measures loss against compute, not chat: keep the 64-token
      # context (tiny+world widens it to 160 for the chat stages).
      "model": {"max_len": 64},
      "train": {"batch_size": 16, "eval_batches": 4, "sample_tokens": 8, "measure_peak": False},
    },
    "small": {
      "model": {"vocab_size": 2048, "max_len": 128},
      "train": {
        "batch_size": 16,
        "eval_batches": 8,
        "sample_tokens": 8,
        "keep_checkpoints": 1,
        "measure_peak": False,
      },
      "data": {"tokenizer_chars": 3_000_000},
    },
    "base": {"train": {"batch_size": 256, "eval_batches": 32}},
  }[preset]
  c.sizes = tuple(sizes(preset))  # a tuple: ml_collections cannot hold a list override
  # Compute budgets in FLOPs (one IsoFLOP profile each), and the step range a
  # point must fall in to be run.
  c.budgets = {
    "tiny": (1e10, 3e10, 1e11),
    "small": (1e12, 3e12, 1e13),
    "base": (1e17, 3e17, 1e18, 3e18, 1e19),
  }[preset]
  c.min_steps = {"tiny": 30, "small": 120, "base": 1000}[preset]
  c.max_steps = {"tiny": 500, "small": 6000, "base": 50_000}[preset]
  c.warmup_fraction = 0.1  # warmup = min(base preset's warmup, fraction x steps)
  c.evals_per_run = 4  # validation evaluations per run (the last at the end)
  c.checkpoints_per_run = 2  # checkpoints per run (the last at the end): resume granularity

  # Emergence probes on each point's final parameters.
  p = ml_collections.ConfigDict()
  p.n = {"tiny": 8, "small": 32, "base": 64}[preset]  # queries per probe
  p.few_shot_k = 3  # demonstrations per query
  p.families = ("add2", "add3", "reverse")  # see gptjax/scaling.PROBES
  p.n_facts = {"tiny": 16, "small": 48, "base": 200}[preset]  # world facts for recall
  p.max_new_tokens = 12
  p.batch_size = 32
  p.seed = 0
  c.probes = p

  # L(N) is fitted on sizes whose largest-budget run saw at least this many
  # tokens per non-embedding parameter (Hoffmann et al.'s compute-optimal ~20);
  # below it a run is data-limited and its loss says little about its size.
  c.fit_min_tokens_per_param = 20.0
  c.bootstrap = {"tiny": 200, "small": 1000, "base": 1000}[preset]  # resamples for CIs
  return c
