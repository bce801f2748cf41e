"""BLIP-2's retrieval model (`Blip2ForImageTextRetrieval`): converted ITC scores and ITM logits
equal transformers' in float32 (`use_image_text_matching_head` False / True), and conversion round
trips bit for bit.

One tiny random model: the 24-wide EVA tower of `blip2_models`, a Q-Former of depth 3 crossing
every second layer with its own 64-word text embeddings, a 16-wide ITC space; three images
against four right-padded texts (ITC), three image-text pairs (ITM).
"""

import numpy as np
import pytest
import torch
import transformers

from blip2_models import blip2_config
from hf_files import assert_same_tensors, load_tensors
from hf_models import TOLERANCE, converted_once, max_diff, record, save
from mmjax.convert.exporter import export_hf

Q, VOCAB = 3, 64


def _hf_config(name=None):
  base = blip2_config(depth=3, freq=2, queries=Q).to_dict()
  qformer = {k: v for k, v in base["qformer_config"].items() if k != "model_type"}
  qformer.update(vocab_size=VOCAB, max_position_embeddings=20, use_qformer_text_input=True)
  vision = {k: v for k, v in base["vision_config"].items() if k != "model_type"}
  return transformers.Blip2Config(vision_config=vision, qformer_config=qformer,
                                  num_query_tokens=Q, image_text_hidden_size=16,
                                  architectures=["Blip2ForImageTextRetrieval"])


def _tiny(path, hf_cfg, seed=0):
  torch.manual_seed(seed)
  return save(transformers.Blip2ForImageTextRetrieval(hf_cfg), path, seed=seed)


def _reference(hf_dir):
  return transformers.Blip2ForImageTextRetrieval.from_pretrained(
      hf_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  return converted_once(tmp_path_factory, "blip2_retrieval", _hf_config, _tiny, _reference)("tiny")


def _inputs(images, texts, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, 8, texts)
  lengths[0] = 7
  ids = np.zeros((texts, 7), np.int64)
  mask = np.zeros((texts, 7), np.int64)
  for i, n in enumerate(lengths):
    ids[i, :n] = rng.integers(1, VOCAB, n)
    mask[i, :n] = 1
  pixels = rng.normal(size=(images, 3, 30, 30)).astype(np.float32)
  return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}


def _hf(model, inputs, itm):
  with torch.no_grad():
    out = model(**{k: torch.tensor(v) for k, v in inputs.items()},
                use_image_text_matching_head=itm)
  return out.logits_per_image.numpy()


def test_itc_and_itm_match_transformers(converted):
  _, _, model, (family, config, params) = converted
  assert family.name == "blip-2-retrieval" and config.qformer.cross_layers == (0, 2)
  itc_inputs = _inputs(3, 4)
  ours = family.forward_from_hf_inputs(config, params, itc_inputs)
  ref = _hf(model, itc_inputs, False)
  assert ours.shape == ref.shape == (3, 4)
  itc = max_diff(ours, ref)
  itm_inputs = _inputs(3, 3, seed=1)
  ours_itm = family.forward_from_hf_inputs(config, params, itm_inputs, use_itm_head=True)
  ref_itm = _hf(model, itm_inputs, True)
  assert ours_itm.shape == ref_itm.shape == (3, 2)
  itm = max_diff(ours_itm, ref_itm)
  record("blip2_retrieval/itc", itc)
  record("blip2_retrieval/itm", itm)
  print(f"ITC max abs diff {itc:.3g}, ITM {itm:.3g}")
  assert itc <= TOLERANCE and itm <= TOLERANCE, (itc, itm)


def test_export_round_trips_bit_for_bit(converted, tmp_path):
  root, _, _, (family, config, _) = converted
  export_hf(str(root / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(str(root / "hf")), load_tensors(str(tmp_path / "back")))
  _, info = transformers.Blip2ForImageTextRetrieval.from_pretrained(
      str(tmp_path / "back"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert family.config_from_hf(family.hf_config(config)) == config
