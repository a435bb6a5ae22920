"""Code-data ablation: one model, one token budget, code fraction x seeds, then the same SFT.

Run:
  python -m experiments.code_ablation --config=configs/code_ablation.py:tiny \
      --workdir=/tmp/ablation_tiny
  python -m experiments.code_ablation --config=configs/code_ablation.py:small \
      --workdir=runs/ablation_small --shard=0/2      # half the runs (another process: 1/2)
  python -m experiments.code_ablation --config=configs/code_ablation.py:small \
      --workdir=runs/ablation_small --analyze_only   # summary.json, report.md, plots

Presets:
  tiny   L2-d32 (45k parameters), 61k tokens per run, 4 arms x 3 seeds: the
         end-to-end test's scale; it says nothing about code (minutes in all).
  small  L4-d128 (1.0M parameters with a 2048-piece vocabulary, T = 128),
         3.1M tokens per run (~3 tokens per parameter), 4 arms x 3 seeds: a run
         (pretraining at ~10k tokens/s, SFT, probes) takes 9-12 minutes on a 2-core
         CPU, the 12 runs about two hours (measured; see the README).
  base   GPT-2 small shape for accelerators.

Every point is `configs/pretrain.py:<preset>+world` with `overrides`, the mixture
replaced by `code_fractions` (the rest of the base mixture keeps its
proportions), `seed` from `seeds` and 'stratified' mixture sampling; `tokens`
fixes train.steps. `sft` is `configs/sft.py:<preset>` with fewer steps and
evaluations; `probes` sizes the probes (gptjax/scaling/code_probes.py).
"""

import ml_collections

from configs import pretrain, sft as sft_configs

PRESETS = ("tiny", "small", "base")

SIZES = {  # (name, n_layer, d_model, n_head)
  "tiny": ("L2-d32", 2, 32, 2),
  "small": ("L4-d128", 4, 128, 4),
  "base": ("L12-d768", 12, 768, 12),
}


def overrides(preset: str) -> dict:
  name, n_layer, d_model, n_head = SIZES[preset]
  model = {"n_layer": n_layer, "d_model": d_model, "n_head": n_head, "d_ff": 4 * d_model}
  train = {"eval_batches": 4, "sample_tokens": 8, "measure_peak": False, "keep_checkpoints": 1}
  data = {}
  if preset == "tiny":
    data = {"max_chars": 60_000, "tokenizer_chars": 60_000}
    model.update(vocab_size=512, max_len=64)
    train.update(batch_size=16, lr=3e-3)
  elif preset == "small":
    data = {"tokenizer_chars": 3_000_000}
    model.update(vocab_size=2048, max_len=128)
    train.update(batch_size=16, lr=2e-3, eval_batches=8)
  return {"model": model, "train": train, "data": data}


def sft_config(preset: str) -> ml_collections.ConfigDict:
  """configs/sft.py:<preset> with a budget matched to the pretraining runs."""
  c = sft_configs.get_config(preset)
  if preset == "tiny":
    c.sft.n_demos, c.sft.n_heldout = 400, 32
    c.train.update(steps=20, warmup_steps=4, log_every=10, eval_every=20, ckpt_every=20)
    c.train.update(eval_batches=1, measure_peak=False)
    c.eval.update(n_per_family=2, max_new_tokens=8, n_degeneration=4, degeneration_tokens=8)
  elif preset == "small":
    c.train.update(steps=200, eval_every=200, ckpt_every=100, measure_peak=False)
    c.eval.update(n_per_family=16, max_new_tokens=48, n_degeneration=16)
  return c


def probes_config(preset: str) -> ml_collections.ConfigDict:
  p = ml_collections.ConfigDict()
  p.n = {"tiny": 4, "small": 24, "base": 64}[preset]  # items per group (distance, steps, ...)
  p.seed = 0
  # Synthetic nesting: filler items between opener and closer (a few tokens each).
  p.nested_distances = {"tiny": (2, 6, 12), "small": (2, 4, 8, 16, 32), "base": (2, 8, 32, 128)}[
    preset
  ]
  # Real code / prose: bins of opener-to-closer distance in characters (upper edges),
  # reported in tokens with these bin edges.
  p.char_spans = {"tiny": (10, 40, 100), "small": (10, 30, 80, 200), "base": (10, 40, 160, 640)}[
    preset
  ]
  p.token_bins = (2, 4, 8, 16, 32, 64, 128, 256)
  p.state_steps = {"tiny": (1, 2, 4), "small": (1, 2, 4, 8), "base": (1, 2, 4, 8, 16)}[preset]
  p.arith_digits = (1, 2) if preset == "tiny" else (1, 2, 3)
  p.few_shot_families = ("reverse", "count", "brackets")
  p.few_shot_k = 2 if preset == "tiny" else 3
  p.max_new_tokens = 4  # closers and values are one or two tokens
  p.cot_tokens = {"tiny": 24, "small": 48, "base": 64}[preset]  # answers after SFT
  p.batch_size = 32
  return p


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.base_preset = f"{preset}+world"  # the world's facts, so SFT's QA families make sense
  c.base = pretrain.get_config(c.base_preset)
  # 'stratified' in every point (gptjax/data/packing.py): the realised code fraction is exact.
  c.base.data.mixture_sampling = "random"
  c.overrides = overrides(preset)
  c.size_name = SIZES[preset][0]
  c.code_fractions = (0.0, 0.1, 0.25, 0.5)
  c.seeds = (0, 1, 2)
  # Training tokens per run: a multiple of batch_size x max_len.
  c.tokens = {"tiny": 60 * 16 * 64, "small": 1500 * 16 * 128, "base": 20_000 * 512 * 1024}[preset]
  c.warmup_fraction = 0.1
  c.evals_per_run = 2
  c.checkpoints_per_run = 2
  c.sft = sft_config(preset)
  c.probes = probes_config(preset)
  c.level = 0.95  # confidence level of the intervals
  return c
