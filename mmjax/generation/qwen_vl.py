"""Generation of Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the adapter (see `mmjax.generation.adapters`)
and chat mode's prompt builder."""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import numpy as np

from mmjax.data.preprocess import ImageConfig, ImageProcessor
from mmjax.decoders.llama import init_cache
from mmjax.generation import prompt_images
from mmjax.generation.adapters import DecodeState, last_logits, text_step
from mmjax.generation.prompt import (FamilyPromptBuilder, PromptBuilder, expand_placeholders,
                                     image_config_from_hf, image_processor_config)
from mmjax.models import qwen_vl


@dataclasses.dataclass(frozen=True)
class QwenVLFusion:
  """Packed images and videos, M-RoPE, DeepStack.

  `pixels` is a mapping of the processor's arrays (`qwen_vl.PROCESSOR_KEYS`: `pixel_values`,
  `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`, `mm_token_type_ids`,
  `second_per_grid_ts`). Prompt positions are `[3, B, T]` from `get_rope_index` as transformers
  computes them; the k-th new token of a row takes, on each axis, the prompt's last position
  + 1 + k, as transformers' `generate` extends `position_ids`. (That is `rope_deltas`' row
  maximum + 1 + k except where a video's temporal positions run past the text after it:
  Qwen2.5-VL videos with a long `second_per_grid_ts`, long Qwen2-VL videos of small frames.)
  Visual features (and Qwen3-VL's DeepStack additions) enter in the prefill only.
  """

  module: nn.Module
  config: qwen_vl.QwenVLConfig

  def prepare_inputs(self, input_ids, mask, pixels: Mapping[str, Any] | None, positions):
    pixels = dict(pixels or {})
    unknown = set(pixels) - set(qwen_vl.PROCESSOR_KEYS)
    if unknown:
      raise ValueError(f"unknown Qwen-VL inputs {sorted(unknown)}; expected some of "
                       f"{qwen_vl.PROCESSOR_KEYS}")
    inputs = {**pixels, "input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    _, _, images, videos, positions = qwen_vl.processor_inputs(self.config, inputs)
    return {"images": images, "videos": videos}, positions

  def init_state(self, batch: int, length: int) -> DecodeState:
    return {"cache": init_cache(self.config.decoder, batch, length)}

  def prefill(self, params, input_ids, pixels, positions, mask, state: DecodeState):
    """`positions [3, B, T]`; `pixels` as `prepare_inputs` returns them."""

    def run(m, input_ids, images, videos, positions, mask, cache):
      x, layer_inputs = m.embed(input_ids, images, videos)  # [B, T, D], [K, B, T, D] | None
      return last_logits(m.decoder, m.decoder(x, positions, mask, None, cache, 0,
                                              layer_inputs=layer_inputs))

    logits, cache = self.module.apply({"params": params}, input_ids, pixels["images"],
                                      pixels["videos"], positions, mask, state["cache"],
                                      method=run)
    return logits, {**state, "cache": cache}

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """`tokens [B, 1]`, `positions [3, B, 1]`, written at cache slot `index`."""
    return text_step(self.module, params, tokens, positions, mask, state, index)


@dataclasses.dataclass
class QwenVLPromptBuilder(FamilyPromptBuilder):
  """Chat mode: the checkpoint's chat template and tokenizer, and the Qwen2-VL image processor
  (`mmjax.data.preprocess.qwen2_vl`: each image smart-resized within the pixel budget, as
  patches); each image's `<|image_pad|>` is expanded to its merged patches, as the Qwen
  processors do. Returns `input_ids [1, T]` and the processor's `pixel_values [N, C*T*P*P]` and
  `image_grid_thw [I, 3]` (None without images)."""

  image_config: ImageConfig | None

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config, chat_template: bool = True,
                      min_pixels: int | None = None, max_pixels: int | None = None):
    """`min_pixels` / `max_pixels` override the checkpoint's pixel budget per image."""
    text = PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=chat_template,
                                         image_processor=False)
    pre = image_processor_config(ckpt_dir)
    image_config = None
    if pre is not None:
      image_config = image_config_from_hf(pre)
      overrides = {k: int(v) for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels))
                   if v is not None}
      image_config = dataclasses.replace(image_config, **overrides)
      if image_config.min_pixels > image_config.max_pixels:
        raise ValueError(f"min_pixels {image_config.min_pixels} exceeds max_pixels "
                         f"{image_config.max_pixels}")
    return cls(text, image_config)

  def __call__(self, prompt: str, images: list[str]):
    self.check_images(images, self.image_config)
    builder = self.text_builder
    ids = builder.token_ids(builder.text(prompt, len(images)))  # [T], one pad token per image
    if not images:
      return ids[None], None
    processor = ImageProcessor(self.image_config)
    processed = [processor(prompt_images.load(ref)) for ref in images]
    ids = expand_placeholders(ids, builder.image_token_id, [p.num_tokens for p in processed])
    pixels = {"pixel_values": np.concatenate([processor.sample_tiles(p) for p in processed]),
              "image_grid_thw": processor.image_features(processed)["image_grid_thw"]}
    return ids[None], pixels
