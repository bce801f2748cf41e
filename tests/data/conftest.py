"""Fixtures for the data tests: a tiny BPE tokenizer, tiny images and LLaVA-style JSON."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax.data.tokenizer import Tokenizer, train_tiny_tokenizer

SPECIALS = ('<unk>', '<s>', '</s>', '<image>', '<|im_start|>', '<|im_end|>', '<|begin_of_text|>',
            '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>', '<img>', '</img>', '<IMG_CONTEXT>',
            '<|vision_start|>', '<|vision_end|>', '<|image_pad|>')
CORPUS = [
    'A chat between a curious human and an artificial intelligence assistant.',
    'USER: What is in the picture? ASSISTANT: A red square on a blue background.',
    'Describe the image in detail. The cat sits on the mat next to a dog.',
    'You are a helpful assistant. system user assistant',
] * 20


@pytest.fixture(scope='session')
def tokenizer_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tok')
  train_tiny_tokenizer(CORPUS, special_tokens=SPECIALS, vocab_size=400).save(str(path / 'tokenizer.json'))
  return str(path)


@pytest.fixture(scope='session')
def tokenizer(tokenizer_dir):
  return Tokenizer.load(tokenizer_dir)


def write_image(path, h, w, seed=0, mode='RGB'):
  rng = np.random.default_rng(seed)
  channels = {'RGB': 3, 'RGBA': 4, 'L': None}[mode]
  shape = (h, w) if channels is None else (h, w, channels)
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
  return path


def llava_record(i, image=None, question='What is in the picture?', answer='A red square.', turns=1):
  conv = []
  for t in range(turns):
    q = (f'<image>\n{question}' if (image and t == 0) else question)
    conv += [{'from': 'human', 'value': q}, {'from': 'gpt', 'value': answer}]
  record = {'id': f's{i}', 'conversations': conv}
  if image:
    record['image'] = image
  return record


@pytest.fixture
def llava_dataset(tmp_path):
  """8 samples: 6 with a small image (varied sizes), 2 text-only; returns (json path, image root)."""
  root = tmp_path / 'images'
  root.mkdir()
  records = []
  for i in range(8):
    if i % 4 == 3:
      records.append(llava_record(i, turns=2))
    else:
      write_image(root / f'{i}.png', 20 + 7 * i, 30 + 5 * i, seed=i)
      records.append(llava_record(i, image=f'{i}.png', answer='A red square on a blue background.' * (1 + i % 3)))
  path = tmp_path / 'data.json'
  path.write_text(json.dumps(records))
  return str(path), str(root)


@pytest.fixture
def make_image():
  """write_image(path, h, w, seed=0, mode='RGB') -> path."""
  return write_image


@pytest.fixture
def make_record():
  """llava_record(i, image=None, question=..., answer=..., turns=1) -> LLaVA-format dict."""
  return llava_record
