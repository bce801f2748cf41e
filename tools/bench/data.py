"""Benchmark: LLaVA-1.5 sample preprocessing per worker, mmjax vs transformers' LlavaProcessor.

One process, the same samples for both: decode a JPEG, pad to square + resize + crop to 336 px,
normalize, apply the vicuna_v1 template, tokenize and expand <image> to 576 tokens. mmjax also
computes labels and the assistant loss mask (transformers does not), so the comparison is, if
anything, unfavourable to mmjax. The chat text for transformers is rendered by the same template
outside its timed loop. The tokenizer is a small BPE trained in-process (no downloads).

  python tools/bench/data.py [--samples 200] [--repeats 3]

Prints samples/s of each and the ratio mmjax / transformers (target >= 1x). Not a test.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))

from mmjax.data.pipeline import DataConfig  # pylint: disable=g-import-not-at-top,wrong-import-position
from mmjax.data.preprocess import preset  # pylint: disable=wrong-import-position
from mmjax.data.sample import SampleProcessor  # pylint: disable=wrong-import-position
from mmjax.data.templates import ChatTemplate  # pylint: disable=wrong-import-position
from mmjax.data.tokenizer import Tokenizer, train_tiny_tokenizer  # pylint: disable=wrong-import-position
from machine import describe  # pylint: disable=wrong-import-position

WORDS = ('the a picture image shows cat dog red blue square circle on under next to what is in describe '
         'detail color left right man woman street car tree sky water there are two three people').split()


def make_samples(n: int, seed: int = 0) -> list[dict]:
  """Raw samples with JPEG bytes of natural-ish sizes (smooth gradients + noise) and 1-3 turns."""
  rng = np.random.default_rng(seed)
  samples = []
  for i in range(n):
    h, w = int(rng.integers(240, 640)), int(rng.integers(240, 640))
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1)
    pixels = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format='JPEG', quality=90)
    messages = []
    for t in range(int(rng.integers(1, 4))):
      q = ' '.join(rng.choice(WORDS, int(rng.integers(5, 15))))
      a = ' '.join(rng.choice(WORDS, int(rng.integers(10, 60))))
      messages += [{'role': 'user', 'content': ('<image>\n' if t == 0 else '') + q + '?'},
                   {'role': 'assistant', 'content': a + '.'}]
    samples.append({'id': str(i), 'images': [buf.getvalue()], 'messages': messages})
  return samples


def build_tokenizer(directory: str) -> Tokenizer:
  corpus = [' '.join(np.random.default_rng(i).choice(WORDS, 30)) for i in range(200)]
  corpus += ['A chat between a curious human and an artificial intelligence assistant. USER: ASSISTANT:']
  tok = train_tiny_tokenizer(corpus, special_tokens=('<unk>', '<s>', '</s>', '<image>', '<pad>'), vocab_size=1000)
  tok.save(os.path.join(directory, 'tokenizer.json'))
  return Tokenizer.load(directory)


def hf_processor(directory: str):
  from transformers import LlavaProcessor, PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil  # pylint: disable=g-import-not-at-top
  tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(directory, 'tokenizer.json'),
                                      bos_token='<s>', eos_token='</s>', unk_token='<unk>', pad_token='<pad>')
  image_processor = LlavaImageProcessorPil(size={'shortest_edge': 336}, crop_size={'height': 336, 'width': 336},
                                           do_pad=True)
  return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                        vision_feature_select_strategy='default', num_additional_image_tokens=1)


def time_it(fn, samples, repeats: int) -> float:
  """Best-of-``repeats`` samples/s."""
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    for s in samples:
      fn(s)
    best = min(best, time.perf_counter() - start)
  return len(samples) / best


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--samples', type=int, default=200)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)

  samples = make_samples(args.samples)
  with tempfile.TemporaryDirectory() as directory:
    tokenizer = build_tokenizer(directory)
    cfg = DataConfig(image=preset('llava15'), template='vicuna_v1', max_length=4096, max_tiles=1, max_images=1)
    ours = SampleProcessor(cfg, tokenizer)
    hf = hf_processor(directory)
    template = ChatTemplate.from_name('vicuna_v1')
    texts = {s['id']: template.render(s['messages']) for s in samples}

    def run_hf(sample):
      image = Image.open(io.BytesIO(sample['images'][0]))
      return hf(images=[image], text=texts[sample['id']], return_tensors='np')

    # Same token ids and pixels before timing anything.
    a, b = ours(samples[0]), run_hf(samples[0])
    assert np.array_equal(a['input_ids'], b['input_ids'][0]), 'token ids differ from LlavaProcessor'
    assert np.abs(a['pixel_values'] - b['pixel_values'].transpose(0, 2, 3, 1)).max() <= 1e-5

    # Interleaved rounds, best of each, so that load from other processes hits both alike.
    mine = theirs = 0.0
    for _ in range(args.repeats):
      mine = max(mine, time_it(ours, samples, 1))
      theirs = max(theirs, time_it(run_hf, samples, 1))
  print(describe())
  print(f'LLaVA-1.5 preprocessing, 336 px, vicuna_v1, {args.samples} samples, 1 worker (best of {args.repeats})')
  print(f'  mmjax SampleProcessor      {mine:8.1f} samples/s  (+ labels and loss mask)')
  print(f'  transformers LlavaProcessor {theirs:7.1f} samples/s')
  print(f'  ratio mmjax / transformers  {mine / theirs:7.2f}x  (target >= 1x)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
