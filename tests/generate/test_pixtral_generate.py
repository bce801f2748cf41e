"""Pixtral and Mistral3 generation: greedy ids equal transformers' `generate` on
PixtralProcessor's arrays (images of several sizes, left padding, a text-only row), through the
API and `mmjax generate --inputs`."""

import numpy as np
import pytest

from gen_helpers import cli_greedy_ids, greedy_ids, hf_greedy_on
from hf_models import text_config
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from pixtral_models import load_reference, make_inputs, mistral3_config, pixtral_config, tiny

N = 8
ROWS = [[(20, 70), (7, 333)], [], [(90, 40)]]
CONFIGS = {
    "pixtral": lambda: pixtral_config(text=text_config("mistral", sliding_window=24),
                                      vision_feature_layer=[-2, 0]),
    "mistral3": lambda: mistral3_config(),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(f"{request.param}_gen")
  hf_cfg = CONFIGS[request.param]()
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=5)
  convert_hf(hf_dir, str(root / "mm"), progress=False)
  inputs = make_inputs(hf_cfg, ROWS, seed=6)
  return root, inputs, hf_greedy_on(load_reference(hf_dir, hf_cfg), inputs, N)


def test_greedy_ids_equal_transformers(converted):
  root, inputs, expected = converted
  np.testing.assert_array_equal(greedy_ids(str(root / "mm"), inputs, N), expected)


def test_generate_command_takes_the_processor_arrays(converted):
  root, inputs, expected = converted
  np.testing.assert_array_equal(cli_greedy_ids(str(root / "mm"), inputs, N, root), expected)


def test_example_processor_inputs_fit_the_adapter(converted):
  """What `mmjax aot --step generate` feeds the adapter: one largest image per row."""
  root, _, _ = converted
  family, config, _ = load_checkpoint(str(root / "mm"))
  side = config.vision.image_size
  n = config.tokens_for(side, side)
  example = family.example_processor_inputs(config, 2, n + 3)
  ids = example["input_ids"]
  images, _ = family.generation_adapter(config).prepare_inputs(
      ids, np.ones_like(ids), family.generation_pixels(config, example), None)
  assert images["patches"].shape[0] == 2 * (side // config.vision.patch_size) ** 2
  with pytest.raises(ValueError, match="cannot hold"):
    family.example_processor_inputs(config, 1, 4)
  with pytest.raises(ValueError, match=r"unknown inputs \['pixel_values_videos'\]"):
    family.generation_adapter(config).prepare_inputs(
        ids, np.ones_like(ids), {"pixel_values_videos": np.zeros(1)}, None)
