"""Pretraining config: a GPT-2-family decoder on English prose + Python code.

Run:
  python -m experiments.pretrain --config=configs/pretrain.py:tiny --workdir=runs/tiny
  python -m experiments.pretrain --config=configs/pretrain.py:small \
      --config.model.n_layer=4 --workdir=runs/small

Presets:
  tiny   ~100k params, seconds per hundred steps: tests, CI, laptops.
  small  ~14M params, a useful CPU research run in an hour.
  base   GPT-2 small (124M), for accelerators.

The synthetic world (gptjax.tasks.world) is a third source, off by default.
SFT, the reward model and RLHF need a pretrained model that read it (its
facts must come from pretraining), so add `+world` to the preset:

  python -m experiments.pretrain --config=configs/pretrain.py:tiny+world \
      --workdir=/tmp/pretrain_tiny_world

which sets data.mixture to WORLD_MIXTURE. Any other weights work too:
  --config.data.mixture="{'english': 0.45, 'code': 0.25, 'world': 0.3}"

`+llama` switches the architecture to the Llama family (rotary positions,
RMSNorm, SwiGLU, grouped-query attention with half as many key/value heads,
no biases; see gptjax/model.py), e.g. `tiny+world+llama`; each switch can
then be overridden (`--config.model.n_kv_head=1`).
"""

import ml_collections

from configs import common

PRESETS = common.PRESETS
DEFAULT_MIXTURE = {"english": 0.7, "code": 0.3}
WORLD_MIXTURE = {"english": 0.45, "code": 0.25, "world": 0.3}  # the `+world` presets
EXTRAS = ("world", "llama")


def llama_switches(m: ml_collections.ConfigDict) -> dict:
  """The `+llama` architecture switches for a model section (gptjax.model.ARCH_DEFAULTS)."""
  return {
    "position": "rope",
    "rope_theta": 10000.0,
    "norm": "rmsnorm",
    "norm_eps": 1e-5,
    "mlp": "swiglu",
    "n_kv_head": max(1, m.n_head // 2),
    "tied_head": True,
    "use_bias": False,
  }


def model_config(preset: str) -> ml_collections.ConfigDict:
  """The Transformer's shape; `vocab_size` must equal the tokenizer's."""
  m = ml_collections.ConfigDict()
  m.vocab_size = {"tiny": 512, "small": 8192, "base": 32768}[preset]
  m.max_len = {"tiny": 64, "small": 256, "base": 1024}[preset]
  m.n_layer = {"tiny": 2, "small": 6, "base": 12}[preset]
  m.n_head = {"tiny": 4, "small": 6, "base": 12}[preset]
  m.d_model = {"tiny": 64, "small": 384, "base": 768}[preset]
  m.d_ff = 4 * m.d_model
  m.dropout = {"tiny": 0.0, "small": 0.0, "base": 0.1}[preset]
  m.dtype = "float32"  # activations: float32 | bfloat16
  m.param_dtype = "float32"  # parameters:  float32 | bfloat16
  return m


def data_config(preset: str) -> ml_collections.ConfigDict:
  """Sources, mixture weights and tokenizer training."""
  d = ml_collections.ConfigDict()
  # Source names: 'english' (embedded prose), 'code' (the running
  # interpreter's standard library), 'dir:<path>' (any local folder of
  # text/code files), 'tfds:<name>' (a tfds catalog dataset, needs internet),
  # 'world' (the synthetic world's facts; the `+world` presets add it).
  d.mixture = dict(DEFAULT_MIXTURE)
  # Cap on training characters per source (0 = everything); keeps tiny runs fast.
  # Validation keeps val_fraction of that (see gptjax.data.sources.split_cap).
  d.max_chars = {"tiny": 400_000, "small": 0, "base": 0}[preset]
  d.val_fraction = 0.05  # of documents, chosen by a hash of their id
  d.tfds_dir = ""  # '' = <cache_dir>/tfds (default ~/.cache/gptjax/tfds)
  d.tokenizer_chars = {"tiny": 300_000, "small": 6_000_000, "base": 20_000_000}[preset]
  # The 'world' source: one pass writes every known fact in 13 templates
  # (~560k characters for 240 entities); SFT and evaluation rebuild the same
  # world from these fields of the pretraining run's config.json.
  d.world_seed = 0
  d.world_entities = 240  # known entities (plus 30 unknown, 30 held out)
  d.world_passes = {"tiny": 1, "small": 4, "base": 20}[preset]
  return d


# The pretraining schedule; fine-tuning stages state their own (configs/common.py).
STEPS = {"tiny": 300, "small": 800, "base": 100_000}  # small: ~1 h on 2 CPU cores
BATCH_SIZE = {"tiny": 16, "small": 16, "base": 512}  # global, sequences
LR = {"tiny": 3e-3, "small": 1e-3, "base": 6e-4}
EVAL_EVERY = {"tiny": 100, "small": 200, "base": 2000}
EVAL_BATCHES = {"tiny": 4, "small": 8, "base": 32}


def train_config(preset: str) -> ml_collections.ConfigDict:
  return common.train_config(
    preset,
    steps=STEPS,
    batch_size=BATCH_SIZE,
    lr=LR,
    warmup_steps={"tiny": 30, "small": 80, "base": 2000},
    log_every={"tiny": 25, "small": 20, "base": 100},
    eval_every=EVAL_EVERY,
    eval_batches=EVAL_BATCHES,
    ckpt_every={"tiny": 100, "small": 100, "base": 2000},
    sample_tokens={"tiny": 32, "small": 96, "base": 128},
    measure_peak=True,
  )


mesh_config = common.mesh_config

# The `+world` presets feed SFT, the reward model and RLHF, whose chat
# conversations must fit whole: at tiny (vocab 512, ~1.3 characters per
# token) the longest default demonstration is 119 tokens (arithmetic_cot,
# verbose writer), the longest prompt 95 (format around a count question),
# and prompt + max_new_tokens (64) must fit, so T = 160 instead of 64.
# Half the sequences per step keep pretraining's compute about the same
# (1,280 tokens per step instead of 1,024).
WORLD_MAX_LEN = {"tiny": 160}
WORLD_BATCH_SIZE = {"tiny": 8}


def _fit_chat_context(c: ml_collections.ConfigDict) -> None:
  if c.preset in WORLD_MAX_LEN:
    c.model.max_len = WORLD_MAX_LEN[c.preset]
    c.train.batch_size = WORLD_BATCH_SIZE[c.preset]


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  """`preset` is one of PRESETS, optionally with extras `+world` and/or `+llama`
  (e.g. 'tiny+world', 'tiny+world+llama')."""
  name, *extras = preset.split("+")
  if name not in PRESETS or any(e not in EXTRAS for e in extras) or len(set(extras)) < len(extras):
    raise ValueError(
      f"Unknown preset {preset!r}; choose one of {PRESETS}, optionally with "
      f"{' and/or '.join('+' + e for e in EXTRAS)} (e.g. 'tiny+world')."
    )
  preset = name
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.model = model_config(preset)
  if "llama" in extras:
    c.model.update(llama_switches(c.model))
  c.data = data_config(preset)
  if "world" in extras:
    c.data.mixture = dict(WORLD_MIXTURE)
  c.train = train_config(preset)
  if "world" in extras:
    _fit_chat_context(c)
  c.mesh = mesh_config()
  c.sample_prompts = ("The ", "def ", "import ")
  return c
