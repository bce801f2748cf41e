"""LLaVA-NeXT generation: greedy ids equal transformers' `generate` on LlavaNextProcessor's arrays
(images of several sizes, left padding, a text-only row), through the API and
`mmjax generate --inputs`."""

import numpy as np
import pytest
import torch

from hf_models import text_config
from llava_next_models import llava_next_config, load_reference, make_inputs, tiny, torch_inputs
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.generation import generate

N = 8
ROWS = [[(20, 70), (7, 333)], [], [(90, 40)]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("llava_next_gen")
  hf_cfg = llava_next_config(text=text_config("mistral"), vision_feature_layer=[-2, 0])
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=5)
  convert_hf(hf_dir, str(root / "mm"), progress=False)
  inputs = make_inputs(hf_cfg, ROWS, seed=6)
  model = load_reference(hf_dir)
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    out = model.generate(**torch_inputs(inputs), do_sample=False, max_new_tokens=N,
                         pad_token_id=0)
  expected = out[:, inputs["input_ids"].shape[1]:].numpy()
  return root, inputs, expected


def test_greedy_ids_equal_transformers(converted):
  root, inputs, expected = converted
  family, config, params = load_checkpoint(str(root / "mm"))
  pixels = family.generation_pixels(config, inputs)
  ids = generate(family, config, params, inputs["input_ids"], inputs["attention_mask"], pixels,
                 max_new_tokens=N)
  np.testing.assert_array_equal(ids, expected)


def test_generate_command_takes_the_processor_arrays(converted):
  root, inputs, expected = converted
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  np.testing.assert_array_equal(np.load(root / "ids.npy"), expected)


def test_example_processor_inputs_fit_the_adapter(converted):
  """What `mmjax aot --step generate` feeds the adapter: one whole-grid image per row."""
  root, _, _ = converted
  family, config, _ = load_checkpoint(str(root / "mm"))
  h, w = config.grid_pinpoints[0]
  example = family.example_processor_inputs(config, 2, config.tokens_for(h, w) + 3)
  ids = example["input_ids"]
  images, _ = family.generation_adapter(config).prepare_inputs(
      ids, np.ones_like(ids), family.generation_pixels(config, example), None)
  assert images["index"].shape == (2 * config.tokens_for(h, w),)
  with pytest.raises(ValueError, match="cannot hold"):
    family.example_processor_inputs(config, 1, 4)
