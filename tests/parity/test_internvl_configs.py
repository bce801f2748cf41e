"""InternVL recipes: the configs parse with the freeze options, the tiny one builds and runs, and
InternVL2-8B's original config counts its published 8.08B parameters."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data.pipeline import DataConfig
from mmjax.models import internvl
from mmjax.models.registry import FAMILIES, abstract_params

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def load(path, arg=None):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("path,tiles", [("internvl/internvl2_8b_sft.py", 6),
                                        ("internvl/internvl25_8b_sft.py", 12)])
def test_sft_recipes_and_freeze_options(path, tiles):
  c = load(path)
  assert c.model.family in FAMILIES and tuple(c.train.trainable) == ("connector", "decoder")
  assert tuple(load(path, "mlp").train.trainable) == ("connector",)
  assert tuple(load(path, "full").train.trainable) == ("encoder", "connector", "decoder")
  with pytest.raises(ValueError, match="freeze option"):
    load(path, "everything")
  data = DataConfig.from_dict(c.data)
  assert data.image.family == "internvl" and data.image.max_tiles == tiles
  assert c.train.steps > 0 and c.checkpoint.every_steps > 0


def test_tiny_config_builds_and_runs():
  c = load("tiny/internvl.py")
  DataConfig.from_dict(c.data)
  config = internvl.config_from_dict(c.model.to_dict())
  assert config.tokens_per_image == 16 and config.decoder.tie_embeddings
  ids = np.asarray([[1] + [500] * 32 + [2, 3]])  # two tiles
  pixels = jnp.ones((2, 32, 32, 3))
  positions = jnp.arange(ids.shape[1])[None]
  module = internvl.InternVL(config)
  params = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.asarray(ids), pixels, positions)
  logits, _ = jax.jit(module.apply)(params, jnp.asarray(ids), pixels, positions)
  assert logits.shape == (1, ids.shape[1], 512) and np.isfinite(np.asarray(logits)).all()
  # Drop path runs only in training, and there it changes the output.
  drop = internvl.InternVL(internvl.config_from_dict(
      {**c.model.to_dict(), "vision": {**c.model.vision.to_dict(), "drop_path_rate": 0.9}}))
  features = lambda train, rng: drop.apply(params, pixels, train, method="image_features",
                                           rngs={"dropout": jax.random.PRNGKey(rng)})
  np.testing.assert_array_equal(features(False, 0), features(False, 1))
  assert not np.allclose(features(True, 0), features(True, 1))


INTERNVL2_8B = {  # OpenGVLab/InternVL2-8B config.json (original release), abridged
    "model_type": "internvl_chat", "downsample_ratio": 0.5, "select_layer": -1,
    "ps_version": "v2", "force_image_size": 448, "image_token_id": 92546,
    "vision_config": {"model_type": "intern_vit_6b", "hidden_size": 1024, "intermediate_size": 4096,
                      "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 448,
                      "patch_size": 14, "qkv_bias": True, "qk_normalization": False,
                      "norm_type": "layer_norm", "layer_norm_eps": 1e-6, "drop_path_rate": 0.1},
    "llm_config": {"model_type": "internlm2", "vocab_size": 92553, "hidden_size": 4096,
                   "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 1000000,
                   "rope_scaling": {"type": "dynamic", "factor": 2.0}, "bias": False,
                   "max_position_embeddings": 32768, "tie_word_embeddings": False},
}


def test_internvl2_8b_parameter_count():
  config = internvl.InternVLConfig.from_original(INTERNVL2_8B)
  shapes = abstract_params(FAMILIES["internvl_chat"], config)
  total = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  assert total == 8_075_365_376, total  # the hub model card's 8.08B
  assert config.tokens_per_image == 256 and config.decoder.rope.rope_type == "dynamic"
