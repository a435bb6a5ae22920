"""RLHF config: PPO against the reward model with a per-token KL penalty.

Run (after SFT and the reward model):
  python -m experiments.rlhf --config=configs/rlhf.py:tiny --sft=runs/sft_tiny \
      --reward_model=runs/rm_tiny --workdir=runs/rlhf_tiny
  python -m experiments.rlhf --config=configs/rlhf.py:small --config.ppo.ptx_coef=1.0 \
      --sft=runs/sft_small --reward_model=runs/rm_small --workdir=runs/rlhf_small_ptx

Defaults follow InstructGPT / Ziegler et al. where they transfer: gamma 1,
lambda 0.95, clip 0.2, 4 PPO epochs, fixed beta 0.02 (or the adaptive
controller), critic initialised from the reward model.
"""

import ml_collections

from configs import common, pretrain as pretrain_configs, sft as sft_configs

PRESETS = pretrain_configs.PRESETS


def ppo_config(preset: str) -> ml_collections.ConfigDict:
  p = ml_collections.ConfigDict()
  p.iterations = {"tiny": 40, "small": 40, "base": 1000}[preset]
  p.rollout_batch = {"tiny": 64, "small": 64, "base": 512}[preset]  # prompts per iteration
  p.max_new_tokens = {"tiny": 24, "small": 48, "base": 96}[preset]
  p.epochs = 4  # PPO passes over each rollout
  p.minibatches = 4  # per pass
  p.clip_eps = 0.2
  p.value_clip_eps = 0.2
  p.gamma = 1.0
  p.lam = 0.95
  p.kl_controller = "fixed"  # 'fixed' | 'adaptive' (Ziegler et al. 2019)
  p.beta = {"tiny": 0.05, "small": 0.2, "base": 0.02}[preset]
  p.kl_target = 6.0  # adaptive: target KL (nats per response)
  p.kl_horizon = 10000  # adaptive: samples over which beta moves by up to 20%
  p.truncation_penalty = (
    -1.0
  )  # score for responses without the stop token; use_... = False keeps RM
  p.use_truncation_penalty = True
  p.whiten_rewards = False  # normalise final scores over each rollout batch
  p.reward_clip = 0.0  # clip final scores to [-c, c]; 0 = off
  p.ptx_coef = 0.0  # PPO-ptx: gamma_ptx * LM loss on pretraining batches
  p.ptx_batch_size = {"tiny": 8, "small": 8, "base": 32}[preset]
  p.value_init = "reward_model"  # 'reward_model' (InstructGPT) | 'policy' (policy trunk + new head)
  p.policy_lr = {"tiny": 3e-4, "small": 2e-5, "base": 1e-5}[preset]
  p.value_lr = {"tiny": 3e-4, "small": 5e-5, "base": 1e-5}[preset]
  p.rounds = 1  # iterated RLHF: sample, relabel, retrain the RM, continue
  p.rm_steps_per_round = {"tiny": 24, "small": 100, "base": 500}[preset]
  p.seed = 0
  return p


def train_config(preset: str) -> ml_collections.ConfigDict:
  """Optimizer settings shared by policy and critic. PPO decides the rest
  (ppo.*_lr, steps = iterations x epochs x minibatches), so steps, batch_size,
  lr, eval_every and eval_batches are not read; they keep the pretraining
  values that earlier workdirs and the pipeline's stage fingerprints hold."""
  return common.train_config(
    preset,
    steps=pretrain_configs.STEPS,
    batch_size=pretrain_configs.BATCH_SIZE,
    lr=pretrain_configs.LR,
    warmup_steps=10,
    weight_decay=0.0,
    min_lr_ratio=1.0,  # constant after warmup
    log_every={"tiny": 5, "small": 5, "base": 10},  # iterations
    eval_every=pretrain_configs.EVAL_EVERY,
    eval_batches=pretrain_configs.EVAL_BATCHES,
    ckpt_every={"tiny": 20, "small": 10, "base": 50},  # iterations
    measure_peak=False,
  )


def eval_config(preset: str) -> ml_collections.ConfigDict:
  e = sft_configs.eval_config(preset)
  e.n_per_family = {"tiny": 16, "small": 40, "base": 200}[preset]
  e.ptx_eval_batches = {"tiny": 4, "small": 8, "base": 16}[preset]  # pretraining val loss
  return e


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.sft = ""  # SFT workdir: initial policy and frozen reference (or --sft)
  c.reward_model = ""  # reward-model workdir (or --reward_model)
  c.ppo = ppo_config(preset)
  c.train = train_config(preset)
  c.eval = eval_config(preset)
  c.mesh = common.mesh_config()
  return c
