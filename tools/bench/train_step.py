"""Benchmark: steady-state train step time, mmjax vs transformers + torch eager (no torch.compile;
CPU, float32).

Both sides train the same ~125M-parameter LLaVA (CLIP ViT 224/14 + 10-layer Llama, vocab 32000,
built and converted by `llava_100m.py`) on the same batch: rows of `bos text <image>*256 text`,
next-token cross-entropy on the text tokens, AdamW with global-norm clipping, every parameter
trainable; transformers runs its default attention (sdpa; `--torch-attention eager` for the
matmul one). The first step's losses are compared (same weights, same data, so they must agree)
before timing; then the sides take turns, step by step, and the median of `--steps` steps each
after `--warmup` is printed with the ratio. The process keeps freed host memory mapped, as
`mmjax train` does on the CPU (`mmjax/hostmem.py`; `--glibc-defaults` to compare), which applies
to torch's allocations as well. Target: mmjax >= 1.5x faster than torch eager.

    python tools/bench/train_step.py [--batch 2] [--text 64] [--steps 7] [--warmup 2]
        [--torch-attention sdpa|eager]
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

LR, CLIP, WEIGHT_DECAY = 1e-4, 1.0, 0.01


def make_batch(cfg, batch: int, text: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`bos <image>*N text` rows; the loss covers the text tokens (as an SFT answer would)."""
  rng = np.random.default_rng(seed)
  n_img = image_tokens(cfg)
  rows = [[1] + [cfg.image_token_id] * n_img + list(rng.integers(3, 31000, text))
          for _ in range(batch)]
  ids = np.asarray(rows, np.int64)
  target = np.zeros_like(ids, bool)
  target[:, 1 + n_img:] = True
  return {"input_ids": ids, "target": target, "pixel_values": random_pixels(batch, cfg, seed)}


def torch_side(hf_dir: str, data: dict, attention: str):
  import torch
  import transformers

  model = transformers.LlavaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation=attention, dtype=torch.float32)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8,
                          weight_decay=WEIGHT_DECAY)
  ids = torch.tensor(data["input_ids"])
  labels = torch.where(torch.tensor(data["target"]), ids, torch.tensor(-100))
  pixels = torch.tensor(data["pixel_values"])

  def step() -> float:
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return loss.item()

  return step, sum(p.numel() for p in model.parameters())


def mmjax_side(mm_dir: str, data: dict):
  import jax

  from mmjax.train import data as train_data
  from mmjax.train.cli import load_config
  from mmjax.train.loop import Trainer

  cfg = load_config(None)
  cfg.model = dict(dtype="float32", param_dtype="float32", remat_policy="none")
  cfg.optim.update(lr=LR, warmup_steps=0, end_lr_ratio=1.0, b1=0.9, b2=0.999,
                   weight_decay=WEIGHT_DECAY, clip_norm=CLIP)
  # A small model on the CPU: straight-line layers, without the scan's residual stacks.
  cfg.train.update(steps=1000, init_from=mm_dir, unroll_layers=True)
  cfg.mesh.update(data=1)
  trainer = Trainer.build(cfg, jax.devices()[:1])
  state = trainer.init()
  ids = data["input_ids"].astype(np.int32)
  target = data["target"]
  batch = {
      "input_ids": ids,
      # logits[:, t] predicts ids[:, t + 1]: shift the labels and their mask left by one.
      "labels": np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1),
      "loss_mask": np.concatenate([target[:, 1:], np.zeros_like(target[:, :1])],
                                  axis=1).astype(np.float32),
      "attention_mask": np.ones_like(ids),
      "positions": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape).copy(),
      "pixel_values": np.transpose(data["pixel_values"], (0, 2, 3, 1)),  # NCHW -> NHWC
  }
  batch = train_data.to_global(batch, trainer.mesh)
  holder = {"state": state}

  def step() -> float:
    with jax.set_mesh(trainer.mesh):
      holder["state"], metrics = trainer.step_fn(holder["state"], batch)
    return float(metrics["loss"])  # blocks until the step is done

  return step


def timed_interleaved(steps: dict, count: int) -> dict[str, tuple[float, list[float]]]:
  """Median step time and the losses of each side, the sides taking turns step by step, so a
  shared machine's drifting speed weighs on both alike."""
  times = {name: [] for name in steps}
  losses = {name: [] for name in steps}
  for _ in range(count):
    for name, step in steps.items():
      time.sleep(0.5)  # the other side's thread pools spin a while after their work: let them idle
      start = time.perf_counter()
      losses[name].append(step())
      times[name].append(time.perf_counter() - start)
  return {name: (statistics.median(times[name]), losses[name]) for name in steps}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=2, help="rows per step")
  parser.add_argument("--text", type=int, default=64, help="text tokens per row after the image")
  parser.add_argument("--steps", type=int, default=7, help="timed steps per side")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile)")
  parser.add_argument("--torch-attention", default="sdpa", choices=("sdpa", "eager"),
                      help="transformers' attention implementation (its default: sdpa, torch's "
                      "fused kernel; eager: the matmul-softmax-matmul one)")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--glibc-defaults", action="store_true",
                      help="leave glibc's malloc settings alone instead of keeping freed memory "
                      "mapped as `mmjax train` does on the CPU (mmjax/hostmem.py)")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from mmjax import hostmem

  # What `mmjax train` does on the CPU, applied to the whole process: torch allocates through
  # the same malloc, so both sides run with the same allocator settings.
  kept = not args.glibc_defaults and hostmem.keep_freed_memory()
  import jax
  import torch

  work = args.workdir or tempfile.mkdtemp(prefix="mmjax-bench-train-")
  hf_dir, mm_dir, cfg = build_llava_100m(work)
  data = make_batch(cfg, args.batch, args.text)
  torch_step, n_params = torch_side(hf_dir, data, args.torch_attention)
  mm_step = mmjax_side(mm_dir, data)
  print(describe())
  print(f"model: {n_params / 1e6:.0f}M parameters, all trainable; batch {args.batch} x "
        f"{data['input_ids'].shape[1]} tokens; float32, AdamW; torch attention "
        f"{args.torch_attention}, threads "
        f"{torch.get_num_threads()}, jax devices {jax.devices()}; freed host memory "
        f"{'kept mapped (both sides)' if kept else 'returned (glibc defaults)'}")

  # Same weights, same batch, same loss definition: the first losses agree.
  first_torch, first_mm = torch_step(), mm_step()
  print(f"first-step loss: torch {first_torch:.6f}, mmjax {first_mm:.6f} "
        f"(|diff| {abs(first_torch - first_mm):.2e})")
  for _ in range(args.warmup - 1):
    torch_step(), mm_step()
  timings = timed_interleaved({"torch": torch_step, "mmjax": mm_step}, args.steps)
  (torch_s, torch_losses), (mm_s, mm_losses) = timings["torch"], timings["mmjax"]
  print(f"{'':14}{'step (s)':>10}{'last loss':>12}")
  print(f"{'torch eager':14}{torch_s:10.3f}{torch_losses[-1]:12.4f}")
  print(f"{'mmjax (jit)':14}{mm_s:10.3f}{mm_losses[-1]:12.4f}")
  print(f"ratio: torch / mmjax step time = {torch_s / mm_s:.2f}x (target >= 1.5x); {load()} at "
        "the end")
  return 0 if abs(first_torch - first_mm) < 1e-3 else 1


if __name__ == "__main__":
  sys.exit(main())
