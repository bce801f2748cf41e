"""Hostile inputs for the reliability tests: a decompression bomb, malformed image fields, a chat
template that rejects conversations, sandbox-escape templates, a pickle that runs code."""

import os
import struct
import zlib


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
  """A ~100-byte PNG whose header claims width x height pixels (900 M by default, past twice
  PIL's `MAX_IMAGE_PIXELS`, where PIL raises DecompressionBombError instead of decoding)."""

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
  rows = zlib.compress(b"\x00" * (1 + width // 8) * 4)  # a few rows: PIL refuses before reading
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


# `image` fields that are not image references: each must become a `bad_record` skip.
MALFORMED_IMAGE_FIELDS = (123, [None], [123], {"path": "a.png"}, [""], [["a.png"]])

# A tokenizer_config.json chat template that insists on alternating roles, as Llama 2's and
# Mistral's do, with transformers' `raise_exception`.
ALTERNATING_TEMPLATE = (
    "{% for m in messages %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<s>' + m['role'] + ': ' + m['content'] + '</s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant: ' }}{% endif %}")

# Templates that try to reach Python objects from the sandbox (each must be refused).
ESCAPE_TEMPLATES = (
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__['os'].system('touch PWNED') }}",
    "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}",
    "{% for m in messages %}{{ m.__class__.__base__.__subclasses__() }}{% endfor %}",
)


class _Payload:
  """Pickled, it asks for `os.system(command)` on load: what `weights_only=True` must refuse."""

  def __init__(self, command: str):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def write_pickle_bomb(path: str, marker: str) -> None:
  """A `pytorch_model.bin` whose unpickling would create `marker`."""
  import torch

  torch.save({"model.embed_tokens.weight": _Payload(f"touch {marker}")}, path)
