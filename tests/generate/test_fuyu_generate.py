"""Fuyu generation: greedy ids equal transformers' `generate` on FuyuProcessor's arrays (patch
grids of several shapes, left padding, a text-only row; the patches enter the first forward
pass only), through the API and `mmjax generate --inputs`."""

import numpy as np
import pytest

from fuyu_models import fuyu_config, load_reference, make_inputs, tiny
from gen_helpers import cli_greedy_ids, greedy_ids, hf_greedy_on
from hf_models import text_config
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf

N = 8
GRIDS = [(2, 3), None, (4, 1)]
CONFIGS = {
    "qk_layernorm": lambda: fuyu_config(),
    "no_qk_norm_tied": lambda: fuyu_config(text_config("persimmon", qk_layernorm=False,
                                                       tie_word_embeddings=True)),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(f"fuyu_{request.param}_gen")
  hf_cfg = CONFIGS[request.param]()
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=5)
  convert_hf(hf_dir, str(root / "mm"), progress=False)
  inputs = make_inputs(hf_cfg, GRIDS, seed=6)
  return root, inputs, hf_greedy_on(load_reference(hf_dir), inputs, N)


def test_greedy_ids_equal_transformers(converted):
  root, inputs, expected = converted
  np.testing.assert_array_equal(greedy_ids(str(root / "mm"), inputs, N), expected)


def test_generate_command_takes_the_processor_arrays(converted):
  root, inputs, expected = converted
  np.testing.assert_array_equal(cli_greedy_ids(str(root / "mm"), inputs, N, root), expected)


def test_example_processor_inputs_fit_the_adapter(converted):
  """What `mmjax aot --step generate` feeds the adapter: every position a placeholder."""
  root, _, _ = converted
  family, config, _ = load_checkpoint(str(root / "mm"))
  example = family.example_processor_inputs(config, 2, 5)
  ids = example["input_ids"]
  adapter = family.generation_adapter(config)
  patches, _ = adapter.prepare_inputs(ids, np.ones_like(ids),
                                      family.generation_pixels(config, example), None)
  assert patches.shape == (10, config.patch_features)
  with pytest.raises(ValueError, match=r"unknown inputs \['image_patches_indices'\]"):
    adapter.prepare_inputs(ids, np.ones_like(ids), {"image_patches_indices": np.zeros(1)}, None)
