"""SFT: chat template round trip and truncation, loss mask, data, and a tiny run."""

import json

import numpy as np
import pytest

from configs import sft as sft_configs
from gptjax import evaluation, sft
from gptjax.tasks import instructions, make_world

CONVERSATION = [
  {"role": "system", "content": "You are terse."},
  {"role": "user", "content": "What is 2 plus 2?"},
  {"role": "assistant", "content": "The answer is 4."},
  {"role": "user", "content": "Reverse the word 'cat'."},
  {"role": "assistant", "content": "tac"},
  {"role": "user", "content": "And 'dog'?"},
]


@pytest.fixture(scope="module")
def world():
  return make_world(0)


# ----------------------------------------------------------------------------
# Chat template.


def test_chat_template_round_trip(tiny_tokenizer):
  tok = tiny_tokenizer
  ids = tok.encode_chat(CONVERSATION)
  assert ids[0] == tok.bos_id and ids[-1] == tok.end_turn_id
  assert tok.decode_chat(ids) == CONVERSATION
  open_turn = tok.encode_chat(CONVERSATION, add_generation_prompt=True)
  assert open_turn[-1] == tok.assistant_id
  assert tok.decode_chat(open_turn) == CONVERSATION + [{"role": "assistant", "content": ""}]


def test_truncation_drops_oldest_turns_and_keeps_system(tiny_tokenizer):
  tok = tiny_tokenizer
  full = tok.encode_chat(CONVERSATION, add_generation_prompt=True)
  assert tok.encode_chat_truncated(CONVERSATION, len(full)) == full
  kept = tok.decode_chat(tok.encode_chat_truncated(CONVERSATION, len(full) - 1))
  assert kept[0] == CONVERSATION[0]  # system kept
  assert kept[1]["role"] == "user"  # never starts with the assistant
  assert kept[1:-1] == CONVERSATION[3:]  # the oldest exchange went
  last_only = [CONVERSATION[0], CONVERSATION[-1]]
  n = len(tok.encode_chat(last_only, add_generation_prompt=True))
  assert tok.decode_chat(tok.encode_chat_truncated(CONVERSATION, n))[:-1] == last_only
  with pytest.raises(ValueError, match="context"):
    tok.encode_chat_truncated(CONVERSATION, n - 1)


def test_truncation_without_system(tiny_tokenizer):
  tok = tiny_tokenizer
  convo = CONVERSATION[1:]
  n = len(tok.encode_chat(convo[-1:], add_generation_prompt=True))
  assert tok.decode_chat(tok.encode_chat_truncated(convo, n))[:-1] == convo[-1:]


# ----------------------------------------------------------------------------
# Demonstrations -> rows.


def test_loss_mask_covers_assistant_tokens_only(tiny_tokenizer):
  tok = tiny_tokenizer
  ids, mask = sft.render(tok, "What is 2 plus 2?", "The answer is 4.", system="Be brief.")
  messages = sft.chat_messages("What is 2 plus 2?", "Be brief.")
  assert ids == tok.encode_chat(messages + [{"role": "assistant", "content": "The answer is 4."}])
  start = ids.index(tok.assistant_id) + 1
  assert mask == [0] * start + [1] * (len(ids) - start)
  assert tok.decode([i for i, m in zip(ids, mask) if m]) == "The answer is 4."
  assert ids[-1] == tok.end_turn_id and mask[-1] == 1


def test_packed_batch_targets_and_mask(tiny_tokenizer, world):
  tok = tiny_tokenizer
  examples = instructions.make_mixture(world, 40, split="train")
  rows = sft.demonstration_rows(examples, tok, seq_len=64)
  assert rows.n_conversations + rows.n_dropped == 40 and rows.ids.shape[1] == 65
  batch = rows.batch(np.arange(len(rows.ids)))
  np.testing.assert_array_equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])
  # Every target under the mask is an assistant token, and each conversation's
  # answer (with its <|end_turn|>) is there: the masked text is the responses.
  kept = [e for e in examples if len(sft.render(tok, e.prompt, e.response)[0]) <= 65]
  masked = batch["targets"][batch["loss_mask"] > 0]
  assert (masked != tok.pad_id).all()
  assert int((masked == tok.end_turn_id).sum()) == len(kept)
  assert not batch["loss_mask"][batch["targets"] == tok.pad_id].any()
  # Positions restart at every conversation (bos at position 0).
  assert (batch["positions"][batch["tokens"] == tok.bos_id] == 0).all()


def test_sft_data_is_deterministic(tiny_tokenizer, world):
  a = sft.demonstration_rows(instructions.make_mixture(world, 60), tiny_tokenizer, 64)
  b = sft.demonstration_rows(instructions.make_mixture(world, 60), tiny_tokenizer, 64)
  np.testing.assert_array_equal(a.ids, b.ids)
  for step in (0, 3, 11):
    np.testing.assert_array_equal(
      sft.batch_rows(step, 8, len(a.ids), 0), sft.batch_rows(step, 8, len(a.ids), 0)
    )
  # One epoch visits every row once.
  epoch = np.concatenate([sft.batch_rows(s, 4, 20, 0) for s in range(5)])
  assert sorted(epoch) == list(range(20))


def test_sft_config_presets():
  for preset in sft_configs.PRESETS:
    sft_configs.get_config(preset)
  with pytest.raises(ValueError, match="preset"):
    sft_configs.get_config("huge")


def test_degeneration_metrics():
  assert evaluation.distinct_n(["a b c d"], 1) == 1.0
  assert evaluation.distinct_n(["a a a a"], 1) == 0.25
  loop = evaluation.degeneration_metrics(["the cat the cat the cat the cat"])
  fresh = evaluation.degeneration_metrics(["one two three four five six"])
  assert loop["repetition"] > 0.5 and fresh["repetition"] == 0.0
  assert loop["distinct_2"] < fresh["distinct_2"]


def test_summarize_rates():
  judgements = [
    {
      "family": "qa_unknown",
      "score": 0.0,
      "correct": False,
      "hallucinated": True,
      "declined": False,
    },
    {
      "family": "qa_unknown",
      "score": 1.0,
      "correct": True,
      "hallucinated": False,
      "declined": False,
    },
    {"family": "decline", "score": 1.0, "correct": True, "hallucinated": False, "declined": True},
    {"family": "reverse", "score": 0.1, "correct": False, "hallucinated": False, "declined": True},
  ]
  s = evaluation.summarize(judgements)
  assert s["families"]["qa_unknown"]["score"] == 0.5
  assert s["hallucination_rate"] == 0.5 and s["decline_rate"] == 1.0
  assert s["over_refusal_rate"] == 1.0


# ----------------------------------------------------------------------------
# A tiny end-to-end run (pretrain with the world -> SFT), shared with test_chat.


@pytest.mark.slow
def test_tiny_sft_lowers_loss_and_raises_gold_score(sft_run):
  report = json.loads((sft_run["sft"] / "eval.json").read_text())
  train = [json.loads(l) for l in (sft_run["sft"] / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in train if r["split"] == "train"]
  assert losses[-1] < 0.7 * losses[0], losses
  before, after = report["pretrained"]["chat"]["families"], report["sft"]["chat"]["families"]
  gains = {f: after[f]["score"] - before[f]["score"] for f in after}
  assert max(gains.values()) >= 0.3, gains
  assert report["sft"]["chat"]["mean_score"] > report["pretrained"]["chat"]["mean_score"]
  for column in ("pretrained_zero_shot", "pretrained_few_shot", "sft"):
    assert column in report["table"]["MEAN"]
  assert {"greedy", "top_p_0.9"} <= set(report["sft"]["degeneration"])


def test_packed_conversation_computes_what_it_would_alone():
  """Segment ids and restarting positions: packing changes nothing for a conversation."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn

  from gptjax import model as model_lib, sft

  cfg = model_lib.TransformerConfig(
    vocab_size=40, max_len=24, n_layer=2, n_head=2, d_model=16, d_ff=32
  )
  model = model_lib.Transformer(cfg)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  first = ([5, 6, 7, 8, 9], [0, 0, 1, 1, 1])
  second = ([11, 12, 13, 14], [0, 1, 1, 1])
  rows = sft.pack([first, second], 24, pad_id=0)
  assert len(rows.ids) == 1 and list(rows.segments[0, :10]) == [1] * 5 + [2] * 4 + [0]
  b = rows.batch(np.array([0]))
  packed = model.apply({"params": params}, b["tokens"], b["positions"], None, b["segment_ids"])
  alone = model.apply({"params": params}, jnp.asarray([second[0]]))
  np.testing.assert_allclose(packed[0, 5:9], alone[0], atol=1e-5)
  # without segment ids the second conversation would see the first one
  leaky = model.apply({"params": params}, b["tokens"], b["positions"])
  assert np.abs(np.asarray(leaky[0, 5:9]) - np.asarray(alone[0])).max() > 1e-4


def test_drops_by_family_counts_what_pack_drops():
  tok = _CharTokenizer()
  examples = instructions.make_mixture(make_world(0), 60, 0, "train")
  seq_len = 80
  drops = sft.drops_by_family(examples, tok, seq_len)
  rows = sft.demonstration_rows(examples, tok, seq_len)
  assert sum(d["dropped"] for d in drops.values()) == rows.n_dropped > 0
  assert sum(d["n"] for d in drops.values()) == 60
  with pytest.raises(ValueError, match="sft.writers"):
    sft.demo_writers("everyone")
  assert sft.demo_writers("curated") is None


class _CharTokenizer:
  """One token per character: lengths without a trained tokenizer."""

  bos_id, end_turn_id, pad_id = 2, 7, 0

  def encode(self, text):
    return [10 + (ord(c) % 200) for c in text]

  def encode_chat(self, messages, add_generation_prompt=False):
    ids = [self.bos_id]
    for m in messages:
      ids += [5] + self.encode(m["content"]) + [self.end_turn_id]
    return ids + ([6] if add_generation_prompt else [])
