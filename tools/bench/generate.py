"""Benchmark: generation against transformers' `generate` on the same ~125M-parameter LLaVA (CPU).

Builds a random LLaVA-shaped model locally (CLIP ViT 224/14 + a 10-layer Llama, vocab 32000),
saves it, converts it with `convert_hf`, then times, in this one process on the same prompts,
greedy: time to first token (prefill + first sample; for transformers `generate` of one token)
and decode tokens/s after it (transformers: the time of `n` tokens less that of one). The two
sides take turns within each repeat, so a shared machine's drifting speed weighs on both alike;
the ratios of each repeat are printed as median and range. mmjax's compile time is printed apart.
transformers runs its default attention (`sdpa`; `--torch-attention eager` for the matmul one).
Targets: decode tokens/s >= 1.5x transformers', time to first token >= 1x.

    python tools/bench/generate.py [--batch 1,8] [--new-tokens 32] [--repeats 5] [--workdir DIR]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from llava_100m import build_llava_100m, image_tokens, random_pixels
from machine import describe, load


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


def seconds(fn) -> float:
  time.sleep(0.5)  # the other side's thread pools spin a while after their work: let them idle
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def bench_batch(model, family, config, params, cfg, batch: int, n: int, repeats: int):
  """Times both sides, alternating; returns the per-repeat figures and whether ids agree."""
  import jax
  import torch

  from mmjax.generation import GenerateConfig, Generator

  ids, mask, pixels = prompts(cfg, batch)

  def hf(tokens):
    with torch.no_grad():
      return model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            pixel_values=torch.tensor(pixels), do_sample=False,
                            max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)

  gen = GenerateConfig(n, pad_id=0)
  g = Generator(family, config, params)
  nhwc = np.transpose(pixels, (0, 2, 3, 1))
  start = time.perf_counter()
  out = np.asarray(g.decode(g.prefill(ids, mask, nhwc, gen=gen), gen=gen))
  compile_s = time.perf_counter() - start
  same = bool((out == hf(n)[:, ids.shape[1]:].numpy()).all())  # also transformers' warm-up
  carry = jax.block_until_ready(g.prefill(ids, mask, nhwc, gen=gen))

  runs = []
  for _ in range(repeats):
    hf_ttft = seconds(lambda: hf(1))
    mm_ttft = seconds(lambda: np.asarray(g.prefill(ids, mask, nhwc, gen=gen)["token"]))
    hf_total = seconds(lambda: hf(n))
    mm_decode = seconds(lambda: jax.block_until_ready(g.decode(carry, gen=gen)))
    tokens = batch * (n - 1)
    runs.append(dict(hf_ttft=hf_ttft, mm_ttft=mm_ttft, hf_tps=tokens / (hf_total - hf_ttft),
                     mm_tps=tokens / mm_decode))
  return ids.shape[1], compile_s, runs, same


def spread(values, fmt="{:.2f}") -> str:
  """`median [min-max]`."""
  return (fmt.format(statistics.median(values)) + " [" + fmt.format(min(values)) + "-"
          + fmt.format(max(values)) + "]")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", default="1,8", help="batch sizes, comma separated")
  parser.add_argument("--new-tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--torch-attention", default="sdpa", choices=("sdpa", "eager"),
                      help="transformers' attention implementation (default: %(default)s, its "
                      "own default)")
  parser.add_argument("--workdir", default=None, help="keeps the built model for reruns")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  import torch
  import transformers

  from mmjax.checkpoint import load_checkpoint

  work = args.workdir or tempfile.mkdtemp(prefix="mmjax-bench-generate-")
  hf_dir, mm_dir, cfg = build_llava_100m(work)
  model = transformers.LlavaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation=args.torch_attention).eval()
  family, config, params = load_checkpoint(mm_dir)
  n_params = sum(p.numel() for p in model.parameters())
  n = args.new_tokens
  print(describe())
  print(f"model: {n_params / 1e6:.0f}M parameters, float32; 256 image tokens per row, {n} new "
        f"tokens, greedy; transformers attention {args.torch_attention}; torch threads "
        f"{torch.get_num_threads()}, jax devices {jax.devices()}; {args.repeats} repeats, the "
        "sides alternating")
  print(f"{'batch':>5}{'prompt':>7}  {'TTFT s hf':>10}{'mmjax':>8}  {'ratio hf/mmjax':>20}  "
        f"{'decode tok/s hf':>16}{'mmjax':>8}  {'ratio mmjax/hf':>20}  {'compile s':>9}  ids")
  ok = True
  for batch in (int(b) for b in args.batch.split(",")):
    length, compile_s, runs, same = bench_batch(model, family, config, params, cfg, batch, n,
                                                args.repeats)
    ok &= same
    med = lambda key: statistics.median(r[key] for r in runs)
    print(f"{batch:5d}{length:7d}  {med('hf_ttft'):10.3f}{med('mm_ttft'):8.3f}  "
          f"{spread([r['hf_ttft'] / r['mm_ttft'] for r in runs]) + 'x':>20}  "
          f"{med('hf_tps'):16.1f}{med('mm_tps'):8.1f}  "
          f"{spread([r['mm_tps'] / r['hf_tps'] for r in runs]) + 'x':>20}  {compile_s:9.1f}  "
          f"{'same' if same else 'DIFFERENT'}", flush=True)
  print("targets: TTFT ratio >= 1x, decode ratio >= 1.5x; ratios are per repeat, median [range]; "
        f"{load()} at the end")
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
