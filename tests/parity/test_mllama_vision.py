"""Llama 3.2 Vision's tiled tower: `MllamaVisionTransformer` equals transformers'
`MllamaVisionModel.last_hidden_state` (eager and sdpa), its weights loaded through
`mllama_vision_rules` with the converter's strict plan."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_models import TOLERANCE, add_noise, max_diff, record
from module_params import load_params
from mmjax.convert.tables.mllama_vision import mllama_vision_rules
from mmjax.encoders.mllama_vit import MllamaVisionConfig, MllamaVisionTransformer

FOUR_TILE_RATIOS = [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]
TWO_TILE_RATIOS = [[1, 1], [1, 2], [2, 1]]

# (HF config overrides, images as (aspect_ratio_id, valid tiles) per batch row); id 0 with one
# valid tile is the padding image the processor adds to rows with fewer images.
CASES = {
    # 17 tokens per tile -> 7 padding tokens; the first and the last local layer.
    "tiles4_first_last_global1": (
        dict(image_size=16, patch_size=4, num_hidden_layers=3, num_global_layers=1,
             max_num_tiles=4, intermediate_layers_indices=[0, 2]),
        [[(6, 4), (2, 2)], [(4, 4), (0, 1)]]),
    # 10 tokens per tile -> 6 padding tokens; unsorted and negative indices, 2 global layers.
    "tiles2_unsorted_negative_global2": (
        dict(image_size=12, patch_size=4, num_hidden_layers=4, num_global_layers=2,
             max_num_tiles=2, supported_aspect_ratios=TWO_TILE_RATIOS,
             intermediate_layers_indices=[2, 0, -1]),
        [[(1, 1), (3, 2), (0, 1)]]),
    # 5 tokens per tile -> 3 padding tokens; one intermediate layer, 2 heads.
    "tiles4_one_layer_heads2": (
        dict(image_size=8, patch_size=4, num_hidden_layers=2, num_global_layers=2,
             max_num_tiles=4, attention_heads=2, intermediate_layers_indices=[1]),
        [[(7, 3)], [(1, 1)], [(0, 1)]]),
}


def _hf_model(overrides) -> transformers.MllamaVisionModel:
  base = dict(hidden_size=32, intermediate_size=48, attention_heads=4,
              supported_aspect_ratios=FOUR_TILE_RATIOS)
  cfg = transformers.MllamaVisionConfig(**{**base, **overrides})
  cfg.vision_output_dim = cfg.hidden_size * (1 + len(cfg.intermediate_layers_indices))
  torch.manual_seed(0)
  # Fresh HF init leaves every embedding gate at 0: the noise makes each branch count.
  return add_noise(transformers.MllamaVisionModel(cfg), scale=0.3).eval()


def _inputs(cfg: MllamaVisionConfig, rows, seed=0):
  """HF's `[B, I, T, C, H, W]` pixels, `[B, I]` ids, `[B, I, T]` tile masks."""
  b, images, t, side = len(rows), max(len(r) for r in rows), cfg.max_num_tiles, cfg.image_size
  pixels = np.random.default_rng(seed).normal(size=(b, images, t, 3, side, side))
  ids = np.zeros((b, images), np.int64)
  mask = np.zeros((b, images, t), np.int64)
  mask[:, :, 0] = 1  # as the processor pads rows with fewer images
  for i, row in enumerate(rows):
    for j, (ratio_id, tiles) in enumerate(row):
      ids[i, j] = ratio_id
      mask[i, j, :tiles] = 1
  return pixels.astype(np.float32), ids, mask


@pytest.mark.parametrize("name", sorted(CASES))
def test_vision_tower_matches_transformers(name):
  overrides, rows = CASES[name]
  hf = _hf_model(overrides)
  cfg = MllamaVisionConfig.from_hf(hf.config.to_dict())
  pixels, ids, mask = _inputs(cfg, rows)
  b, images = ids.shape
  args = (jnp.asarray(pixels.reshape(b * images, *pixels.shape[2:]).transpose(0, 1, 3, 4, 2)),
          jnp.asarray(ids.reshape(-1), jnp.int32), jnp.asarray(mask.reshape(b * images, -1)))
  model = MllamaVisionTransformer(cfg)
  params = load_params(model, args, hf.state_dict(), mllama_vision_rules())
  ours = np.asarray(jax.jit(model.apply)({"params": params}, *args))
  s = cfg.num_positions
  assert ours.shape == (b * images, cfg.max_num_tiles, s, cfg.output_dim)
  for impl in ("eager", "sdpa"):
    hf.config._attn_implementation = impl
    with torch.no_grad():
      ref = hf(pixel_values=torch.tensor(pixels), aspect_ratio_ids=torch.tensor(ids),
               aspect_ratio_mask=torch.tensor(mask)).last_hidden_state.numpy()
    diff = max_diff(ours, ref.reshape(ours.shape))
    record(f"mllama_vision/{name}/{impl}", diff)
    assert diff <= TOLERANCE, (impl, diff)


def test_intermediate_layers_are_layer_outputs_interleaved():
  """Feature d of the k-th listed layer sits at D + d*K + k and is that local layer's output
  (transformers >= 4.57: no embedding entry), before post_norm."""
  hf = _hf_model(CASES["tiles4_first_last_global1"][0])
  cfg = MllamaVisionConfig.from_hf(hf.config.to_dict())
  pixels, ids, mask = _inputs(cfg, [[(6, 4)]])
  outputs = []
  hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o.numpy()))
           for layer in hf.transformer.layers]
  with torch.no_grad():
    last = hf(pixel_values=torch.tensor(pixels), aspect_ratio_ids=torch.tensor(ids),
              aspect_ratio_mask=torch.tensor(mask)).last_hidden_state.numpy()[0, 0]
  for hook in hooks:
    hook.remove()
  d, k, s, sp = cfg.hidden_size, len(cfg.layer_indices), cfg.num_positions, cfg.padded_positions
  for slot, layer in enumerate(cfg.layer_indices):
    expected = outputs[layer].reshape(cfg.max_num_tiles, sp, d)[:, :s]
    np.testing.assert_array_equal(last[..., d + slot::k], expected)


def test_config_round_trips_through_transformers():
  hf_cfg = _hf_model(CASES["tiles2_unsorted_negative_global2"][0]).config
  ours = MllamaVisionConfig.from_hf(hf_cfg.to_dict(), dtype="bfloat16", remat_policy="full")
  assert (ours.dtype, ours.remat_policy) == ("bfloat16", "full")
  assert ours.layer_indices == (2, 0, 3) and ours.output_dim == 4 * 32
  back = transformers.MllamaVisionConfig(**ours.to_hf())
  for key, value in ours.to_hf().items():
    assert getattr(back, key) == value, key
  assert MllamaVisionConfig.from_hf(back.to_dict()) == dataclasses.replace(
      ours, dtype="float32", remat_policy="none")


def test_bad_configs_name_the_field():
  with pytest.raises(ValueError, match="intermediate_layers_indices"):
    MllamaVisionConfig.from_hf(dict(num_hidden_layers=4, intermediate_layers_indices=[4]))
  with pytest.raises(ValueError, match="image_size must be square"):
    MllamaVisionConfig.from_hf(dict(image_size=[16, 32], patch_size=4))


def test_tower_attention_stays_on_xla_under_splash_so_its_flops_are_counted():
  """The tiles' mask is dense, so even with `attention_backend="splash"` the tower lowers with no
  Pallas kernel: `mmjax aot` must count its attention (only the decoder's is in kernels)."""
  from mmjax.models.registry import FAMILIES

  overrides, rows = CASES["tiles4_one_layer_heads2"]
  cfg = dataclasses.replace(MllamaVisionConfig.from_hf(_hf_model(overrides).config.to_dict()),
                            attention_backend="splash")
  pixels, ids, mask = _inputs(cfg, rows)
  args = (jnp.asarray(pixels[:, 0].transpose(0, 1, 3, 4, 2)), jnp.asarray(ids[:, 0], jnp.int32),
          jnp.asarray(mask[:, 0]))
  model = MllamaVisionTransformer(cfg)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
  assert "pallas_call" not in str(jax.make_jaxpr(model.apply)(params, *args))

  class Config:  # what kernel_attention_stacks reads: each stack's attention_backend
    vision, decoder = cfg, dataclasses.replace(cfg)
  assert FAMILIES["mllama"].kernel_attention_stacks(Config) == ("decoder",)
