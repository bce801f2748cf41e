"""IDEFICS chat mode: from a converted checkpoint with IdeficsProcessor's files, the builder's
arrays equal the processor's for the interleaved list `[image, ..., prompt]` (`input_ids`,
`attention_mask`, `pixel_values [1, N, C, H, W]`, `image_attention_mask [1, T, N]`; one and two
images, a text-only prompt), and `mmjax generate --image --prompt` answers as transformers'
greedy `generate` on the processor's arrays (the decoded text of its tokens)."""

import numpy as np
import pytest
from PIL import Image
from transformers import IdeficsProcessor
from transformers.models.idefics.image_processing_pil_idefics import IdeficsImageProcessorPil

from gen_helpers import assert_chat_answers, hf_greedy_on
from hf_models import sentencepiece_tokenizer
from idefics_models import idefics_config, load_reference, tiny
from mmjax import cli
from mmjax.checkpoint import read_metadata
from mmjax.models import idefics

N = 6
PROMPT = " what shape is in the picture"
IMAGES = [(20, 33), (9, 9)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  root = tmp_path_factory.mktemp("idefics_chat")
  fast = sentencepiece_tokenizer(["what shape is in the picture", "a red square on a blue"] * 20)
  vocab = len(fast)
  fast.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>", "<image>"]})
  fast.pad_token = "<unk>"
  hf_cfg = idefics_config(resampler=True, vocab=vocab)
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=4)
  processor = IdeficsProcessor(IdeficsImageProcessorPil(image_size=16), fast)
  processor.save_pretrained(hf_dir)
  ckpt = str(root / "mm")
  assert cli.main(["convert", "--hf", hf_dir, "--out", ckpt, "--quiet"]) == 0
  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate(IMAGES):
    paths.append(str(root / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
  return hf_dir, ckpt, processor, fast, paths


def _processor_arrays(processor, paths):
  out = processor(text=[[*[Image.open(p).convert("RGB") for p in paths], PROMPT]])
  return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("count", [0, 1, 2])
def test_builder_arrays_equal_idefics_processor(model, count):
  _, ckpt, processor, _, paths = model
  family, config, _ = read_metadata(ckpt)
  expected = _processor_arrays(processor, paths[:count])
  ids, images = family.prompt_builder(ckpt, config)(PROMPT, paths[:count])
  np.testing.assert_array_equal(ids, expected["input_ids"])
  np.testing.assert_array_equal(expected["attention_mask"], 1)
  want = idefics.images_from_processor(config, expected)
  np.testing.assert_array_equal(images["image_attention_mask"], want["image_attention_mask"])
  np.testing.assert_allclose(images["pixel_values"], want["pixel_values"], atol=1e-5, rtol=0)
  assert expected["image_attention_mask"].shape[-1] == max(count, 1)


def test_chat_mode_answers_like_transformers(model, capsys):
  hf_dir, ckpt, processor, fast, paths = model
  inputs = _processor_arrays(processor, paths[:1])
  expected_ids = hf_greedy_on(load_reference(hf_dir), inputs, N)
  expected = fast.decode(expected_ids[0], skip_special_tokens=True)
  assert expected.strip()
  assert_chat_answers(ckpt, paths[:1], PROMPT, N, expected, capsys)
