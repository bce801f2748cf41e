"""Convert-and-run demo on a tiny LLaVA built locally (nothing is downloaded).

Builds a random transformers LLaVA (CLIP + Llama), saves it, converts it with `mmjax convert`,
runs `mmjax logits` on processor-style arrays, compares with transformers, and exports it back.
Needs the test extra (torch, transformers): `pip install -e ".[test]"`.

    python tools/demo_convert.py [--workdir DIR]
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
  args = parser.parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import torch
  import transformers

  work = args.workdir or tempfile.mkdtemp(prefix="mmjax-demo-")
  os.makedirs(work, exist_ok=True)
  hf_dir, mm_dir, back_dir = (os.path.join(work, n) for n in ("hf", "mmjax", "hf_back"))
  torch.manual_seed(0)
  vision = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         image_size=64, patch_size=16)
  text = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2)
  cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=255)
  model = transformers.LlavaForConditionalGeneration(cfg).eval()
  model.save_pretrained(hf_dir)
  print(f"1. built a tiny LLaVA (CLIP + Llama) at {hf_dir}")

  def mmjax(*argv):
    subprocess.run([sys.executable, "-m", "mmjax.cli", *argv], check=True)

  mmjax("convert", "--hf", hf_dir, "--out", mm_dir, "--quiet")
  print(f"2. converted it to {mm_dir}")
  ids = np.array([[1, 10, 11] + [255] * 16 + [12, 13]])
  pixels = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
  np.savez(os.path.join(work, "inputs.npz"), input_ids=ids, pixel_values=pixels)
  mmjax("logits", "--checkpoint", mm_dir, "--inputs", os.path.join(work, "inputs.npz"),
        "--out", os.path.join(work, "logits.npy"))
  ours = np.load(os.path.join(work, "logits.npy"))
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels)).logits.numpy()
  diff = float(np.abs(ours - ref).max())
  print(f"3. logits {ours.shape}: max |mmjax - transformers| = {diff:.2e}")
  mmjax("export", "--checkpoint", mm_dir, "--out", back_dir, "--quiet")
  back = transformers.LlavaForConditionalGeneration.from_pretrained(back_dir)
  same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                back.state_dict().values()))
  print(f"4. exported back to {back_dir}; every tensor identical: {same}")
  return 0 if diff <= 1e-4 and same else 1


if __name__ == "__main__":
  sys.exit(main())
