"""Tiny LLaVA / causal-LM checkpoints, left-padded prompts and transformers' greedy reference."""

import os

import numpy as np
import torch
import transformers

from hf_models import left_padded, llava_config, save, text_config
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf

PAD = 0


def tokens_per_image(hf_cfg) -> int:
  v = hf_cfg.vision_config
  n = (v.image_size // v.patch_size) ** 2
  cls_token = 1 if v.model_type == "clip_vision_model" else 0
  return n + cls_token - (1 if hf_cfg.vision_feature_select_strategy == "default" else 0)


def build_llava(tmp_path, vision=None, text=None, seed=0, **kw):
  """Saves a noisy random LLaVA, converts it; returns (hf model, hf config, family, config, params)."""
  torch.manual_seed(seed)
  hf_cfg = llava_config(vision, text or text_config("llama"), **kw)
  model = transformers.LlavaForConditionalGeneration(hf_cfg)
  hf_dir = save(model, str(tmp_path / "hf"), seed=seed)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  model = transformers.LlavaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  return (model, hf_cfg, *load_checkpoint(str(tmp_path / "mm")))


def build_causal_lm(tmp_path, text, seed=0):
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(text)
  hf_dir = save(model, str(tmp_path / "hf"), seed=seed)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  return (model, *load_checkpoint(str(tmp_path / "mm")))


def llava_prompts(hf_cfg, images_per_row, seed=0):
  """Left-padded rows `bos text (<image>*n text)*` of different lengths; pixels NCHW."""
  rng = np.random.default_rng(seed)
  vocab, image_token = hf_cfg.text_config.vocab_size, hf_cfg.image_token_id
  rows = []
  for r, count in enumerate(images_per_row):
    row = [1] + list(rng.integers(3, vocab - 1, 2 + 3 * r))
    for _ in range(count):
      row += [image_token] * tokens_per_image(hf_cfg) + list(rng.integers(3, vocab - 1, 2))
    rows.append(row)
  ids, mask = left_padded(rows)
  v = hf_cfg.vision_config
  pixels = rng.normal(size=(sum(images_per_row), 3, v.image_size, v.image_size)).astype(np.float32)
  return ids, mask, pixels


def text_prompts(vocab, lengths, seed=0):
  rng = np.random.default_rng(seed)
  return left_padded([[1] + list(rng.integers(3, vocab, n - 1)) for n in lengths])


def hf_greedy(model, ids, mask, pixels=None, n=16, eos=None):
  """transformers' greedy ids `[B, <= n]` after the prompt (exactly n without `eos`)."""
  model.generation_config.eos_token_id = eos
  kw = dict(pixel_values=torch.tensor(pixels)) if pixels is not None and len(pixels) else {}
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                         do_sample=False, max_new_tokens=n, pad_token_id=PAD, **kw)
  return out[:, ids.shape[1]:].numpy()


def nhwc(pixels):
  return None if pixels is None else np.transpose(pixels, (0, 2, 3, 1))


def hf_answer(model, inputs, tokenizer, n, eos=None) -> str:
  """transformers' greedy answer text after the prompt of processor arrays `inputs` (batch 1):
  `n` new tokens, or up to `eos`."""
  return tokenizer.decode(hf_greedy_on(model, inputs, n, eos)[0], skip_special_tokens=True)


def assert_chat_answers(ckpt: str, paths, prompt: str, n: int, expected: str, capsys) -> None:
  """`mmjax generate --image ... --prompt` prints `expected` (`n` tokens, no stop), and answers a
  text-only prompt too."""
  from mmjax import cli

  capsys.readouterr()
  assert cli.main(["generate", "--checkpoint", ckpt, *[a for p in paths for a in ("--image", p)],
                   "--prompt", prompt, "--max-new-tokens", str(n), "--stop", "-1"]) == 0
  assert capsys.readouterr().out == expected + "\n"
  assert cli.main(["generate", "--checkpoint", ckpt, "--prompt", prompt,  # text only
                   "--max-new-tokens", "3", "--stop", "-1"]) == 0


def hf_greedy_on(model, inputs, n, eos=None) -> np.ndarray:
  """transformers' greedy ids `[B, <= n]` after the prompt of processor arrays `inputs`."""
  model.generation_config.eos_token_id = eos
  with torch.no_grad():
    out = model.generate(**{k: torch.tensor(v) for k, v in inputs.items()}, do_sample=False,
                         max_new_tokens=n, pad_token_id=PAD)
  return out[:, inputs["input_ids"].shape[1]:].numpy()


def greedy_ids(ckpt: str, inputs, n) -> np.ndarray:
  """mmjax's greedy ids `[B, n]` from a checkpoint on processor arrays, through the API."""
  from mmjax.generation import generate

  family, config, params = load_checkpoint(ckpt)
  pixels = family.generation_pixels(config, inputs)
  return generate(family, config, params, inputs["input_ids"], inputs["attention_mask"], pixels,
                  max_new_tokens=n)


def cli_greedy_ids(ckpt: str, inputs, n, workdir) -> np.ndarray:
  """The same through `mmjax generate --inputs` (files under `workdir`)."""
  from mmjax import cli

  np.savez(os.path.join(workdir, "inputs.npz"), **inputs)
  out = os.path.join(workdir, "ids.npy")
  assert cli.main(["generate", "--checkpoint", ckpt, "--inputs",
                   os.path.join(workdir, "inputs.npz"), "--out", out,
                   "--max-new-tokens", str(n)]) == 0
  return np.load(out)
