"""Model families: HF `model_type` -> config reader, module, example inputs, conversion tables.

Adding a family is one entry here plus its conversion table in `mmjax/convert/tables.py`.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.convert import tables, tables_internvl, tables_qwen_vl
from mmjax.convert.rules import Layout, Rule
from mmjax.decoders.config import DecoderConfig
from mmjax.encoders.vit import VisionConfig
from mmjax.models import internvl, qwen_vl
from mmjax.models.llava import Llava, LlavaConfig
from mmjax.models.standalone import CausalLM, VisionModel
from mmjax.nn.masks import positions_from_attention_mask


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  config_cls: type
  config_from_hf: Callable[..., Any]  # (hf config dict, **execution) -> config
  build: Callable[[Any], nn.Module]
  example_inputs: Callable[[Any], tuple]  # positional inputs for init / eval_shape
  rules: Callable[[], list[Rule]]
  layouts: tuple[Layout, ...]
  ignores: tuple[str, ...] = tables.BUFFER_IGNORES
  lm_head_key: str | None = "lm_head.weight"  # canonical key left out when embeddings are tied
  # (config, params, processor arrays) -> logits, for families whose inputs are not LLaVA's
  hf_forward: Callable[..., np.ndarray] | None = None
  # Conversion tables that depend on the config (e.g. grouped heads); `rules` otherwise.
  rules_for: Callable[[Any], list[Rule]] | None = None
  # (HF directory, config.json dict) -> config dict, for facts kept beside config.json.
  read_hf_dir: Callable[[str, dict], dict] | None = None
  # Checkpoints are stored as this family (with `native_hf_config` as their config.json), so
  # that export writes that family's layout: the original InternVL release exports as `internvl`.
  stored_as: str | None = None
  native_hf_config: Callable[[Any], dict] | None = None

  def conversion_rules(self, config) -> list[Rule]:
    return self.rules_for(config) if self.rules_for is not None else self.rules()

  def tied(self, config) -> bool:
    decoder = getattr(config, "decoder", config)
    return bool(getattr(decoder, "tie_embeddings", False))


def _llava_inputs(cfg: LlavaConfig):
  """One row holding exactly one image's placeholders, and that image."""
  v = cfg.vision
  n = cfg.tokens_per_image
  return (jnp.full((1, n), cfg.image_token_id, jnp.int32),
          jnp.zeros((1, v.image_size, v.image_size, v.num_channels), jnp.float32),
          jnp.zeros((1, n), jnp.int32))


FAMILIES: dict[str, Family] = {
    "llava": Family(
        "llava", LlavaConfig, LlavaConfig.from_hf, Llava, _llava_inputs, tables.llava_rules,
        tables.LLAVA_LAYOUTS),
    "causal_lm": Family(
        "causal_lm", DecoderConfig, DecoderConfig.from_hf, CausalLM,
        lambda cfg: (jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32)),
        tables.causal_lm_rules, tables.CAUSAL_LM_LAYOUTS),
    "vision": Family(
        "vision", VisionConfig, VisionConfig.from_hf, VisionModel,
        lambda cfg: (jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels)),),
        tables.vision_model_rules, tables.VISION_LAYOUTS, lm_head_key=None),
}


def _qwen_vl_family(name: str) -> Family:
  return Family(
      name, qwen_vl.QwenVLConfig, qwen_vl.QwenVLConfig.from_hf, qwen_vl.QwenVL,
      qwen_vl.example_inputs, lambda: tables_qwen_vl.qwen_vl_rules(name),
      tables_qwen_vl.QWEN_VL_LAYOUTS, hf_forward=qwen_vl.forward_from_hf_inputs)


FAMILIES.update({name: _qwen_vl_family(name) for name in qwen_vl.MODEL_TYPES})

FAMILIES.update({
    "internvl": Family(
        "internvl", internvl.InternVLConfig, internvl.InternVLConfig.from_hf, internvl.InternVL,
        internvl.example_inputs, tables_internvl.internvl_rules, tables_internvl.INTERNVL_LAYOUTS),
    "internvl_chat": Family(
        "internvl_chat", internvl.InternVLConfig, internvl.InternVLConfig.from_original,
        internvl.InternVL, internvl.example_inputs, lambda: [], tables_internvl.ORIGINAL_LAYOUTS,
        rules_for=tables_internvl.original_rules,
        read_hf_dir=internvl.with_image_token_from_tokenizer, stored_as="internvl",
        native_hf_config=internvl.InternVLConfig.to_hf),
})

MODEL_TYPES = {
    "llava": "llava",
    "llama": "causal_lm", "mistral": "causal_lm", "qwen2": "causal_lm", "qwen3": "causal_lm",
    "clip_vision_model": "vision", "siglip_vision_model": "vision",
    **{name: name for name in qwen_vl.MODEL_TYPES},
    "internvl": "internvl", "internvl_chat": "internvl_chat",
}


def family_for_hf(hf_config: Mapping[str, Any]) -> Family:
  model_type = hf_config.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"unsupported model_type {model_type!r} in config.json; supported: "
                     f"{sorted(MODEL_TYPES)}")
  return FAMILIES[MODEL_TYPES[model_type]]


def abstract_params(family: Family, config) -> dict:
  """Shapes and dtypes of every parameter, without allocating them: `{path: ShapeDtypeStruct}`."""
  module = family.build(config)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *family.example_inputs(config)))
  return nn.unbox(shapes)["params"]


def init_params(family: Family, config, rng: jax.Array) -> dict:
  module = family.build(config)
  return nn.unbox(module.init(rng, *family.example_inputs(config)))["params"]


def forward_from_hf_inputs(family: Family, config, params, inputs: Mapping[str, np.ndarray]):
  """Runs the model on arrays as a transformers processor makes them; returns float32 logits.

  `input_ids [B, T]`, `attention_mask [B, T]` (optional), `position_ids [B, T]` (optional: from
  the attention mask otherwise, as transformers' generate computes them), `pixel_values
  [I, C, H, W]` (NCHW, as HF takes them).
  """
  if family.name == "vision":
    raise ValueError("vision-only checkpoints have no logits; use the Python API")
  if family.hf_forward is not None:
    return family.hf_forward(config, params, inputs)
  if "input_ids" not in inputs:
    raise KeyError(f"inputs lack 'input_ids' (have: {sorted(inputs)})")
  input_ids = jnp.asarray(inputs["input_ids"], jnp.int32)
  mask = inputs.get("attention_mask")
  mask = jnp.ones_like(input_ids) if mask is None else jnp.asarray(mask, jnp.int32)
  positions = inputs.get("position_ids")
  positions = positions_from_attention_mask(mask) if positions is None else jnp.asarray(positions)
  module = family.build(config)
  if family.name == "causal_lm":
    args = (input_ids, positions, mask)
  else:
    pixels = inputs.get("pixel_values")
    pixels = None if pixels is None else jnp.asarray(np.transpose(pixels, (0, 2, 3, 1)), jnp.float32)
    args = (input_ids, pixels, positions, mask)
  logits, _ = module.apply({"params": params}, *args)
  return np.asarray(logits, np.float32)
