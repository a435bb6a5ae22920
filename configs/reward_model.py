"""Reward-model config: comparisons from the SFT policy, ranking loss, evaluation.

Run (after SFT):
  python -m experiments.reward_model --config=configs/reward_model.py:tiny \
      --sft=runs/sft_tiny --workdir=runs/rm_tiny
  python -m experiments.reward_model --config=configs/reward_model.py:small \
      --config.comparisons.k=9 --sft=runs/sft_small --workdir=runs/rm_small_k9

The reward model is the SFT model's trunk with a scalar head (InstructGPT).
`rm.init_from` names another pretrain/SFT workdir to start from instead, e.g.
a smaller model than the policy (same tokenizer and context length).
"""

import ml_collections

from configs import common, pretrain as pretrain_configs, sft as sft_configs

PRESETS = pretrain_configs.PRESETS


def comparisons_config(preset: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Responses ranked per prompt (InstructGPT: 4 to 9). Pairs grow as K^2 while
  # sampling grows as K: tiny/small at K = 8 get ~4x the informative pairs of
  # K = 4 for 2x the samples (tiny, K = 4 x 1024 prompts: 1,123 informative
  # pairs; 81% of pairs are gold ties).
  c.k = {"tiny": 8, "small": 8, "base": 4}[preset]
  c.n_prompts = {"tiny": 2048, "small": 2000, "base": 20000}[preset]
  c.n_heldout = {"tiny": 256, "small": 300, "base": 2000}[preset]
  c.labeler_agreement = 0.73  # target pairwise agreement with the gold order
  c.labeler_noise = -1.0  # < 0: calibrate to labeler_agreement on the samples
  # The labeler says "tie" when perceived scores lie this close (gold units;
  # equal gold is always a tie): ~7% of pairs of different gold are tied.
  c.tie_margin = 0.1
  c.max_new_tokens = sft_configs.MAX_NEW_TOKENS[preset]
  c.sample_batch = {"tiny": 64, "small": 64, "base": 256}[preset]
  c.seed = 0
  return c


def rm_config(preset: str) -> ml_collections.ConfigDict:
  r = ml_collections.ConfigDict()
  r.init_from = ""  # '' = the SFT workdir (--sft)
  # Passes over the training prompts. InstructGPT used 1 (more overfits at
  # scale); the CPU presets see few informative pairs and need a few.
  r.epochs = {"tiny": 2.0, "small": 4.0, "base": 1.0}[preset]
  # Train only on prompts where the labeler preferred some response (it ties
  # equally good, usually equally wrong, answers; tied pairs are masked in
  # the loss, so all-tied prompts add nothing but compute). Chosen from the
  # labels, never from gold.
  r.skip_tied_prompts = True
  # Early stopping: this share of the training prompts is a validation set,
  # and the checkpoint (every eval_every steps) with the best agreement with
  # the labeler on it is kept.
  r.validation_fraction = 0.1
  r.eval_every = {"tiny": 20, "small": 50, "base": 200}[preset]
  # Training ends once this many evaluations in a row bring no better
  # agreement (0: all rm.epochs). The kept checkpoint is the same as without
  # it unless a later evaluation would have beaten the best one so far.
  r.patience = {"tiny": 0, "small": 2, "base": 2}[preset]
  return r


def train_config(preset: str) -> ml_collections.ConfigDict:
  return common.train_config(
    preset,
    steps=1,  # replaced at run time by rm.epochs x comparisons / batch_size
    batch_size={"tiny": 16, "small": 16, "base": 64},  # prompts (x K sequences)
    lr={"tiny": 1e-3, "small": 1e-4, "base": 9e-6},
    warmup_steps={"tiny": 5, "small": 10, "base": 50},
    weight_decay=0.0,
    log_every={"tiny": 5, "small": 10, "base": 20},
    eval_every=1000,
    eval_batches=1,  # not read: the held-out comparisons are evaluated whole
    ckpt_every=1000,
    measure_peak=False,
  )


def eval_config(preset: str) -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  # Data-scaling curve: extra reward models trained on these fractions of the
  # training comparisons (the full set is the main model). [] to skip.
  e.data_fractions = {"tiny": (0.25,), "small": (0.125, 0.25, 0.5), "base": (0.25, 0.5)}[preset]
  e.calibration_bins = 10
  return e


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.sft = ""  # SFT workdir (or --sft)
  c.comparisons = comparisons_config(preset)
  c.rm = rm_config(preset)
  c.train = train_config(preset)
  c.eval = eval_config(preset)
  c.mesh = common.mesh_config()
  return c
