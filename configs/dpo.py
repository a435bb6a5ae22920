"""DPO config: Direct Preference Optimization on the reward model's own comparisons.

Run (after experiments.sft and experiments.reward_model; DPO reads the RM
workdir's comparisons/, not the reward model itself):
  python -m experiments.dpo --config=configs/dpo.py:tiny --sft=runs/sft_tiny \
      --reward_model=runs/rm_tiny --workdir=runs/dpo_tiny
  python -m experiments.dpo --config=configs/dpo.py:tiny --config.dpo.loss=ipo \
      --sft=runs/sft_tiny --reward_model=runs/rm_tiny --workdir=runs/ipo_tiny

beta 0.1 is the DPO paper's; label_smoothing > 0 gives cDPO (a labeler at
~73% agreement flips about a quarter of informative pairs); loss='ipo' gives
IPO. The evaluation section is the RLHF stage's, so DPO, PPO and best-of-n
are judged on the same held-out prompts.
"""

import ml_collections

from configs import common, pretrain as pretrain_configs, rlhf as rlhf_configs

PRESETS = pretrain_configs.PRESETS


def dpo_config(preset: str) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.beta = 0.1  # the implicit reward is beta * log(pi / ref)
  d.loss = "sigmoid"  # 'sigmoid' (DPO; cDPO with label_smoothing > 0) | 'ipo'
  d.label_smoothing = 0.0  # cDPO: assumed probability that a label is flipped
  d.epochs = {"tiny": 2.0, "small": 2.0, "base": 1.0}[preset]  # passes over the prompts
  return d


def train_config(preset: str) -> ml_collections.ConfigDict:
  return common.train_config(
    preset,
    steps=1,  # replaced at run time by dpo.epochs x comparisons / batch_size
    batch_size={"tiny": 16, "small": 16, "base": 64},  # prompts (x K responses)
    lr={"tiny": 1e-4, "small": 1e-5, "base": 1e-6},
    warmup_steps={"tiny": 10, "small": 20, "base": 150},
    weight_decay=0.0,
    min_lr_ratio=1.0,  # constant after warmup (the DPO paper)
    log_every={"tiny": 10, "small": 10, "base": 20},
    eval_every=1000,
    eval_batches=1,  # not read: the held-out comparisons are evaluated whole
    ckpt_every={"tiny": 1000, "small": 100, "base": 500},
    measure_peak=False,
  )


def eval_config(preset: str) -> ml_collections.ConfigDict:
  e = rlhf_configs.eval_config(preset)
  if "ptx_eval_batches" in e:
    del e.ptx_eval_batches  # DPO has no pretraining mix
  return e


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.sft = ""  # SFT workdir: the initial policy and the frozen reference (or --sft)
  c.reward_model = ""  # RM workdir whose comparisons DPO trains on (or --reward_model)
  c.dpo = dpo_config(preset)
  c.train = train_config(preset)
  c.eval = eval_config(preset)
  c.mesh = common.mesh_config()
  return c
