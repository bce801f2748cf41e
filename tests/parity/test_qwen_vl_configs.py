"""Qwen-VL recipes: the configs parse, the tiny ones build and run, 7B shapes count right."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data.pipeline import DataConfig
from mmjax.models import qwen_vl
from mmjax.models.registry import FAMILIES, abstract_params

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def load(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("path", ["qwen2_vl/qwen2_vl_7b_sft.py", "qwen2_vl/qwen25_vl_7b_sft.py"])
def test_sft_recipes(path):
  c = load(path)
  assert c.model.family in FAMILIES and tuple(c.train.trainable) == ("decoder",)
  data = DataConfig.from_dict(c.data)
  assert data.image.max_pixels == 28 * 28 * 1280 and data.mrope
  assert DataConfig.from_dict(load(path, str(448 * 448)).data).image.max_pixels == 448 * 448
  for key in ("optim", "mesh", "train", "checkpoint"):
    assert key in c


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_tiny_config_builds_and_runs(family):
  c = load("tiny/qwen2_vl.py", family)
  DataConfig.from_dict(c.data)
  config = qwen_vl.config_from_dict(c.model.to_dict())
  assert config.model_type == family and config.vision.out_hidden_size == 128
  grid = [[1, 4, 6], [2, 2, 2]]  # an image and a two-frame video of patches
  n = sum(t * h * w for t, h, w in grid)
  images = qwen_vl.vision_batch(np.ones((24, config.vision.patch_features)), grid[:1],
                                config.vision, num_patches=32)
  videos = qwen_vl.vision_batch(np.ones((n - 24, config.vision.patch_features)), grid[1:],
                                config.vision)
  frames = [501, 4, 501] if family == "qwen3_vl" else [501, 501]  # Qwen3-VL: timestamps between
  ids = np.asarray([[1] + [500] * 6 + [2] + frames + [3]])
  positions, _ = qwen_vl.positions_for(config, ids, image_grid_thw=grid[:1],
                                       video_grid_thw=grid[1:])
  module = qwen_vl.QwenVL(config)
  args = (jnp.asarray(ids), jax.tree.map(jnp.asarray, images), jax.tree.map(jnp.asarray, videos),
          jnp.asarray(positions))
  params = jax.jit(module.init)(jax.random.PRNGKey(0), *args)
  logits, _ = jax.jit(module.apply)(params, *args)  # padded patch budget, under jit
  assert logits.shape == (1, ids.shape[1], 512) and np.isfinite(np.asarray(logits)).all()


QWEN2_VL_7B = {  # Qwen/Qwen2-VL-7B-Instruct config.json (hub, flat text settings)
    "model_type": "qwen2_vl", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "vocab_size": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 32768, "tie_word_embeddings": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16,
                      "in_chans": 3, "hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2},
    "image_token_id": 151655, "video_token_id": 151656,
}


def test_qwen2_vl_7b_has_its_parameter_count():
  family = FAMILIES["qwen2_vl"]
  shapes = abstract_params(family, family.config_from_hf(QWEN2_VL_7B))
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  assert count == 8_291_375_616, count


QWEN2_5_VL_7B = {  # Qwen/Qwen2.5-VL-7B-Instruct config.json (hub, flat text settings)
    "model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "vocab_size": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 128000, "tie_word_embeddings": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
                      "intermediate_size": 3420, "num_heads": 16, "in_chans": 3,
                      "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2},
    "image_token_id": 151655, "video_token_id": 151656,
}


@pytest.mark.parametrize("path,hub,count", [
    ("qwen2_vl/qwen2_vl_7b_sft.py", QWEN2_VL_7B, 8_291_375_616),
    ("qwen2_vl/qwen25_vl_7b_sft.py", QWEN2_5_VL_7B, 8_292_166_656)])
def test_7b_recipes_build_the_hub_model_from_their_model_section(path, hub, count):
  """Without a checkpoint, `mmjax train` builds the recipe's `model.*`: the hub model exactly
  (windows, full-attention layers, M-RoPE sections...), with the recipe's execution settings."""
  from mmjax.train.model_config import EXECUTION_KEYS, apply_execution, build_model_config

  model = load(path).model.to_dict()
  family, config = build_model_config(model)
  family_hub = FAMILIES[hub["model_type"]]
  expected = apply_execution(family_hub.config_from_hf(hub),
                             {k: model[k] for k in EXECUTION_KEYS if k in model})
  assert family is family_hub and config == expected
  assert config.decoder.dtype == "bfloat16" and config.vision.remat_policy == "dots"
  shapes = abstract_params(family, config)
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == count
