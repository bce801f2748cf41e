"""IDEFICS generation: greedy ids equal transformers' `generate` on IdeficsProcessor's arrays
(several images a row, a padding image, a text-only row, left padding; new tokens see the
images of the prompt's last token), through the API and `mmjax generate --inputs`; a text-only
batch without pixel_values as transformers generates from the processor's arrays of one."""

import numpy as np
import pytest
import torch

from idefics_models import idefics_config, load_reference, make_inputs, tiny, torch_inputs
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.generation import GenerateConfig, Generator, generate
from mmjax.generation.partition import shard_params, tensor_mesh

N = 8
ROWS = [[2, "img", 3, "img", 2], [4, "img", 1, "eos", 2], [5]]


def hf_greedy(model, inputs) -> np.ndarray:
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    out = model.generate(**torch_inputs(inputs), do_sample=False, max_new_tokens=N,
                         pad_token_id=0)
  return out[:, inputs["input_ids"].shape[1]:].numpy()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("idefics_gen")
  hf_cfg = idefics_config(resampler=True, gate="vector", qk_norm=True)
  hf_dir = tiny(str(root / "hf"), hf_cfg, seed=2)
  convert_hf(hf_dir, str(root / "mm"), progress=False)
  return root, hf_cfg, load_reference(hf_dir), load_checkpoint(str(root / "mm"))


def test_greedy_ids_equal_transformers(converted):
  _, hf_cfg, model, (family, config, params) = converted
  inputs = make_inputs(hf_cfg, ROWS, seed=3)
  expected = hf_greedy(model, inputs)
  pixels = family.generation_pixels(config, inputs)
  ids = generate(family, config, params, inputs["input_ids"], inputs["attention_mask"], pixels,
                 max_new_tokens=N)
  np.testing.assert_array_equal(ids, expected)


def test_tensor_parallel_generation_equals_transformers(converted):
  """Parameters split over a 'tensor' mesh axis (8 fake CPU devices): the scanned group with
  the gated layers' image keys/values in its cache (one device unrolls the layers instead)."""
  _, hf_cfg, model, (family, config, params) = converted
  inputs = make_inputs(hf_cfg, ROWS[:2] + [[1, "img", 2], [3]], seed=6)
  mesh = tensor_mesh(tensor=2, data=4)
  sharded = shard_params(family, config, params, mesh)
  assert sharded["decoder"]["layers"]["gated_cross_0"]["attn"]["q"]["kernel"].sharding.spec[1] \
      == "tensor"  # [repeats, N, H, D]
  ids = Generator(family, config, sharded, mesh)(
      inputs["input_ids"], inputs["attention_mask"], family.generation_pixels(config, inputs),
      gen=GenerateConfig(N, pad_id=0))
  np.testing.assert_array_equal(ids, hf_greedy(model, inputs))


def test_generate_command_takes_the_processor_arrays(converted):
  root, hf_cfg, model, _ = converted
  inputs = make_inputs(hf_cfg, [["img", 3], [2, "img", "img", 1]], seed=4)
  np.savez(root / "inputs.npz", **inputs)
  assert cli.main(["generate", "--checkpoint", str(root / "mm"), "--inputs",
                   str(root / "inputs.npz"), "--out", str(root / "ids.npy"),
                   "--max-new-tokens", str(N)]) == 0
  np.testing.assert_array_equal(np.load(root / "ids.npy"), hf_greedy(model, inputs))


def test_text_only_prompts_generate_as_transformers(converted):
  _, hf_cfg, model, (family, config, params) = converted
  inputs = make_inputs(hf_cfg, [[3], [6]], seed=5)
  ids = generate(family, config, params, inputs["input_ids"], inputs["attention_mask"], None,
                 max_new_tokens=N)
  np.testing.assert_array_equal(ids, hf_greedy(model, inputs))


def test_example_processor_inputs_fit_the_adapter(converted):
  """What `mmjax aot --step generate` feeds the adapter: one image every token sees."""
  _, _, _, (family, config, _) = converted
  example = family.example_processor_inputs(config, 2, 5)
  ids = example["input_ids"]
  images, _ = family.generation_adapter(config).prepare_inputs(
      ids, np.ones_like(ids), family.generation_pixels(config, example), None)
  assert images["pixel_values"].shape == (2, 1, 16, 16, 3)
  assert images["image_attention_mask"].shape == (2, 5, 1)
