"""SFT config: supervised fine-tuning of a pretrained model on demonstrations.

Run (after pretraining with the world in the mixture, see configs/pretrain.py):
  python -m experiments.pretrain --config=configs/pretrain.py:tiny+world --workdir=/tmp/pt_tiny
  python -m experiments.sft --config=configs/sft.py:tiny --pretrained=/tmp/pt_tiny \
      --workdir=/tmp/sft_tiny

The model's shape, the tokenizer and the synthetic world come from the
pretrained run (its config.json and tokenizer.model); this config holds only
what SFT itself decides: demonstrations, optimisation and evaluation.

Presets: tiny (tests, minutes on a CPU), small (CPU research run), base.
"""

import ml_collections

from configs import common, pretrain as pretrain_configs

PRESETS = pretrain_configs.PRESETS


# Answer budget for chat generation (evaluation, comparisons, rollouts): the
# longest reference demonstration of any family is 63 tokens at tiny
# (arithmetic_cot, 3 digits); the verbose and hedging writers' chains of
# thought run to 82 and are cut (each stage reports its truncations).
MAX_NEW_TOKENS = {"tiny": 64, "small": 96, "base": 128}


def sft_config(preset: str) -> ml_collections.ConfigDict:
  """The demonstrations (InstructGPT's SFT set had ~13k)."""
  s = ml_collections.ConfigDict()
  s.n_demos = 10_000  # spread evenly over the task families
  s.demo_seed = 0
  s.system_prompt = ""  # '' = no system message in the demonstrations
  # Who wrote the demonstrations: 'pool' = the writers' mixture (WRITER_SHARES);
  # 'curated' = the concise-correct reference only (what curation buys).
  s.writers = "pool"
  # Task families of the demonstrations, and of every later stage's
  # comparisons, rollouts and evaluations (they read the SFT run's config);
  # () = all. A released model that does not know the synthetic world takes
  # those that need no knowledge of it (configs/pipeline.py:smollm2).
  s.families = ()
  s.n_heldout = {"tiny": 256, "small": 512, "base": 2048}[preset]  # held-out SFT loss
  return s


def train_config(preset: str) -> ml_collections.ConfigDict:
  return common.train_config(
    preset,
    # tiny: rows of T+1 = 161 tokens hold ~3 conversations, so 250 steps see
    # ~1.2 passes over the 10k demonstrations (as 600 steps did at T = 64).
    steps={"tiny": 250, "small": 400, "base": 2000},
    batch_size=pretrain_configs.BATCH_SIZE,
    lr={"tiny": 1e-3, "small": 3e-4, "base": 3e-5},
    warmup_steps={"tiny": 30, "small": 20, "base": 100},
    weight_decay=0.0,
    log_every={"tiny": 50, "small": 20, "base": 50},
    eval_every={"tiny": 250, "small": 200, "base": 500},
    eval_batches={"tiny": 4, "small": 8, "base": 16},
    ckpt_every={"tiny": 250, "small": 100, "base": 500},
    measure_peak=preset != "tiny",  # the MFU denominator; seconds on a CPU
  )


def eval_config(preset: str) -> ml_collections.ConfigDict:
  """Gold-score evaluation on held-out prompts, before and after SFT."""
  e = ml_collections.ConfigDict()
  e.n_per_family = {"tiny": 16, "small": 50, "base": 200}[preset]
  e.seed = 1  # which held-out prompts
  e.few_shot_k = {"tiny": 1, "small": 3, "base": 5}[preset]
  # How the pretrained model is asked before SFT (the first also gives its
  # degeneration); an imported instruct model: ("chat",).
  e.pretrained_modes = ("zero_shot", "few_shot", "chat")
  e.max_new_tokens = MAX_NEW_TOKENS[preset]
  e.batch_size = {"tiny": 32, "small": 32, "base": 64}[preset]
  # Degeneration (Holtzman et al. 2020): greedy vs nucleus on the same prompts.
  e.n_degeneration = {"tiny": 32, "small": 64, "base": 200}[preset]
  e.degeneration_tokens = {"tiny": 32, "small": 96, "base": 128}[preset]
  e.top_p = 0.9
  return e


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.pretrained = ""  # pretraining workdir (or --pretrained)
  c.sft = sft_config(preset)
  c.train = train_config(preset)
  c.eval = eval_config(preset)
  c.mesh = common.mesh_config()
  return c
