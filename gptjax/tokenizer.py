"""Tokenizers: the interface every stage reads tokens through, and its two implementations.

`ChatTokenizer` (a Protocol) is what the library uses: ids of text, the chat
template, the ids that end a turn, the files of a workdir. Two classes
satisfy it:

  Tokenizer     gptjax's own sentencepiece BPE, trained by pretraining
                (workdir file: tokenizer.model)
  BPETokenizer  the byte-level BPE of a released model (GPT-2, SmolLM2,
                Llama 3 ...), run by the `tokenizers` library, with the
                model's own Jinja chat template (workdir files:
                tokenizer.json + tokenizer_config.json, Hugging Face's format)

`load_from(workdir)` picks the class from the files present and
`copy_files(src, dst)` copies them, so a stage never names a file.

gptjax's sentencepiece model. Training options are chosen so that
`decode(encode(s)) == s` for any string without the character '▁' (U+2581,
sentencepiece's own space marker):

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

The BPE tokenizer keeps the same promises with a released model's control
tokens (ChatML's <|im_start|>, <|im_end|>, ...): `encode` reads their
spellings as plain text, `decode` drops them, and `encode_chat` renders the
model's template as transformers' `apply_chat_template` does and tokenizes
the result exactly as it does, except that control-token spellings inside a
message's content stay text (as with transformers'
`sanitize_control_tokens=True`).
"""

import datetime
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator, Protocol, Sequence, runtime_checkable

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np
import sentencepiece as spm
import tokenizers

from gptjax import files

ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end_turn|>")
ROLES = ("system", "user", "assistant")
MAX_LINE_CHARS = 2048  # Longer lines are cut before training.

Messages = Sequence[dict[str, str]]


# ----------------------------------------------------------------------------
# The interface


@runtime_checkable
class ChatTokenizer(Protocol):
  """What gptjax needs of a tokenizer; `Tokenizer` and `BPETokenizer` provide it.

  Ids: pad_id pads rows (always masked); bos_id starts a plain-text prompt;
  eos_id ends a document (and open-ended generation); end_turn_id ends an
  assistant turn (chat generation stops on it); newline_id is the one token
  of '\\n' (few-shot answers stop on it). assistant_header is the ids that
  open an assistant turn, what `encode_chat(..., add_generation_prompt=True)`
  ends with: one token (<|assistant|>) for gptjax's template, several for
  ChatML (<|im_start|> 'assistant' '\\n'); `response_starts` finds it.

  `encode` never returns control ids and `decode` drops them, so
  decode(encode(s)) == s for ordinary text. `fingerprint` identifies the
  vocabulary (token caches are keyed by it); `save_to` writes the class's
  FILES into a directory, which `load_from` reads back.
  """

  FILES: ClassVar[tuple[str, ...]]
  pad_id: int
  bos_id: int
  eos_id: int
  end_turn_id: int
  newline_id: int
  vocab_size: int

  @property
  def fingerprint(self) -> str: ...

  @property
  def assistant_header(self) -> tuple[int, ...]: ...

  def encode(self, text: str) -> list[int]: ...

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

  def decode(self, ids: Iterable[int]) -> str: ...

  def id_to_piece(self, i: int) -> str: ...

  def encode_chat(self, messages: Messages, add_generation_prompt: bool = False) -> list[int]: ...

  def encode_chat_truncated(
    self, messages: Messages, max_tokens: int, add_generation_prompt: bool = True
  ) -> list[int]: ...

  def decode_chat(self, ids: Sequence[int]) -> list[dict[str, str]]: ...

  def save_to(self, directory: str | os.PathLike) -> None: ...


def truncate_chat(
  encode_chat: Callable[[Messages, bool], list[int]],
  messages: Messages,
  max_tokens: int,
  add_generation_prompt: bool = True,
) -> list[int]:
  """`encode_chat` of the most recent turns that fit in `max_tokens`.

  The rule of a chat with a finite context, for every tokenizer: drop the
  oldest turns, keep the system message. Messages are dropped from the front
  of the history (after the system message), and a kept history never starts
  with an assistant turn.

  Raises:
    ValueError: if the system message and the last message alone do not fit.
  """
  system = [m for m in messages[:1] if m["role"] == "system"]
  turns = list(messages[len(system) :])
  while True:
    ids = encode_chat(system + turns, add_generation_prompt)
    if len(ids) <= max_tokens:
      return ids
    if len(turns) <= 1:
      subject = (
        "The system message and the last message take" if system else "The last message takes"
      )
      n = len(ids)
      raise ValueError(
        f"{subject} {n} token{'' if n == 1 else 's'}, more than the {max_tokens} that "
        f"{'fits' if max_tokens == 1 else 'fit'} in the context; shorten "
        f"{'them' if system else 'it'} (or lower max_new_tokens)."
      )
    turns = turns[1:]
    while len(turns) > 1 and turns[0]["role"] == "assistant":
      turns = turns[1:]


def response_starts(tokens: np.ndarray, header: int | Sequence[int]) -> np.ndarray:
  """[...] int: the index just after the first `header` (an assistant header,
  one id or several) in each chat row of tokens [..., T].

  A row's first header is its generation prompt when the prompt holds no
  earlier assistant turn (as every gptjax comparison row); a prompt cut from
  the left keeps it, since the cut removes the oldest tokens.

  Raises:
    ValueError: if a row holds no header (not a chat-template row).
  """
  header = np.atleast_1d(np.asarray(header, dtype=np.int64))
  tokens = np.asarray(tokens)
  L, T = len(header), tokens.shape[-1]
  if L == 0 or T < L:
    raise ValueError(f"no assistant header {header.tolist()} fits in rows of {T} tokens")
  windows = np.lib.stride_tricks.sliding_window_view(tokens, L, axis=-1)  # [..., T-L+1, L]
  found = (windows == header).all(-1)  # [..., T-L+1]
  if not found.any(-1).all():
    raise ValueError(
      f"a row has no assistant header {header.tolist()} (<|assistant|> or the template's "
      "generation prompt): not a chat-template row"
    )
  return np.argmax(found, axis=-1) + L


# ----------------------------------------------------------------------------
# gptjax's sentencepiece tokenizer


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

  FILES: ClassVar[tuple[str, ...]] = ("tokenizer.model",)

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
    _write_atomic(Path(path), self.model_proto)

  def save_to(self, directory: str | os.PathLike) -> None:
    """Writes tokenizer.model into `directory`."""
    self.save(Path(directory) / self.FILES[0])

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Tokenizer":
    return cls(Path(path).read_bytes())

  @classmethod
  def load_dir(cls, directory: str | os.PathLike) -> "Tokenizer":
    """The tokenizer.model of `directory`, which must hold gptjax's reserved pieces."""
    path = Path(directory) / cls.FILES[0]
    tokenizer = cls.load(path)
    missing = [t for t in ROLE_TOKENS if tokenizer.sp.piece_to_id(t) == tokenizer.unk_id]
    if missing:
      raise ValueError(
        f"{path} is a sentencepiece model without gptjax's chat pieces {missing}: "
        "only tokenizers trained by gptjax are read from tokenizer.model"
      )
    return tokenizer

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

  @property
  def assistant_header(self) -> tuple[int, ...]:
    return (self.assistant_id,)

  def encode_chat(self, messages: Messages, add_generation_prompt: bool = False) -> list[int]:
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
    self, messages: Messages, max_tokens: int, add_generation_prompt: bool = True
  ) -> list[int]:
    """`encode_chat` of the most recent turns that fit (see `truncate_chat`)."""
    return truncate_chat(self.encode_chat, messages, max_tokens, add_generation_prompt)

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


# ----------------------------------------------------------------------------
# A released model's byte-level BPE and chat template

# Private-use characters that wrap a control token's spelling found in a
# message's content (transformers' markers): such a spelling is encoded as text.
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"
_PROBE = "\ue000"  # a content that no template changes, to find its structure


class _GenerationTag(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}`, transformers' assistant-mask tag: its body."""

  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

  def _body(self, caller):
    return caller()


def compile_chat_template(source: str) -> jinja2.Template:
  """A Jinja chat template in the environment transformers renders it in:
  sandboxed, trim_blocks and lstrip_blocks, loop controls, `tojson` without
  HTML escaping, `raise_exception` and `strftime_now`."""

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
      x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
  )
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(source)


class BPETokenizer:
  """A `tokenizers` tokenizer (tokenizer.json) and its tokenizer_config.json.

  The config's fields are Hugging Face's: bos_token, eos_token, pad_token,
  unk_token (token spellings) and chat_template (Jinja source, optional: a
  base model has none, and then `encode_chat` raises). pad_token defaults to
  eos_token. end_turn_id and assistant_header are read off the template (the
  first control token after an assistant message; what the generation prompt
  adds); without a template end_turn_id is eos_id.
  """

  FILES: ClassVar[tuple[str, ...]] = ("tokenizer.json", "tokenizer_config.json")

  def __init__(self, tokenizer_json: str, config: dict, source: str = "tokenizer.json"):
    self.tokenizer_json, self.config = tokenizer_json, dict(config)
    self._chat = tokenizers.Tokenizer.from_str(tokenizer_json)  # control tokens recognised
    self._text = tokenizers.Tokenizer.from_str(tokenizer_json)
    self._chat.encode_special_tokens = False
    self._text.encode_special_tokens = True  # their spellings in text stay text
    self.vocab_size = self._text.get_vocab_size(with_added_tokens=True)
    self.special_tokens = {
      name: self._token(name, source)
      for name in ("bos_token", "eos_token", "pad_token", "unk_token")
      if _spelling(self.config.get(name)) is not None or name == "eos_token"
    }
    self.special_tokens.setdefault("pad_token", self.special_tokens["eos_token"])
    self.special_tokens.setdefault("bos_token", self.special_tokens["eos_token"])
    # As written by save_to, so that a loaded copy has the same fingerprint; the
    # generic class makes transformers read tokenizer.json as it is.
    self.config.update(self.special_tokens, tokenizer_class="PreTrainedTokenizerFast")
    ids = {k: self._chat.token_to_id(v) for k, v in self.special_tokens.items()}
    self.bos_id, self.eos_id, self.pad_id = ids["bos_token"], ids["eos_token"], ids["pad_token"]
    self.control = tuple(
      t.content for t in self._chat.get_added_tokens_decoder().values() if t.special
    )
    longest_first = sorted(self.control, key=len, reverse=True)
    self._control_re = re.compile("|".join(map(re.escape, longest_first)) or "(?!)")
    newline = self._text.encode("\n", add_special_tokens=False).ids
    if len(newline) != 1:
      raise ValueError(f"{source}: '\\n' is {len(newline)} tokens; gptjax needs it to be one")
    self.newline_id = newline[0]
    self.chat_template = self.config.get("chat_template")
    self._template = compile_chat_template(self.chat_template) if self.chat_template else None
    self.end_turn_id, self._header_text, self._header = self.eos_id, "", ()
    if self._template is not None:
      self.end_turn_id, self._header_text = self._template_structure(source)
      self._header = tuple(self._chat.encode(self._header_text, add_special_tokens=False).ids)

  def _token(self, name: str, source: str) -> str:
    spelling = _spelling(self.config.get(name))
    if spelling is None or self._chat.token_to_id(spelling) is None:
      raise ValueError(f"{source}: the special token {name}={spelling!r} is not in the vocabulary")
    return spelling

  def _template_structure(self, source: str) -> tuple[int, str]:
    """(end_turn_id, the generation prompt's text), read off renderings of the template."""
    user = [{"role": "user", "content": "x"}]
    plain, prompted = self.render(user, False), self.render(user, True)
    if not prompted.startswith(plain) or prompted == plain:
      raise ValueError(
        f"{source}: the chat template's generation prompt does not extend the conversation "
        "(add_generation_prompt must append an assistant header)"
      )
    answered = self.render(user + [{"role": "assistant", "content": _PROBE}], False)
    after = answered[answered.rindex(_PROBE) + 1 :] if _PROBE in answered else ""
    after_ids = self._chat.encode(after, add_special_tokens=False).ids
    control = [i for i in after_ids if self._is_control(i)]
    return (control[0] if control else self.eos_id), prompted[len(plain) :]

  def _is_control(self, i: int) -> bool:
    return self._chat.id_to_token(i) in self.control

  @classmethod
  def load_dir(cls, directory: str | os.PathLike) -> "BPETokenizer":
    """tokenizer.json and tokenizer_config.json of `directory` (a converted run or a
    Hugging Face model directory, where special_tokens_map.json may name the special
    tokens and chat_template.jinja hold the template instead)."""
    directory = Path(directory)
    path, config_path = directory / cls.FILES[0], directory / cls.FILES[1]
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    special = directory / "special_tokens_map.json"
    if special.exists():
      for name, token in json.loads(special.read_text()).items():
        config.setdefault(name, token)
    jinja = directory / "chat_template.jinja"
    if not config.get("chat_template") and jinja.exists():
      config["chat_template"] = jinja.read_text()
    return cls(path.read_text(), config, str(path))

  def save_to(self, directory: str | os.PathLike) -> None:
    """Writes tokenizer.json and tokenizer_config.json (readable by transformers' AutoTokenizer)."""
    directory = Path(directory)
    _write_atomic(directory / self.FILES[0], self.tokenizer_json.encode())
    _write_atomic(directory / self.FILES[1], json.dumps(self.config, indent=2).encode())

  @property
  def fingerprint(self) -> str:
    """A hex digest of the vocabulary, its settings and the chat template."""
    blob = self.tokenizer_json + "\0" + json.dumps(self.config, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

  # --------------------------------------------------------------------------
  # Encoding and decoding.

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; control-token spellings in it are text."""
    return self._text.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text, on all cores (the library's own threads)."""
    return [e.ids for e in self._text.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; control tokens decode to nothing."""
    return self._text.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_piece(self, i: int) -> str:
    return self._text.id_to_token(int(i))

  @property
  def assistant_header(self) -> tuple[int, ...]:
    """The ids of the template's generation prompt (ChatML: <|im_start|> assistant \\n)."""
    self._require_template()
    return self._header

  def render(self, messages: Messages, add_generation_prompt: bool = False) -> str:
    """The template's text of `messages`: transformers' apply_chat_template(tokenize=False)."""
    self._require_template()
    return self._template.render(
      messages=[dict(m) for m in messages],
      add_generation_prompt=add_generation_prompt,
      **self.special_tokens,
    )

  def encode_chat(self, messages: Messages, add_generation_prompt: bool = False) -> list[int]:
    """The model's chat template, rendered and tokenized with its control tokens.

    Control-token spellings inside a message's content are encoded as text
    (wrapped in private markers before rendering, then split out), so a user
    cannot forge a turn; without any, the ids equal transformers'
    apply_chat_template(messages, add_generation_prompt=...).
    """
    for message in messages:
      if message["role"] not in ROLES:
        raise ValueError(f"Unknown chat role {message['role']!r}; allowed: {ROLES}.")
    marked = [dict(m, content=self._mark(m["content"])) for m in messages]
    text = self.render(marked, add_generation_prompt)
    if _MARK_START not in text and _MARK_END not in text:
      return self._chat.encode(text, add_special_tokens=False).ids
    pattern = f"{_MARK_START}({self._control_re.pattern}){_MARK_END}|[{_MARK_START}{_MARK_END}]"
    pieces = re.split(pattern, text)  # text, marked token (or None), text, ...
    ids = []
    for k, piece in enumerate(pieces):
      if piece:
        encoder = self._text if k % 2 else self._chat
        ids += encoder.encode(piece, add_special_tokens=False).ids
    return ids

  def _mark(self, content: str) -> str:
    content = content.replace(_MARK_START, "").replace(_MARK_END, "")
    if not self.control:
      return content
    return self._control_re.sub(lambda m: f"{_MARK_START}{m.group(0)}{_MARK_END}", content)

  def encode_chat_truncated(
    self, messages: Messages, max_tokens: int, add_generation_prompt: bool = True
  ) -> list[int]:
    """`encode_chat` of the most recent turns that fit (see `truncate_chat`)."""
    return truncate_chat(self.encode_chat, messages, max_tokens, add_generation_prompt)

  def decode_chat(self, ids: Sequence[int]) -> list[dict[str, str]]:
    """The messages of an `encode_chat` sequence (with any system message the
    template itself adds). A turn still open is returned with the text so far.

    A turn starts at the first id of the assistant header and runs to
    end_turn_id; its role is read from its text, whose header is the
    generation prompt's with the role's name in place of 'assistant'.
    """
    start = self.assistant_header[0]
    headers = {role: self._header_text.replace("assistant", role) for role in ROLES}
    ids = [int(i) for i in ids]
    bounds = [k for k, i in enumerate(ids) if i in (start, self.end_turn_id)] + [len(ids)]
    messages = []
    for a, b in zip(bounds, bounds[1:]):
      if ids[a] != start:
        continue
      text = self._chat.decode(ids[a:b], skip_special_tokens=False)
      role = next((r for r, h in headers.items() if text.startswith(h)), None)
      if role is not None:
        messages.append({"role": role, "content": text[len(headers[role]) :]})
    return messages

  def _require_template(self) -> None:
    if self._template is None:
      raise ValueError(
        "This tokenizer has no chat template (tokenizer_config.json's chat_template): "
        "it belongs to a base model; prompt it with plain text."
      )


def _spelling(token) -> str | None:
  """A special token's spelling: a string, or Hugging Face's AddedToken dict."""
  return token.get("content") if isinstance(token, dict) else token


# ----------------------------------------------------------------------------
# Workdir files


def _write_atomic(path: Path, data: bytes) -> None:
  """Writes `data` to `path` atomically (no half-written file on a crash)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  files.write_bytes(path, data)


# tokenizer.json first: a Hugging Face directory may also hold a (non-gptjax)
# tokenizer.model; a gptjax run holds one of the two.
_CLASSES = (BPETokenizer, Tokenizer)


def files_in(workdir: str | os.PathLike) -> tuple[str, ...]:
  """The tokenizer files of a workdir (one class's FILES, those present), or ()."""
  for cls in _CLASSES:
    if (Path(workdir) / cls.FILES[0]).exists():
      return tuple(f for f in cls.FILES if (Path(workdir) / f).exists())
  return ()


def load_from(workdir: str | os.PathLike) -> ChatTokenizer:
  """The tokenizer of a workdir: tokenizer.json (+ tokenizer_config.json: a released
  model's BPE) or tokenizer.model (gptjax's sentencepiece).

  Raises:
    FileNotFoundError: naming the workdir and both files if neither exists.
  """
  for cls in _CLASSES:
    if (Path(workdir) / cls.FILES[0]).exists():
      return cls.load_dir(workdir)
  raise FileNotFoundError(
    f"{workdir} has no tokenizer: neither tokenizer.model (gptjax's sentencepiece) nor "
    "tokenizer.json (a converted model's BPE)"
  )


def copy_files(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[str, ...]:
  """Copies the tokenizer files of workdir `src` into `dst` (atomically each); returns
  their names. Raises FileNotFoundError as `load_from` does."""
  names = files_in(src)
  if not names:
    load_from(src)  # raises, naming what is missing
  for name in names:
    with files.atomic_path(Path(dst) / name) as tmp:
      shutil.copyfile(Path(src) / name, tmp)
  return names
