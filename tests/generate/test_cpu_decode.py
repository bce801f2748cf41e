"""Decoding on one CPU device reads the weights where they are: no per-token copies of them, no
per-call transfer of numpy parameters, per-layer views that share the stacked arrays' memory,
and the same ids as the stacked (scanned) layout."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_helpers import text_prompts
from mmjax.decoders.config import DecoderConfig
from mmjax.generation import GenerateConfig, Generator
from mmjax.generation import layer_views
from mmjax.models.registry import FAMILIES

# Weights large next to one token's activations and a short cache, so that a copy of any one
# layer's weight matrix stands out in the decode loop's scratch memory.
CONFIG = DecoderConfig(vocab_size=64, hidden_size=256, intermediate_size=512, num_layers=3,
                       num_heads=8, num_kv_heads=2, head_dim=32)
SMALLEST_WEIGHT = 4 * CONFIG.num_kv_heads * CONFIG.head_dim * CONFIG.hidden_size  # k, v: bytes


def _random_params(family, config, seed=0) -> dict:
  """Noisy numpy parameters (as `load_checkpoint` returns them) from the module's shapes:
  running an init eagerly takes up to a minute on two loaded cores."""
  shapes = jax.eval_shape(family.build(config).init, jax.random.PRNGKey(0),
                          *family.example_inputs(config))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype),
                      nn.unbox(shapes))


@functools.cache
def _model():
  family = FAMILIES["causal_lm"]
  return family, _random_params(family, CONFIG)


def _decode_scratch_bytes(generator, ids, mask, gen) -> int:
  carry = generator.prefill(ids, mask, gen=gen)
  compiled = generator._decode.lower(generator.params, carry, gen=gen.static,
                                     on_token=None).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_decode_loop_copies_no_weights():
  family, params = _model()
  ids, mask = text_prompts(CONFIG.vocab_size, (5, 3))
  gen = GenerateConfig(4)
  generator = Generator(family, CONFIG, params)
  assert generator.per_layer
  # Scratch of the loop: activations, logits and its copy of the (24 KiB) cache; a layer's
  # weight matrix sliced or transposed at each step would need at least SMALLEST_WEIGHT more.
  assert _decode_scratch_bytes(generator, ids, mask, gen) < SMALLEST_WEIGHT


def test_parameters_are_put_on_the_device_once_and_layers_share_their_memory():
  family, params = _model()
  generator = Generator(family, CONFIG, params)
  leaves = jax.tree.leaves(generator.params)
  assert all(isinstance(a, jax.Array) for a in leaves)
  assert len(generator.params["decoder"]["layers"]["mlp"]["up"]["kernel"]) == CONFIG.num_layers
  stacked = jax.device_put(params)
  views = layer_views.split_params(stacked, ("layers",))["decoder"]["layers"]
  views = views["mlp"]["up"]["kernel"]  # Layers: one [F, D] array per layer
  kernel = stacked["decoder"]["layers"]["mlp"]["up"]["kernel"]  # [L, F, D]
  layer_bytes = kernel[0].size * kernel.dtype.itemsize
  for i, layer in enumerate(views.arrays):
    np.testing.assert_array_equal(layer, kernel[i])
    assert layer.unsafe_buffer_pointer() == kernel.unsafe_buffer_pointer() + i * layer_bytes


def test_per_layer_and_stacked_layouts_give_the_same_ids():
  family, params = _model()
  ids, mask = text_prompts(CONFIG.vocab_size, (7, 2, 5), seed=3)
  gen = GenerateConfig(6)
  per_layer = Generator(family, CONFIG, params)
  stacked = Generator(family, CONFIG, params)
  stacked.per_layer, stacked.params = False, jax.device_put(params)
  np.testing.assert_array_equal(per_layer(ids, mask, gen=gen), stacked(ids, mask, gen=gen))


def test_a_mesh_or_abstract_parameters_keep_the_stacked_layout():
  family, params = _model()
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
  segments = layer_views.segment_names(family, CONFIG)
  assert not layer_views.applies(abstract, None, segments)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  assert not layer_views.applies(jax.device_put(params), mesh, segments)
  assert layer_views.applies(jax.tree.map(jnp.asarray, params), None, segments)


def test_every_segment_and_the_image_keys_values_are_held_per_layer():
  """Llama 3.2 Vision with cross-attention at layer 1 of 3: two segments (a self + cross group,
  then a self-attention stack), the images' keys/values in the cache. (Its greedy ids equal
  transformers' through this path: tests/parity/test_mllama.py.)"""
  from mllama_models import make_inputs, mllama_config

  hf_cfg = mllama_config(cross_layers=(1,), text_layers=3)
  family = FAMILIES["mllama"]
  config = family.config_from_hf(hf_cfg.to_dict())
  generator = Generator(family, config, _random_params(family, config))
  segments = layer_views.segment_names(family, config)
  assert generator.per_layer and segments == ("layers", "layers_1")
  is_layers = lambda x: isinstance(x, layer_views.Layers)  # noqa: E731
  for name in segments:
    leaves = jax.tree.leaves(generator.params["decoder"][name], is_leaf=is_layers)
    assert leaves and all(is_layers(leaf) for leaf in leaves)
  inputs = make_inputs(hf_cfg, [[2, (1, 2), 3]], seed=3)
  carry = generator.prefill(inputs["input_ids"], inputs["attention_mask"],
                            family.generation_pixels(config, inputs), gen=GenerateConfig(2))
  cache = carry["state"]["cache"]
  cross = cache["layers"]["cross_1"]  # the images' keys/values, one array per repeat
  self_length = carry["mask"].shape[1]
  assert is_layers(cross["k"]) and cross["k"].arrays[0].shape[1] != self_length
  leaves = jax.tree.leaves(cache, is_leaf=is_layers)
  assert len(leaves) == 6 and all(is_layers(leaf) for leaf in leaves)  # 3 layers x (k, v)
