"""CLIP / SigLIP dual encoders: HF -> mmjax -> HF bit for bit, strictness, config round trips,
and a model described by a training config alone."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from hf_files import assert_same_tensors, load_tensors, rewrite
from hf_models import dual_encoder_config, save
from mmjax.convert.exporter import export_hf
from mmjax.convert.importer import convert_hf
from mmjax.convert.plan import ConversionError
from mmjax.models.dual_encoder import ContrastiveOutput
from mmjax.models.registry import abstract_params, family_for_hf, family_named
from mmjax.train.model_config import build_model_config

MODELS = {"clip": transformers.CLIPModel, "siglip": transformers.SiglipModel}
CONFIGS = {
    "clip": lambda: dual_encoder_config("clip", text=dict(eos_token_id=2), projection_dim=16),
    "siglip": lambda: dual_encoder_config("siglip", text=dict(hidden_size=48, projection_size=32)),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def hf_dir(request, tmp_path_factory):
  kind = request.param
  return kind, save(MODELS[kind](CONFIGS[kind]()), str(tmp_path_factory.mktemp(kind) / "hf"))


def test_roundtrip_is_bit_exact_and_loads_cleanly(hf_dir, tmp_path):
  kind, hf_dir = hf_dir
  report = convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  assert report["family"] == "dual_encoder" and report["ignored"] == 0
  export_hf(str(tmp_path / "mm"), str(tmp_path / "back"), progress=False)
  assert_same_tensors(load_tensors(hf_dir), load_tensors(str(tmp_path / "back")))
  _, info = MODELS[kind].from_pretrained(str(tmp_path / "back"), output_loading_info=True)
  assert not any(info.values()), info


def test_missing_tensor_is_named(hf_dir, tmp_path):
  kind, hf_dir = hf_dir
  root = tmp_path / "hf"
  shutil.copytree(hf_dir, root)  # the module's files stay untouched
  key = "visual_projection.weight" if kind == "clip" else "text_model.head.bias"
  assert key in load_tensors(hf_dir)
  rewrite(str(root), lambda t: {k: v for k, v in t.items() if k != key})
  with pytest.raises(ConversionError, match=f"missing key '{key}'"):
    convert_hf(str(root), str(tmp_path / "mm"), progress=False)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_hf_config_round_trip(kind):
  hf = CONFIGS[kind]().to_dict()
  family = family_for_hf(hf)
  config = family.config_from_hf(hf)
  back = family.hf_config(config)
  assert family_for_hf(back) is family and family.config_from_hf(back) == config
  parsed = transformers.AutoConfig.for_model(**back).to_dict()
  assert family.config_from_hf(parsed) == config


TOWER = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_training_config_describes_a_model(kind):
  model = {"family": "dual_encoder", "kind": kind, "dtype": "float32",
           "remat_policy": {"text_encoder": "full"},
           "vision": dict(TOWER, image_size=32, patch_size=8),
           "text": dict(TOWER, vocab_size=64, max_positions=8,
                        **({"eos_token_id": 3} if kind == "clip" else {})),
           **({"projection_dim": 16} if kind == "clip" else {})}
  family, config = build_model_config(model)
  assert family is family_named("dual_encoder") and config.text.remat_policy == "full"
  assert config.vision.pooling_head == (kind == "siglip")
  shapes = abstract_params(family, config)  # (eager init of scanned stacks takes seconds)
  assert sorted(shapes) == ["encoder", "head", "text_encoder"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * 0.02).astype(s.dtype), shapes)
  batch = {"pixels": jnp.zeros((3, 32, 32, 3)), "text_ids": jnp.full((3, 8), 3, jnp.int32),
           "text_mask": jnp.ones((3, 8), jnp.int32)}
  module = family.build(config)

  def run(p, b):  # the training forward, and the retrieval encoders on their own
    images = module.apply({"params": p}, b["pixels"], method=module.encode_image)
    texts = module.apply({"params": p}, b["text_ids"], b["text_mask"], method=module.encode_text)
    return family.contrastive_forward(module, p, b), images, texts

  out, images, texts = jax.jit(run)(params, batch)
  np.testing.assert_array_equal(images, out.image_embeds)
  np.testing.assert_array_equal(texts, out.text_embeds)
  assert isinstance(out, ContrastiveOutput) and out.image_embeds.shape == (3, config.embed_dim)
  assert out.logits_per_image().shape == (3, 3) and out.logit_scale.shape == ()
  trained = family.train_flops(config, params, batch, ("encoder", "text_encoder", "head"))
  frozen_text = family.train_flops(config, params, batch, ("encoder", "head"))
  assert trained > frozen_text > 0
  assert np.isfinite(trained)
