"""Benchmark: convert a 7B-shaped LLaVA checkpoint; time and peak memory against reading it.

Writes random bf16 weights with the shapes, key names and 3-shard layout of llava-1.5-7b-hf
(CLIP ViT-L/14-336 + Llama-2-7B, ~14 GB), then in separate processes, each from a cold page
cache where allowed: (a) merely reads every tensor, (b) copies the files (read + write + sync:
the disk's floor for any converter) and (c) runs `mmjax convert` (+ sync). Prints seconds and
peak RSS and the ratios.
Targets: peak RSS <= largest shard + 2 GiB; time <= 2x the read.

    python tools/bench/convert.py [--workdir DIR] [--text-layers 32] [--dtype bfloat16] [--keep]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import ml_dtypes
import numpy as np

from machine import describe

GIB = 1 << 30


def llava15_7b_config(text_layers: int) -> dict:
  return {
      "model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
      "image_token_index": 32000, "projector_hidden_act": "gelu",
      "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
      "dtype": "bfloat16", "tie_word_embeddings": False,
      "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024,
                        "intermediate_size": 4096, "num_hidden_layers": 24,
                        "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
      "text_config": {"model_type": "llama", "vocab_size": 32064, "hidden_size": 4096,
                      "intermediate_size": 11008, "num_hidden_layers": text_layers,
                      "num_attention_heads": 32, "num_key_value_heads": 32,
                      "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
                      "rope_theta": 10000.0, "tie_word_embeddings": False},
  }


def tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
  """Keys and shapes in llava-1.5-7b-hf's (transformers v4) layout."""
  v, t = cfg["vision_config"], cfg["text_config"]
  d, f, vd, vf = t["hidden_size"], t["intermediate_size"], v["hidden_size"], v["intermediate_size"]
  grid = v["image_size"] // v["patch_size"]
  specs = [("language_model.model.embed_tokens.weight", (t["vocab_size"], d))]
  for i in range(t["num_hidden_layers"]):
    p = f"language_model.model.layers.{i}."
    specs += [(p + f"self_attn.{n}_proj.weight", (d, d)) for n in "qkvo"]
    specs += [(p + "mlp.gate_proj.weight", (f, d)), (p + "mlp.up_proj.weight", (f, d)),
              (p + "mlp.down_proj.weight", (d, f)), (p + "input_layernorm.weight", (d,)),
              (p + "post_attention_layernorm.weight", (d,))]
  specs += [("language_model.model.norm.weight", (d,)),
            ("language_model.lm_head.weight", (t["vocab_size"], d))]
  vp = "vision_tower.vision_model."
  specs += [(vp + "embeddings.class_embedding", (vd,)),
            (vp + "embeddings.patch_embedding.weight", (vd, 3, v["patch_size"], v["patch_size"])),
            (vp + "embeddings.position_embedding.weight", (grid * grid + 1, vd)),
            (vp + "pre_layrnorm.weight", (vd,)), (vp + "pre_layrnorm.bias", (vd,))]
  for i in range(v["num_hidden_layers"]):
    p = f"{vp}encoder.layers.{i}."
    for n in ("q", "k", "v", "out"):
      specs += [(p + f"self_attn.{n}_proj.weight", (vd, vd)), (p + f"self_attn.{n}_proj.bias", (vd,))]
    specs += [(p + "mlp.fc1.weight", (vf, vd)), (p + "mlp.fc1.bias", (vf,)),
              (p + "mlp.fc2.weight", (vd, vf)), (p + "mlp.fc2.bias", (vd,))]
    specs += [(p + f"layer_norm{k}.{w}", (vd,)) for k in (1, 2) for w in ("weight", "bias")]
  specs += [(vp + "post_layernorm.weight", (vd,)), (vp + "post_layernorm.bias", (vd,)),
            ("multi_modal_projector.linear_1.weight", (d, vd)),
            ("multi_modal_projector.linear_1.bias", (d,)),
            ("multi_modal_projector.linear_2.weight", (d, d)),
            ("multi_modal_projector.linear_2.bias", (d,))]
  return specs


def random_bf16(shape, rng) -> np.ndarray:
  # Random sign and mantissa, exponent fixed near 2^-6: valid, finite numbers, fast to make.
  bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
  return ((bits & 0x807F) | 0x3C80).view(ml_dtypes.bfloat16)


def write_checkpoint(hf_dir: str, cfg: dict, shards: int = 3) -> list[str]:
  from mmjax.convert.safetensors_io import write_safetensors

  os.makedirs(hf_dir, exist_ok=True)
  specs = tensor_specs(cfg)
  sizes = [2 * int(np.prod(s)) for _, s in specs]
  per_shard = sum(sizes) / shards
  groups, current, acc = [], [], 0
  for spec, size in zip(specs, sizes):
    if current and acc + size > per_shard * (len(groups) + 1) and len(groups) < shards - 1:
      groups.append(current)
      current = []
    current.append(spec)
    acc += size
  groups.append(current)
  rng = np.random.default_rng(0)
  names, weight_map = [], {}
  for k, group in enumerate(groups):
    name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
    write_safetensors(os.path.join(hf_dir, name),
                      [(key, np.dtype(ml_dtypes.bfloat16), shape) for key, shape in group],
                      (random_bf16(shape, rng) for _, shape in group))
    weight_map.update({key: name for key, _ in group})
    names.append(name)
  with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, f)
  with open(os.path.join(hf_dir, "config.json"), "w") as f:
    json.dump(cfg, f)
  return [os.path.join(hf_dir, n) for n in names]


_READ_ALL = """
import sys
from mmjax.convert.sources import TensorSource
src = TensorSource(sys.argv[1])
total = 0
for key in src.keys():
  total += src.read(key).nbytes
print(total)
"""


_COPY_ALL = """
import os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
for name in os.listdir(src):
  shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
"""


def run_measured(argv: list[str], sync: bool = False) -> tuple[float, int]:
  """Runs a command; returns (seconds, peak RSS in bytes) of that process.

  With `sync`, the time includes flushing what it wrote to disk, so that writers are compared
  on bytes that really landed rather than on the page cache.
  """
  start = time.perf_counter()
  proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
  _, status, usage = os.wait4(proc.pid, 0)
  if sync:
    os.sync()
  seconds = time.perf_counter() - start
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"command failed: {' '.join(argv)}")
  return seconds, usage.ru_maxrss * 1024


def drop_page_cache() -> bool:
  """Makes both runs read from disk alike; needs root (not always allowed in containers)."""
  try:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
      f.write("3\n")
    return True
  except OSError:
    return False


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default="/tmp/mmjax-bench-convert")
  parser.add_argument("--text-layers", type=int, default=32, help="32 = the real 7B depth")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                      help="stored parameter dtype (default: %(default)s, as the source)")
  parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  print(describe())
  hf_dir, out_dir = os.path.join(args.workdir, "hf"), os.path.join(args.workdir, "mmjax")
  shutil.rmtree(args.workdir, ignore_errors=True)
  cfg = llava15_7b_config(args.text_layers)
  t0 = time.perf_counter()
  shards = write_checkpoint(hf_dir, cfg)
  total = sum(os.path.getsize(s) for s in shards)
  largest = max(os.path.getsize(s) for s in shards)
  print(f"wrote {len(shards)} shards, {total / GIB:.2f} GiB (largest {largest / GIB:.2f} GiB) "
        f"in {time.perf_counter() - t0:.0f}s")
  try:
    cold = drop_page_cache()
    read_s, read_rss = run_measured([sys.executable, "-c", _READ_ALL, hf_dir])
    drop_page_cache()
    copy_dir = os.path.join(args.workdir, "copy")
    copy_s, _ = run_measured([sys.executable, "-c", _COPY_ALL, hf_dir, copy_dir], sync=True)
    shutil.rmtree(copy_dir)
    drop_page_cache()
    conv_s, conv_rss = run_measured([sys.executable, "-m", "mmjax.cli", "convert", "--hf", hf_dir,
                                     "--out", out_dir, "--dtype", args.dtype, "--quiet"],
                                    sync=True)
  finally:
    if not args.keep:
      shutil.rmtree(args.workdir, ignore_errors=True)
  budget = largest + 2 * GIB
  print(f"page cache dropped before each run: {cold}")
  print(f"read only : {read_s:7.1f} s   peak RSS {read_rss / GIB:6.2f} GiB")
  print(f"copy+sync : {copy_s:7.1f} s   (read and write the same bytes: this disk's floor)")
  print(f"convert   : {conv_s:7.1f} s   peak RSS {conv_rss / GIB:6.2f} GiB   (--dtype {args.dtype}, "
        "incl. sync)")
  print(f"time ratio convert/read: {conv_s / read_s:.2f}x   (target <= 2x)")
  print(f"time ratio convert/copy: {conv_s / copy_s:.2f}x   (copy/read here: "
        f"{copy_s / read_s:.2f}x)")
  print(f"peak RSS / (largest shard + 2 GiB): {conv_rss / budget:.2f}   (target <= 1)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
