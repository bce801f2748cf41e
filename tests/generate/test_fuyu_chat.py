"""Fuyu chat mode: from a converted checkpoint with FuyuProcessor's files, the builder's
`input_ids` and `image_patches` equal `FuyuProcessor(text=..., images=...)`'s (images of several
sizes: shrunk, smaller than the target; a text-only prompt), and `mmjax generate --image --prompt`
answers as transformers' greedy `generate` on the processor's arrays.

transformers 5.24's FuyuProcessor hands its PIL image processor torch tensors, which that
processor's numpy `patchify_image` cannot take; the reference wraps it to convert (the patches and
every layout and tokenization step stay the processor's own)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import FuyuProcessor
from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

from fuyu_models import fuyu_config, load_reference, tiny
from gen_helpers import assert_chat_answers, greedy_ids, hf_greedy_on
from hf_models import sentencepiece_tokenizer, text_config
from mmjax import cli
from mmjax.checkpoint import read_metadata

N = 6
SIZE = {"height": 8, "width": 12}
PROMPTS = ["what shape is in the picture", "the cat sat on a red square"]
IMAGES = [(5, 30), (7, 5)]  # shrunk to 2x12 (1x6 patches); kept at 7x5 (4x3 patches)


class _TorchPatchify(FuyuImageProcessorPil):
  def patchify_image(self, image, patch_size=None):
    return torch.from_numpy(super().patchify_image(np.asarray(image), patch_size))


@pytest.fixture(scope="module")
def fuyu(tmp_path_factory):
  root = tmp_path_factory.mktemp("fuyu_chat")
  fast = sentencepiece_tokenizer(PROMPTS * 20 + ["a red square on a blue ground"] * 20)
  speaker = fast.convert_tokens_to_ids("|SPEAKER|")
  hf_cfg = fuyu_config(text_config("persimmon", vocab_size=len(fast)), image_token_id=speaker)
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=3)
  patch = {"height": hf_cfg.patch_size, "width": hf_cfg.patch_size}
  FuyuProcessor(FuyuImageProcessorPil(size=SIZE, patch_size=patch), fast).save_pretrained(hf_dir)
  ckpt = str(root / "mm")
  assert cli.main(["convert", "--hf", hf_dir, "--out", ckpt, "--quiet"]) == 0
  reference = FuyuProcessor(_TorchPatchify(size=SIZE, patch_size=patch), fast)
  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate(IMAGES):
    paths.append(str(root / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
  return hf_dir, ckpt, reference, fast, paths


def _processor_arrays(reference, prompt, path=None):
  kw = {} if path is None else {"images": Image.open(path).convert("RGB")}
  out = reference(text=prompt, **kw)
  return {k: np.asarray(v) for k, v in out.items()}


def test_builder_arrays_equal_fuyu_processor(fuyu):
  _, ckpt, reference, fast, paths = fuyu
  family, config, _ = read_metadata(ckpt)
  builder = family.prompt_builder(ckpt, config)
  grids = set()
  for prompt, path in zip(PROMPTS, paths):
    expected = _processor_arrays(reference, prompt, path)
    ids, arrays = builder(prompt, [path])
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(expected["attention_mask"], 1)
    np.testing.assert_array_equal(arrays["image_patches"], expected["image_patches"])
    newline = fast.convert_tokens_to_ids("|NEWLINE|")
    grids.add((int(np.sum(ids == newline)), int(np.sum(ids == config.image_token_id))))
  assert grids == {(1, 6), (4, 12)}
  ids, arrays = builder(PROMPTS[0], [])
  assert arrays is None
  np.testing.assert_array_equal(ids[0], fast(PROMPTS[0])["input_ids"])  # FuyuProcessor(text=)
  with pytest.raises(ValueError, match="one image per prompt"):
    builder(PROMPTS[0], paths)


def test_chat_mode_answers_like_transformers(fuyu, capsys):
  hf_dir, ckpt, reference, fast, paths = fuyu
  inputs = _processor_arrays(reference, PROMPTS[0], paths[0])
  model = load_reference(hf_dir)
  expected_ids = hf_greedy_on(model, inputs, N)
  family, config, _ = read_metadata(ckpt)
  ids, arrays = family.prompt_builder(ckpt, config)(PROMPTS[0], paths[:1])
  ours = greedy_ids(ckpt, {"input_ids": ids, "attention_mask": np.ones_like(ids), **arrays}, N)
  np.testing.assert_array_equal(ours, expected_ids)
  expected = fast.decode(expected_ids[0], skip_special_tokens=True)
  assert expected.strip()
  assert_chat_answers(ckpt, paths[:1], PROMPTS[0], N, expected, capsys)
