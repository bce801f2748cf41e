"""LLaVA-NeXT generation: greedy ids equal transformers' `generate` on LlavaNextProcessor's arrays
(images of several sizes, left padding, a text-only row), through the API and
`mmjax generate --inputs`."""

import numpy as np
import pytest

from gen_helpers import cli_greedy_ids, greedy_ids, hf_greedy_on
from hf_models import text_config
from llava_next_models import llava_next_config, load_reference, make_inputs, tiny
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf

N = 8
ROWS = [[(20, 70), (7, 333)], [], [(90, 40)]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("llava_next_gen")
  hf_cfg = llava_next_config(text=text_config("mistral"), vision_feature_layer=[-2, 0])
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=5)
  convert_hf(hf_dir, str(root / "mm"), progress=False)
  inputs = make_inputs(hf_cfg, ROWS, seed=6)
  return root, inputs, hf_greedy_on(load_reference(hf_dir), inputs, N)


def test_greedy_ids_equal_transformers(converted):
  root, inputs, expected = converted
  np.testing.assert_array_equal(greedy_ids(str(root / "mm"), inputs, N), expected)


def test_generate_command_takes_the_processor_arrays(converted):
  root, inputs, expected = converted
  np.testing.assert_array_equal(cli_greedy_ids(str(root / "mm"), inputs, N, root), expected)


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
