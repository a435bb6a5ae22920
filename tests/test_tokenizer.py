"""Tokenizer: exact round trips, reserved ids, chat template, save/load."""

import pytest

from gptjax.data.tokenizer_corpus import load_or_train_tokenizer
from gptjax.tokenizer import Tokenizer

ROUND_TRIP = {
  "english": "It was the best of times, it was the worst of times.",
  "code": (
    "import os\n\n\nclass A:\n    def f(self, x):\n\tif x:\n"
    "        return  x  # two spaces\n\n\n    pass\n"
  ),
  "tabs_and_blank_lines": "\t\ta\tb\n\n\n\t\n   \n",
  "chinese": "中文测试：你好，世界！",
  "emoji": "🎉👍🏽 🇫🇷 👨‍👩‍👧",
  "mixed": "  Café naïve — “quotes” ½ 中文 🎉\r\n\tx = 1\u00a0\u200b",
  "edges": " leading and trailing ",
  "digits": "12345 + 678 = 13023",
  "control_lookalike": "<|user|> hi <|end_turn|> </s> <pad>",
  "empty": "",
  "newline": "\n",
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_round_trip_is_exact(tiny_tokenizer, name):
  text = ROUND_TRIP[name]
  assert tiny_tokenizer.decode(tiny_tokenizer.encode(text)) == text


def test_encode_batch_matches_encode(tiny_tokenizer):
  texts = list(ROUND_TRIP.values())
  assert tiny_tokenizer.encode_batch(texts) == [tiny_tokenizer.encode(t) for t in texts]


def test_vocab_size_and_reserved_ids(tiny_tokenizer):
  tok = tiny_tokenizer
  assert tok.vocab_size == 512
  reserved = [
    tok.pad_id,
    tok.unk_id,
    tok.bos_id,
    tok.eos_id,
    tok.system_id,
    tok.user_id,
    tok.assistant_id,
    tok.end_turn_id,
    tok.newline_id,
  ]
  assert reserved == list(range(9))
  assert tok.pad_id == 0


def test_special_ids_never_come_from_text_and_decode_to_nothing(tiny_tokenizer):
  tok = tiny_tokenizer
  specials = {
    tok.pad_id,
    tok.unk_id,
    tok.bos_id,
    tok.eos_id,
    tok.system_id,
    tok.user_id,
    tok.assistant_id,
    tok.end_turn_id,
  }
  for text in ROUND_TRIP.values():
    assert not specials & set(tok.encode(text))
  hello = tok.encode("hello")
  assert tok.decode([tok.bos_id, *hello, tok.end_turn_id, tok.eos_id, tok.pad_id]) == "hello"


def test_newline_and_indentation_tokens(tiny_tokenizer):
  tok = tiny_tokenizer
  assert tok.encode("\n") == [tok.newline_id]
  # Eight spaces of indentation are far fewer than eight tokens.
  assert len(tok.encode("        ")) <= 2


def test_chat_template(tiny_tokenizer):
  tok = tiny_tokenizer
  ids = tok.encode_chat(
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    add_generation_prompt=True,
  )
  assert ids[0] == tok.bos_id and ids[-1] == tok.assistant_id
  assert [i for i in ids if i in (tok.system_id, tok.user_id, tok.end_turn_id)] == [
    tok.system_id,
    tok.end_turn_id,
    tok.user_id,
    tok.end_turn_id,
  ]
  assert tok.decode(ids) == "Be brief.Hi"
  with pytest.raises(ValueError, match="role"):
    tok.encode_chat([{"role": "robot", "content": "x"}])


def test_save_load_and_reuse(tiny_tokenizer, data_config, tmp_path):
  tiny_tokenizer.save(tmp_path / "tokenizer.model")
  loaded = load_or_train_tokenizer(data_config, tmp_path)  # reuses the file
  assert loaded.fingerprint == tiny_tokenizer.fingerprint
  assert loaded.encode(ROUND_TRIP["code"]) == tiny_tokenizer.encode(ROUND_TRIP["code"])


def test_saved_vocab_size_must_match_config(tiny_tokenizer, data_config, tmp_path):
  tiny_tokenizer.save(tmp_path / "tokenizer.model")
  config = data_config.copy_and_resolve_references()
  config.model.vocab_size = 1024
  with pytest.raises(ValueError, match="vocab_size"):
    load_or_train_tokenizer(config, tmp_path)


def test_training_is_deterministic():
  texts = ["the cat sat on the mat\n" * 50, "def f(x):\n    return x\n" * 50]
  a = Tokenizer.train(texts, 300)
  b = Tokenizer.train(texts, 300)
  assert a.fingerprint == b.fingerprint
