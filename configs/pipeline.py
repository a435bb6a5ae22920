"""The whole recipe in one config: pretrain -> SFT -> reward model -> RLHF -> report.

Run:
  python -m experiments.pipeline --config=configs/pipeline.py:tiny --workdir=runs/pipeline_tiny
  python -m experiments.pipeline --config=configs/pipeline.py:small --workdir=runs/pipeline_small

Each stage's section is that stage's own config (configs/<stage>.py), so any
field can be overridden from the command line, e.g.
  --config.rlhf.ppo.beta=0.1 --config.sft.train.steps=300

Presets:
  test   seconds per stage: the test suite and the notebook test
  tiny   ~5 minutes on a 2-core CPU; every stage visibly works
  small  the real CPU result (hours)
  base   a TPU v2-8/v3-8 or one GPU
"""

import ml_collections

from configs import pretrain, reward_model, rlhf, sft

PRESETS = ("test", "tiny", "small", "base")


def _stage_preset(preset: str) -> str:
  return "tiny" if preset == "test" else preset


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  p = _stage_preset(preset)
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.pretrain = pretrain.get_config(p + "+world")  # world knowledge comes from pretraining
  c.sft = sft.get_config(p)
  c.reward_model = reward_model.get_config(p)
  c.rlhf = rlhf.get_config(p)
  c.ptx_coef = {"test": 1.0, "tiny": 1.0, "small": 1.0, "base": 1.0}[preset]  # 0 = no PPO-ptx run
  c.report = ml_collections.ConfigDict()
  c.report.n_per_family = {"test": 4, "tiny": 16, "small": 40, "base": 100}[preset]
  c.report.chat_tokens = {"test": 16, "tiny": 24, "small": 48, "base": 96}[preset]
  if preset == "test":
    _shrink_for_tests(c)
  return c


def _shrink_for_tests(c: ml_collections.ConfigDict) -> None:
  """Every stage at the smallest size that still exercises it, on one device
  (tests run with 8 fake CPU devices; 1 avoids collectives on a busy CPU)."""
  for stage in ("pretrain", "sft", "reward_model", "rlhf"):
    c[stage].mesh.num_devices = 1
  c.pretrain.data.max_chars = 120_000
  c.pretrain.data.tokenizer_chars = 100_000
  c.pretrain.train.steps = 60
  c.pretrain.train.eval_every = 60
  c.pretrain.train.ckpt_every = 60
  c.pretrain.train.measure_peak = False
  c.sft.sft.n_demos = 1000
  c.sft.sft.n_heldout = 32
  c.sft.train.steps = 40
  c.sft.train.eval_every = 40
  c.sft.train.ckpt_every = 40
  c.sft.eval.n_per_family = 2
  c.sft.eval.n_degeneration = 8
  c.reward_model.comparisons.n_prompts = 64
  c.reward_model.comparisons.n_heldout = 32
  c.reward_model.rm.epochs = 1.0
  c.reward_model.rm.skip_tied_prompts = True  # the small/base path, exercised end to end
  c.reward_model.eval.data_fractions = ()
  c.rlhf.ppo.iterations = 4
  c.rlhf.ppo.rollout_batch = 16
  c.rlhf.ppo.epochs = 2
  c.rlhf.ppo.minibatches = 2
  c.rlhf.train.log_every = 2
  c.rlhf.train.ckpt_every = 2
  c.rlhf.eval.n_per_family = 2
  c.rlhf.eval.ptx_eval_batches = 1
