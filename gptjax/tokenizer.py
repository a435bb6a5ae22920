"""A sentencepiece BPE tokenizer that round-trips text exactly, and the chat template.

Training options are chosen so that `decode(encode(s)) == s` for any string
without the character '▁' (U+2581, sentencepiece's own space marker):

  normalization 'identity'       no NFKC, so full-width forms, ligatures etc. survive
  remove_extra_whitespaces=False runs of spaces survive (code indentation)
  add_dummy_prefix=False         no space invented at the start of the text
  allow_whitespace_only_pieces   '▁▁▁▁' can be one token (indentation)
  byte_fallback=True             any character outside the vocabulary (Chinese,
                                 emoji, tabs, ...) becomes its UTF-8 bytes
  user symbol '\\n'              sentencepiece trains line by line, so the newline
                                 is a token of its own
  split_digits=True              numbers are read digit by digit (arithmetic)

Reserved ids, the same for every vocabulary size:

  0 <pad>   1 <unk>   2 <s> (bos)   3 </s> (eos)
  4 <|system|>   5 <|user|>   6 <|assistant|>   7 <|end_turn|>   8 '\\n'

The role tokens are *control* symbols: `encode` never produces them from
text (typing "<|user|>" gives ordinary pieces), so a user cannot forge a
turn, and `decode` drops them, as it drops pad, bos and eos. Use
`encode_chat` to build a conversation (`encode_chat_truncated` to fit it in
a context, dropping the oldest turns but keeping the system message),
`decode_chat` to read one back, and `id_to_piece` to see tokens.
"""

import hashlib
import io
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end_turn|>")
ROLES = ("system", "user", "assistant")
MAX_LINE_CHARS = 2048  # Longer lines are cut before training.


def training_lines(texts: Iterable[str]) -> Iterator[str]:
  """The non-empty lines of `texts`, cut to at most MAX_LINE_CHARS each.

  sentencepiece learns from "sentences" without their newlines; the newline
  itself is a user-defined symbol, always one token.
  """
  for text in texts:
    for line in text.split("\n"):
      for start in range(0, len(line), MAX_LINE_CHARS):
        yield line[start : start + MAX_LINE_CHARS]


class Tokenizer:
  """A sentencepiece model with gptjax's reserved ids; see the module docstring."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.pad_id = self.sp.pad_id()
    self.unk_id = self.sp.unk_id()
    self.bos_id = self.sp.bos_id()
    self.eos_id = self.sp.eos_id()
    (self.system_id, self.user_id, self.assistant_id, self.end_turn_id) = (
      self.sp.piece_to_id(t) for t in ROLE_TOKENS
    )
    self.newline_id = self.sp.piece_to_id("\n")
    self.vocab_size = self.sp.get_piece_size()
    self.role_ids = {"system": self.system_id, "user": self.user_id, "assistant": self.assistant_id}

  # --------------------------------------------------------------------------
  # Training, saving, loading.

  @classmethod
  def train(
    cls, texts: Iterable[str], vocab_size: int, path: str | os.PathLike | None = None
  ) -> "Tokenizer":
    """Trains a BPE model of `vocab_size` pieces on `texts` (saved to `path`).

    All lines of `texts` are used (no sampling), so training is deterministic;
    bound the input's size instead (see `gptjax.data.tokenizer_corpus`).
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
      sentence_iterator=training_lines(texts),
      model_writer=model,
      model_type="bpe",
      vocab_size=vocab_size,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      byte_fallback=True,
      split_digits=True,
      character_coverage=0.9995,
      user_defined_symbols=["\n"],
      control_symbols=list(ROLE_TOKENS),
      pad_id=0,
      unk_id=1,
      bos_id=2,
      eos_id=3,
      max_sentence_length=4 * MAX_LINE_CHARS,  # bytes
      input_sentence_size=0,  # use every line
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
    )
    tokenizer = cls(model.getvalue())
    if path is not None:
      tokenizer.save(path)
    return tokenizer

  def save(self, path: str | os.PathLike) -> None:
    """Writes the model file atomically (no half-written file on a crash)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(self.model_proto)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Tokenizer":
    return cls(Path(path).read_bytes())

  @property
  def fingerprint(self) -> str:
    """A hex digest of the model: token caches are keyed by it."""
    return hashlib.sha256(self.model_proto).hexdigest()[:16]

  # --------------------------------------------------------------------------
  # Encoding and decoding.

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos."""
    return self.sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text, on all cores."""
    return self.sp.encode(list(texts), num_threads=os.cpu_count() or 1)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; pad, bos, eos and role tokens decode to nothing."""
    return self.sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self.sp.id_to_piece(int(i))

  def encode_chat(
    self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
  ) -> list[int]:
    """The chat template: bos, then `<|role|> content <|end_turn|>` per message.

    Args:
      messages: [{'role': 'system' | 'user' | 'assistant', 'content': str}].
      add_generation_prompt: end with `<|assistant|>` so a model continues
        with the assistant's answer (which it ends with `<|end_turn|>`).
    """
    ids = [self.bos_id]
    for message in messages:
      role = message["role"]
      if role not in self.role_ids:
        raise ValueError(f"Unknown chat role {role!r}; allowed: {ROLES}.")
      ids += [self.role_ids[role], *self.encode(message["content"]), self.end_turn_id]
    if add_generation_prompt:
      ids.append(self.assistant_id)
    return ids

  def encode_chat_truncated(
    self, messages: Sequence[dict[str, str]], max_tokens: int, add_generation_prompt: bool = True
  ) -> list[int]:
    """`encode_chat` of the most recent turns that fit in `max_tokens`.

    The rule of a chat with a finite context: drop the oldest turns, keep
    the system message. Messages are dropped from the front of the history
    (after the system message), and a kept history never starts with an
    assistant turn.

    Raises:
      ValueError: if the system message and the last message alone do not fit.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = list(messages[len(system) :])
    while True:
      ids = self.encode_chat(system + turns, add_generation_prompt)
      if len(ids) <= max_tokens:
        return ids
      if len(turns) <= 1:
        raise ValueError(
          f"The {'system message and the ' if system else ''}last message take "
          f"{len(ids)} tokens, more than the {max_tokens} that fit in the "
          "context; shorten them (or lower max_new_tokens)."
        )
      turns = turns[1:]
      while len(turns) > 1 and turns[0]["role"] == "assistant":
        turns = turns[1:]

  def decode_chat(self, ids: Sequence[int]) -> list[dict[str, str]]:
    """The messages of an `encode_chat` sequence: its inverse.

    A turn that is still open (no `<|end_turn|>` yet, e.g. after the
    generation prompt) is returned with the text so far.
    """
    roles = {v: k for k, v in self.role_ids.items()}
    messages, role, content = [], None, []
    for i in ids:
      i = int(i)
      if i in roles:
        role, content = roles[i], []
      elif i == self.end_turn_id and role is not None:
        messages.append({"role": role, "content": self.decode(content)})
        role = None
      elif role is not None:
        content.append(i)
    if role is not None:
      messages.append({"role": role, "content": self.decode(content)})
    return messages
