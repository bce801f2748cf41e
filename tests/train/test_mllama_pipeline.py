"""Llama 3.2 Vision training data: the pipeline's batches (`image_preset="mllama"`: tiles per
image slot, aspect-ratio ids and masks) give, through the family's train forward, the logits
transformers computes from MllamaImageProcessor's arrays for the same conversations; `mmjax aot`'s
abstract batch has the pipeline's layout."""

import json
import os
import sys

import jax
import numpy as np
import torch
from PIL import Image
from transformers.models.mllama import processing_mllama
from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_models import TOLERANCE, max_diff, save  # noqa: E402
from mllama_models import build, mllama_config  # noqa: E402
from mmjax.checkpoint import load_checkpoint  # noqa: E402
from mmjax.convert.importer import convert_hf  # noqa: E402
from mmjax.data import DataConfig  # noqa: E402
from mmjax.data.pipeline import build_dataset  # noqa: E402
from mmjax.data.preprocess import common  # noqa: E402
from mmjax.data.tokenizer import Tokenizer, train_tiny_tokenizer  # noqa: E402

SPECIALS = ("<unk>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<|image|>")
CORPUS = ["user assistant What is in the picture? A red square on a blue background."] * 20
SIZES = [(28, 56), (56, 28), (20, 20), (60, 30)]  # (h, w): 1x2, 2x1, 1x1, 2x1 tiles


def _dataset(tmp_path):
  tok = tmp_path / "tok"
  tok.mkdir()
  train_tiny_tokenizer(CORPUS, special_tokens=SPECIALS, vocab_size=300,
                       bos="<|begin_of_text|>").save(str(tok / "tokenizer.json"))
  rng = np.random.default_rng(0)
  records = []
  for i, (h, w) in enumerate(SIZES):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    records.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"},
        {"from": "gpt", "value": "A red square." if i % 2 else "A blue background."}]})
  (tmp_path / "data.json").write_text(json.dumps(records))
  return str(tok)


def _reference_inputs(batch, image_id, images):
  """transformers' arrays for the pipeline's token rows (right-padded, one image each)."""
  ids = np.asarray(batch["input_ids"]).astype(np.int64)
  processor = MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=2,
                                      image_mean=list(common.OPENAI_CLIP_MEAN),
                                      image_std=list(common.OPENAI_CLIP_STD))
  pixels = processor(images=[[im] for im in images], return_tensors="np")
  spans = [processing_mllama.get_cross_attention_token_mask(list(row), image_id) for row in ids]
  cross = processing_mllama.convert_sparse_cross_attention_mask_to_dense(
      spans, pixels["num_tiles"], max_num_tiles=2, length=ids.shape[1])
  return {"input_ids": ids, "attention_mask": np.asarray(batch["attention_mask"]).astype(np.int64),
          "pixel_values": pixels["pixel_values"], "aspect_ratio_ids": pixels["aspect_ratio_ids"],
          "aspect_ratio_mask": pixels["aspect_ratio_mask"], "cross_attention_mask": cross}


def test_pipeline_batches_train_on_what_transformers_sees(tmp_path):
  tok_dir = _dataset(tmp_path)
  image_id = Tokenizer.load(tok_dir).token_to_id("<|image|>")
  hf_cfg = mllama_config(cross_layers=(0, 2), text_layers=3, max_tiles=2)
  hf_cfg.image_token_index = image_id
  hf_cfg.text_config.vocab_size = 320
  hf_dir = save(build(hf_cfg), str(tmp_path / "hf"))
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  family, config, params = load_checkpoint(str(tmp_path / "mm"))

  data = dict(image_preset="mllama", image_overrides=dict(size=28, max_tiles=2),
              template="llama3", tokenizer=tok_dir, image_token="<|image|>", max_length=32,
              max_tiles=2, max_images=1, batch_size=len(SIZES), packing=False, shuffle=False,
              sources=[dict(path=str(tmp_path / "data.json"))])
  cfg = DataConfig.from_dict(data)
  batch = next(iter(build_dataset(cfg, Tokenizer.load(tok_dir))))
  assert batch["pixel_values"].shape == (len(SIZES) * 2, 28, 28, 3)
  np.testing.assert_array_equal(batch["aspect_ratio_mask"], [[1, 1], [1, 1], [1, 0], [1, 1]])
  assert (batch["input_ids"] == image_id).sum(1).tolist() == [1] * len(SIZES)

  abstract = family.abstract_train_batch(config, data, jax.ShapeDtypeStruct)
  for key, spec in abstract.items():
    assert np.shape(batch[key]) == spec.shape, key

  module = family.build(config)
  model_batch = {k: jax.numpy.asarray(v) for k, v in batch.items() if k in abstract}
  ours = np.asarray(family.train_forward(module, params, model_batch))
  images = [Image.open(tmp_path / f"{i}.png") for i in range(len(SIZES))]
  inputs = _reference_inputs(batch, image_id, images)
  import transformers
  model = transformers.MllamaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  with torch.no_grad():
    ref = model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.float().numpy()
  diff = max_diff(ours, ref, inputs["attention_mask"])
  assert diff <= TOLERANCE, diff


def test_the_tile_budget_must_fit_whole_images():
  import pytest
  with pytest.raises(ValueError, match="max_tiles must be max_images \\* 4 = 8"):
    DataConfig.from_dict(dict(image_preset="mllama", max_tiles=4, max_images=2))
