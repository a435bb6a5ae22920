"""Best-of-n config: SFT samples on the held-out prompts, reranked by the RM and the oracle.

Run (after experiments.sft and experiments.reward_model):
  python -m experiments.best_of_n --config=configs/best_of_n.py:tiny --sft=runs/sft_tiny \
      --reward_model=runs/rm_tiny --workdir=runs/best_of_n_tiny
  python -m experiments.best_of_n --config=configs/best_of_n.py:small \
      --config.best_of_n.ns="(1, 4, 16, 64)" --sft=runs/sft_small \
      --reward_model=runs/rm_small --workdir=runs/best_of_n_small

max(ns) answers per prompt are sampled once; smaller n are exact averages
over all n-subsets of them. The evaluation section is the RLHF stage's, so
best-of-n, PPO and DPO are judged on the same prompts.
"""

import ml_collections

from configs import pretrain as pretrain_configs, rlhf as rlhf_configs

PRESETS = pretrain_configs.PRESETS


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0  # bootstrap resampling
  c.sft = ""  # SFT workdir: the policy that samples (or --sft)
  c.reward_model = ""  # RM workdir: the picker (or --reward_model)
  c.best_of_n = ml_collections.ConfigDict()
  c.best_of_n.ns = (1, 4, 16)  # n = 1 is the SFT policy's own T = 1 samples
  c.best_of_n.seed = 0  # sampling
  c.eval = rlhf_configs.eval_config(preset)
  if "ptx_eval_batches" in c.eval:
    del c.eval.ptx_eval_batches
  return c
