"""Supervised fine-tuning as a composition: pretrained run -> demonstrations -> Task.

Mirrors `gptjax.pretraining`: `experiments/sft.py` is its command line.

Data. Each demonstration (`gptjax.tasks.instructions.make_mixture`) becomes a
conversation in the chat template,

  <s> [<|system|> sys <|end_turn|>] <|user|> prompt <|end_turn|> <|assistant|> response <|end_turn|>

with loss on the assistant's tokens only: the response and its closing
<|end_turn|>, which is how the model learns to stop. Conversations are packed
whole into rows of T+1 tokens (never split; longer ones are dropped); position
ids restart at every conversation and segment ids keep attention inside it,
so each conversation computes exactly what it would alone (what chat sees).
Batch `step` is a pure function of (seed, step), as in pretraining.

Warm start. The pretrained run's config.json gives the model shape, the
optimizer (needed to read its TrainState checkpoint) and the world; its
params become the SFT Task's `init_params`.
"""

import dataclasses
import json
import os
from typing import Sequence

import ml_collections
import numpy as np

from gptjax import (
  config as config_lib,
  evaluation,
  losses,
  metrics as metrics_lib,
  runs,
  train,
)
from gptjax.tasks import competence, instructions, writers as writers_lib
from gptjax.tokenizer import Tokenizer

# ----------------------------------------------------------------------------
# Demonstrations -> token rows.


chat_messages = evaluation.chat_messages  # one definition, next to chat_prompt_ids


def render(
  tokenizer: Tokenizer, prompt: str, response: str, system: str = ""
) -> tuple[list[int], list[int]]:
  """(ids, mask): one conversation; mask is 1 on the assistant's tokens.

  ids == tokenizer.encode_chat(messages + [assistant turn]); the mask covers
  the response and its <|end_turn|>, not <|assistant|> (that is the prompt).
  """
  head = evaluation.chat_prompt_ids(tokenizer, prompt, system)
  answer = tokenizer.encode(response) + [tokenizer.end_turn_id]
  return head + answer, [0] * len(head) + [1] * len(answer)


@dataclasses.dataclass
class PackedRows:
  ids: np.ndarray  # [N, T+1] int32, pad_id after the last conversation
  mask: np.ndarray  # [N, T+1] float32, 1 on assistant tokens
  positions: np.ndarray  # [N, T+1] int32, restarting at each conversation
  segments: np.ndarray  # [N, T+1] int32, 1, 2, ... per conversation, 0 on padding
  n_conversations: int
  n_dropped: int  # conversations longer than T+1 tokens

  def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs of the given rows: next-token targets, mask on targets."""
    ids, mask, pos = self.ids[rows], self.mask[rows], self.positions[rows]
    return {
      "tokens": ids[:, :-1],
      "targets": ids[:, 1:],  # [B, T] each
      "loss_mask": mask[:, 1:],
      "positions": pos[:, :-1],
      "segment_ids": self.segments[rows][:, :-1],
    }


def pack(
  conversations: Sequence[tuple[list[int], list[int]]], length: int, pad_id: int
) -> PackedRows:
  """Greedily packs whole conversations, in order, into rows of `length` tokens."""
  rows, row = [], []
  dropped = 0
  for ids, mask in conversations:
    if len(ids) > length:
      dropped += 1
      continue
    if sum(len(c[0]) for c in row) + len(ids) > length:
      rows.append(row)
      row = []
    row.append((ids, mask))
  if row:
    rows.append(row)
  out_ids = np.full((len(rows), length), pad_id, np.int32)
  out_mask = np.zeros((len(rows), length), np.float32)
  out_pos = np.zeros((len(rows), length), np.int32)
  out_seg = np.zeros((len(rows), length), np.int32)
  for r, convs in enumerate(rows):
    start = 0
    for k, (ids, mask) in enumerate(convs, 1):
      end = start + len(ids)
      out_ids[r, start:end] = ids
      out_mask[r, start:end] = mask
      out_pos[r, start:end] = np.arange(len(ids))
      out_seg[r, start:end] = k
      start = end
  return PackedRows(out_ids, out_mask, out_pos, out_seg, len(conversations) - dropped, dropped)


def demonstration_rows(
  examples: Sequence[instructions.Example], tokenizer: Tokenizer, seq_len: int, system: str = ""
) -> PackedRows:
  """Packed rows of T+1 = seq_len+1 tokens from instruction examples."""
  convs = [render(tokenizer, e.prompt, e.response, system) for e in examples]
  return pack(convs, seq_len + 1, tokenizer.pad_id)


WRITER_CHOICES = ("pool", "curated")


def demo_writers(choice: str):
  """sft.writers -> make_mixture's `writers`: 'pool' = the writers' mixture
  (WRITER_SHARES), 'curated' = the concise-correct reference alone (None)."""
  if choice not in WRITER_CHOICES:
    raise ValueError(f"sft.writers must be one of {WRITER_CHOICES}, got {choice!r}")
  return writers_lib.WRITER_SHARES if choice == "pool" else None


def drops_by_family(
  examples: Sequence[instructions.Example], tokenizer: Tokenizer, seq_len: int, system: str = ""
) -> dict[str, dict[str, int]]:
  """{family: {'n', 'dropped'}}: demonstrations longer than the T+1-token rows
  (`pack` drops them whole; this says which families lose them)."""
  length = competence.chat_length(tokenizer, system)
  _, dropped = competence.fit_budget(examples, length, seq_len + 1)
  out = {f: {"n": 0, "dropped": 0} for f in sorted({e.family for e in examples})}
  for e in examples:
    out[e.family]["n"] += 1
  for e in dropped:
    out[e.family]["dropped"] += 1
  return out


def batch_rows(step: int, batch_size: int, n_rows: int, seed: int) -> np.ndarray:
  """Row indices of batch `step`: epochs of seeded permutations, [B]."""
  flat = np.arange(step * batch_size, (step + 1) * batch_size)
  epochs, offsets = flat // n_rows, flat % n_rows
  out = np.empty(batch_size, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng((seed, int(e))).permutation(n_rows)
    out[epochs == e] = perm[offsets[epochs == e]]
  return out


# ----------------------------------------------------------------------------
# The Task.


def validate(config) -> None:
  config_lib.validate_train(config.train)
  runs.families_of(config)  # raises for an unknown family
  modes = tuple(config.eval.get("pretrained_modes", evaluation.MODES_PRETRAINED))
  config_lib.require(
    bool(modes) and set(modes) <= set(evaluation.MODES),
    "eval.pretrained_modes",
    modes,
    f"a non-empty subset of {evaluation.MODES}",
  )
  config_lib.require(config.sft.n_demos > 0, "sft.n_demos", config.sft.n_demos, "> 0")
  config_lib.require(
    config.eval.n_per_family > 0, "eval.n_per_family", config.eval.n_per_family, "> 0"
  )
  config_lib.require(
    config.sft.get("writers", "pool") in WRITER_CHOICES,
    "sft.writers",
    config.sft.get("writers"),
    str(WRITER_CHOICES),
  )


def resolve(config, pretrained: runs.LoadedRun, pretrained_dir: str) -> ml_collections.ConfigDict:
  """The SFT config plus the pretrained run's model and data sections, so the
  SFT workdir describes itself (chat and later stages load it alone)."""
  out = config_lib.copy(config)
  out.pretrained = os.path.abspath(pretrained_dir)
  out.model = config_lib.copy(pretrained.config.model)
  out.data = config_lib.copy(pretrained.config.data)
  return out


def build_task(
  config, model, rows: PackedRows, heldout: PackedRows, init_params, sample=None, log=print
) -> train.Task:
  """Next-token loss on assistant tokens, warm-started from `init_params`."""
  t = config.train
  seq_len = rows.ids.shape[1] - 1
  example = rows.batch(np.arange(1))

  def eval_batches():
    for start in range(0, min(len(heldout.ids), t.eval_batches * t.batch_size), t.batch_size):
      idx = np.arange(start, start + t.batch_size) % len(heldout.ids)
      yield heldout.batch(idx)

  def on_eval(params, step):
    if sample is not None:
      for line in sample(params, step):
        log(f"  sample> {line}")
    return {}

  return train.Task(
    name="sft",
    model=model,
    loss_fn=losses.lm_loss_fn(model),
    train_batch=lambda step: rows.batch(batch_rows(step, t.batch_size, len(rows.ids), config.seed)),
    # a process of a multi-host run gathers only its own rows of the global batch
    local_batch=lambda step, r: rows.batch(
      batch_rows(step, t.batch_size, len(rows.ids), config.seed)[r]
    ),
    example_batch=example,
    tokens_per_step=t.batch_size * seq_len,
    eval_sets={"heldout": eval_batches},
    init_params=lambda rng: init_params,
    on_eval=on_eval,
  )


def run(config, workdir: str, pretrained_dir: str | None = None, log=print):
  """Pretrained run -> eval -> SFT -> eval. Returns (state, summary, report).

  Writes into `workdir`: config.json (resolved), tokenizer.model (the
  pretrained run's), checkpoints/, metrics.jsonl and eval.json.
  """
  pretrained_dir = pretrained_dir or config.pretrained
  if not pretrained_dir:
    raise ValueError(
      "SFT needs a pretrained run: pass --pretrained=<pretrain workdir> or set config.pretrained."
    )

  def resolve_upstream(c):
    base = runs.load_run(pretrained_dir)
    log(f"[sft] pretrained {base.config.preset} run {pretrained_dir} at step {base.step}")
    return resolve(c, base, pretrained_dir), base

  with runs.prepare_stage(
    config, workdir, validate=validate, resolve=resolve_upstream, tokenizer_from=pretrained_dir
  ) as stage:
    return _fine_tune(stage.config, stage.workdir, stage.upstream, log)


def _fine_tune(config, workdir: str, base: runs.LoadedRun, log):
  """Demonstrations -> eval of the pretrained model -> SFT -> eval -> eval.json."""
  tokenizer, world, seq_len = base.tokenizer, runs.world_of(config), config.model.max_len
  s = config.sft
  writers, families = demo_writers(s.get("writers", "pool")), runs.families_of(config)
  train_examples = instructions.make_mixture(
    world, s.n_demos, s.demo_seed, "train", families, writers=writers
  )
  heldout_examples = instructions.make_mixture(
    world, s.n_heldout, s.demo_seed, "heldout", families, writers=writers
  )
  rows = demonstration_rows(train_examples, tokenizer, seq_len, s.system_prompt)
  heldout = demonstration_rows(heldout_examples, tokenizer, seq_len, s.system_prompt)
  drops = drops_by_family(train_examples, tokenizer, seq_len, s.system_prompt)
  lost = {f: d["dropped"] for f, d in drops.items() if d["dropped"]}
  log(
    f"[sft] {rows.n_conversations:,} demonstrations in {len(rows.ids):,} rows of "
    f"{seq_len + 1} tokens ({int(rows.mask.sum()):,} assistant tokens); {rows.n_dropped} "
    f"longer than the context dropped{' ' + str(lost) if lost else ''}"
  )
  evaluator = evaluation.Evaluator(
    base.model,
    tokenizer,
    world,
    config.eval,
    system=s.system_prompt,
    families=families,
    stop_check=lambda: train.check_stop("sft", "during an evaluation", workdir),
  )
  before = _evaluate_pretrained(evaluator, base.params, workdir, log)
  train.check_stop("sft", "after evaluating the pretrained model", workdir)
  sample_prompts = [e.prompt for e in heldout_examples[:2]]
  task = build_task(
    config,
    base.model,
    rows,
    heldout,
    base.params,
    sample=lambda p, step: evaluator.chat_samples(p, sample_prompts),
    log=log,
  )
  state, summary = train.run(config, workdir, task, log=log)

  log("[sft] evaluating the SFT model ...")
  after = evaluator.evaluate(state.params, modes=("chat",), degeneration_mode="chat")
  writer = metrics_lib.MetricsWriter(workdir, tensorboard=False)
  writer.drop_split("gold_sft")  # a rerun of a finished run evaluates again
  writer.write(summary["steps"], "gold_sft", **evaluation.flat_scores(after))
  writer.close()
  report = {
    "pretrained": before,
    "sft": after,
    "table": evaluation.family_table(before, after),
    "data": {
      "demonstrations": rows.n_conversations,
      "dropped": rows.n_dropped,
      "dropped_per_family": drops,
      "writers": s.get("writers", "pool"),
      "rows": int(len(rows.ids)),
      "assistant_tokens": int(rows.mask.sum()),
    },
    "steps": summary["steps"],
    "last_eval": summary.get("last_eval", {}),
  }
  runs.write_json(os.path.join(workdir, "eval.json"), report)
  log(evaluation.format_table({"pretrained": before, "sft": after}))
  return state, summary, report


def _evaluate_pretrained(evaluator, params, workdir: str, log) -> dict:
  """Gold scores of the pretrained model, once (eval_pretrained.json holds them)."""
  path = os.path.join(workdir, "eval_pretrained.json")
  if os.path.exists(path):  # resumed run: evaluated already
    with open(path) as f:
      before = json.load(f)
  else:
    log("[sft] evaluating the pretrained model ...")
    modes = tuple(evaluator.cfg.get("pretrained_modes", evaluation.MODES_PRETRAINED))
    # degeneration (open-ended continuations) in the first mode: a base model's own
    before = evaluator.evaluate(params, modes=modes, degeneration_mode=modes[0])
    writer = metrics_lib.MetricsWriter(workdir, tensorboard=False)
    writer.drop_split("gold_pretrained")  # a run killed before it wrote the file below
    writer.write(0, "gold_pretrained", **evaluation.flat_scores(before))
    writer.close()
    runs.write_json(path, before)
  log(evaluation.format_table({"pretrained": before}))
  return before
