"""Benchmark: generation against transformers' `generate` on the same ~100M-parameter LLaVA (CPU).

Builds a random LLaVA-shaped model locally (CLIP ViT 224/14 + a 10-layer Llama, vocab 32000),
saves it, converts it with `convert_hf`, then times, in this one process on the same prompts:
time to first token (prefill + first sample) and decode tokens/s after it, greedy, median of
`--repeats` runs after a warm-up (mmjax's compile time is printed apart). Prints the ratios.
Target: mmjax decode >= 2x transformers' tokens/s.

    python tools/bench/generate.py [--batch 1] [--new-tokens 32] [--repeats 2] [--workdir DIR]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from llava_100m import build_llava_100m, image_tokens, random_pixels


def build(workdir: str):
  import transformers

  hf_dir, mm_dir, cfg = build_llava_100m(workdir)
  model = transformers.LlavaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  return model, cfg, mm_dir


def prompts(cfg, batch: int, seed: int = 0):
  """Left-padded rows `bos text <image>*256 text`, text of different lengths per row."""
  rng = np.random.default_rng(seed)
  n_img = image_tokens(cfg)
  rows = [[1] + list(rng.integers(3, 31000, 8 + 4 * r)) + [cfg.image_token_id] * n_img
          + list(rng.integers(3, 31000, 12)) for r in range(batch)]
  t = max(map(len, rows))
  ids, mask = np.zeros((batch, t), np.int64), np.zeros((batch, t), np.int64)
  for i, row in enumerate(rows):
    ids[i, t - len(row):], mask[i, t - len(row):] = row, 1
  pixels = random_pixels(batch, cfg, seed)
  return ids, mask, pixels


def timed(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--new-tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--workdir", default=None)
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import torch

  from mmjax.checkpoint import load_checkpoint
  from mmjax.generation import GenerateConfig, Generator

  work = args.workdir or tempfile.mkdtemp(prefix="mmjax-bench-generate-")
  model, cfg, mm_dir = build(work)
  family, config, params = load_checkpoint(mm_dir)
  n_params = sum(p.numel() for p in model.parameters())
  ids, mask, pixels = prompts(cfg, args.batch)
  n = args.new_tokens
  print(f"model: {n_params / 1e6:.0f}M parameters; batch {args.batch}, prompt {ids.shape[1]} "
        f"tokens (256 image tokens per row), {n} new tokens; torch threads "
        f"{torch.get_num_threads()}, jax devices {jax.devices()}")

  # transformers: TTFT = generate(1 token); decode = the remaining n - 1 tokens.
  def hf(tokens):
    with torch.no_grad():
      return model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            pixel_values=torch.tensor(pixels), do_sample=False,
                            max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)
  hf(2)  # warm-up
  hf_ttft = timed(lambda: hf(1), args.repeats)
  hf_total = timed(lambda: hf(n), args.repeats)
  hf_decode = args.batch * (n - 1) / (hf_total - hf_ttft)

  gen = GenerateConfig(n, pad_id=0)
  g = Generator(family, config, params)
  nhwc = np.transpose(pixels, (0, 2, 3, 1))
  start = time.perf_counter()
  carry = g.prefill(ids, mask, nhwc, gen=gen)
  out = np.asarray(g.decode(carry, gen=gen))
  compile_s = time.perf_counter() - start
  carries = []
  mm_ttft = timed(lambda: carries.append(
      jax.block_until_ready(g.prefill(ids, mask, nhwc, gen=gen)["token"])), args.repeats)
  carry = g.prefill(ids, mask, nhwc, gen=gen)
  jax.block_until_ready(carry)
  mm_decode_s = timed(lambda: jax.block_until_ready(g.decode(carry, gen=gen)), args.repeats)
  mm_decode = args.batch * (n - 1) / mm_decode_s

  ref = hf(n)[:, ids.shape[1]:].numpy()
  same = bool((out == ref).all())
  print(f"{'':14}{'TTFT (s)':>10}{'decode tok/s':>14}")
  print(f"{'transformers':14}{hf_ttft:10.3f}{hf_decode:14.1f}")
  print(f"{'mmjax':14}{mm_ttft:10.3f}{mm_decode:14.1f}   (first call with compile: {compile_s:.1f} s)")
  print(f"ratios: TTFT transformers/mmjax = {hf_ttft / mm_ttft:.2f}x, "
        f"decode tokens/s mmjax/transformers = {mm_decode / hf_decode:.2f}x (target >= 2x); "
        f"greedy ids identical: {same}")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
