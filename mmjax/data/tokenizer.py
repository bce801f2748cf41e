"""Text tokenizer: a Hugging Face ``tokenizer.json`` read by the ``tokenizers`` library.

``Tokenizer.load(path)`` takes a ``tokenizer.json`` file or a directory holding one (and, if
present, ``tokenizer_config.json``, whose ``chat_template``, ``bos_token`` and ``eos_token`` are
kept). ``encode`` returns ids and character offsets, which the templates use to find the tokens of
assistant turns. ``train_tiny_tokenizer`` builds a small BPE tokenizer in-process for tests and
benchmarks (nothing can be downloaded there).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np
import tokenizers


class Tokenizer:
  """Thin, picklable wrapper around ``tokenizers.Tokenizer``."""

  def __init__(self, tok: tokenizers.Tokenizer, *, config: dict | None = None, source: str = '<memory>'):
    self.tok = tok
    self.config = dict(config or {})
    self.source = source

  @classmethod
  def load(cls, path: str) -> 'Tokenizer':
    """Loads ``path`` (tokenizer.json, or a directory with tokenizer.json [+ tokenizer_config.json])."""
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(path, 'tokenizer.json') if os.path.isdir(path) else path
    if not os.path.exists(file):
      raise FileNotFoundError(f'no tokenizer.json at {file!r}')
    config = {}
    config_file = os.path.join(directory, 'tokenizer_config.json')
    if os.path.exists(config_file):
      with open(config_file) as f:
        config = json.load(f)
    return cls(tokenizers.Tokenizer.from_file(file), config=config, source=file)

  @property
  def vocab_size(self) -> int:
    return self.tok.get_vocab_size(with_added_tokens=True)

  @property
  def chat_template(self) -> str | None:
    """The jinja chat template of tokenizer_config.json, if any."""
    template = self.config.get('chat_template')
    if isinstance(template, list):  # Newer configs: [{"name": "default", "template": ...}, ...]
      template = {t['name']: t['template'] for t in template}.get('default')
    return template

  def special_token(self, name: str) -> str | None:
    """bos_token / eos_token / ... string from tokenizer_config.json (None if absent)."""
    value = self.config.get(name)
    return value.get('content') if isinstance(value, dict) else value

  def token_to_id(self, token: str) -> int:
    """Id of a single token; a clear error when the vocabulary lacks it."""
    token_id = self.tok.token_to_id(token)
    if token_id is None:
      raise KeyError(f'token {token!r} is not in the vocabulary of {self.source}')
    return token_id

  def encode(self, text: str, add_special_tokens: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Returns ids [n] int32 and character offsets [n, 2] int32 (end exclusive)."""
    enc = self.tok.encode(text, add_special_tokens=add_special_tokens)
    ids = np.asarray(enc.ids, dtype=np.int32)
    offsets = np.asarray(enc.offsets, dtype=np.int32).reshape(-1, 2)
    return ids, offsets

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def train_tiny_tokenizer(
    texts: Iterable[str],
    special_tokens: Sequence[str] = ('<unk>', '<s>', '</s>', '<image>'),
    vocab_size: int = 512,
    bos: str | None = '<s>',
) -> tokenizers.Tokenizer:
  """A byte-level BPE tokenizer trained on ``texts``; adds ``bos`` in front when special tokens are on.

  Only for tests and benchmarks. The special tokens become added (never split) tokens, as in real
  chat tokenizers.
  """
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer(models.BPE(unk_token=special_tokens[0] if special_tokens else None))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(list(texts), trainer=trainer)
  if bos is not None:
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f'{bos} $A', pair=f'{bos} $A {bos} $B', special_tokens=[(bos, bos_id)])
  return tok
