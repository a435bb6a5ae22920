"""gptjax: the ChatGPT recipe end to end in JAX/Flax.

The core (one file each, read top to bottom):
  model.py        the decoder Transformer (linen): GPT-2 or Llama family by config
                  switches, KV cache, parameter/FLOP counts
  heads.py        scalar heads on the trunk: reward model and value model
  sampling.py     the one jitted KV-cache decode loop (eval, chat, rollouts)
  losses.py       LM loss and ranking loss, as totals
  tokenizer.py    the ChatTokenizer interface: sentencepiece BPE (models trained here)
                  and Hugging Face BPE with a model's own chat template (imported ones)
  train.py        the one train loop: Task = model + loss + data; optimizer; steps
  checkpoint.py   Orbax checkpoints: atomic, keep-last-N, exact resume
  metrics.py      JSONL + TensorBoard writer, progress, MFU
  sharding.py     device mesh, logical-axis rules, multi-host init, per-process rows
  memory.py       per-device memory plan of a config and mesh (--print_memory)
  allocator.py    glibc's malloc told to keep the memory XLA frees (entry points)
  install.py      the pip command for a Colab runtime (standard library only)
  config.py       config checks (fields, values) and config.json I/O
  cli.py          what every absl entry point shares: one-line errors, exit 130
  runs.py         a run's workdir: atomic JSON, loading a finished stage

Stages on the one train loop: pretraining.py, sft.py, evaluation.py, chat.py.

Subpackages, one per stage of the recipe or shared service:
  data/          corpora -> tfds array_record -> token streams -> batches
  tasks/         synthetic world, instruction families, oracle, labeler, probes
  reward_model/  comparisons (sampling + labels) and reward-model training
  rlhf/          PPO mathematics, the PPO update, the RLHF loop, DPO, best-of-n, statistics
  scaling/       scaling laws and fits, emergence probes, the sweep grid, sweep, code ablation
  pipeline/      the whole recipe as resumable stages, and its report
  hub/           real checkpoints: GGUF / Hugging Face in, Hugging Face out

Imports point one way: experiments/ -> gptjax; configs/ are data handed in,
never imported by the library.
"""
