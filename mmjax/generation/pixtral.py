"""Chat mode's prompt builder for Pixtral and Mistral3 (their adapter:
`mmjax.generation.adapters.HostImagesFusion`)."""

import dataclasses
import json
import os

import numpy as np

from mmjax import checkpoint
from mmjax.data.preprocess import ImageConfig, ImageProcessor, pixtral as pixtral_images
from mmjax.generation import prompt_images
from mmjax.generation.prompt import (FamilyPromptBuilder, PromptBuilder, image_config_from_hf,
                                     image_processor_config, replace_placeholders)

# PixtralProcessor's defaults for the tokens that lay an image out in the prompt.
DEFAULT_TOKENS = {"image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"}


@dataclasses.dataclass
class PixtralPromptBuilder(FamilyPromptBuilder):
  """Chat mode: the checkpoint's chat template and tokenizer, and PixtralImageProcessor's
  settings (`mmjax.data.preprocess.pixtral`, with the tower's patch and merge sizes, as
  PixtralProcessor hands them over); each image's `[IMG]` becomes its rows of `[IMG]` ended by
  `[IMG_BREAK]` (the last `[IMG_END]`). Returns `input_ids [1, T]` and the processor's arrays:
  `pixel_values [I, C, H, W]` (zero-padded to the largest image) and `image_sizes [I, 2]`
  (None without images)."""

  image_config: ImageConfig | None
  break_id: int
  end_id: int

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config, chat_template: bool = True):
    text = PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=chat_template,
                                         image_processor=False)
    pre = image_processor_config(ckpt_dir)
    image_config = None
    if pre is not None:  # PixtralProcessor resizes to multiples of the tower's patch x merge
      image_config = dataclasses.replace(image_config_from_hf(pre),
                                         patch_size=config.vision.patch_size,
                                         merge_size=config.merge_size)
      if image_config.family != "pixtral":
        raise ValueError(f"the checkpoint's image processor ({pre.get('image_processor_type')}) "
                         "is not Pixtral's PixtralImageProcessor")
    tokens = {**DEFAULT_TOKENS, **_processor_tokens(ckpt_dir)}
    ids = {}
    for key, token in tokens.items():
      ids[key] = text.tokenizer.tok.token_to_id(token)
      if ids[key] is None:
        raise ValueError(f"the checkpoint's tokenizer has no {key} {token!r}")
    return cls(text, image_config, ids["image_break_token"], ids["image_end_token"])

  def __call__(self, prompt: str, images: list[str]):
    self.check_images(images, self.image_config)
    builder = self.text_builder
    ids = builder.token_ids(builder.text(prompt, len(images)))  # [T], one [IMG] per image
    if not images:
      return ids[None], None
    processor = ImageProcessor(self.image_config)
    views = [processor(prompt_images.load(ref)).pixels[0] for ref in images]  # [H, W, 3] each
    side = self.image_config.patch_size * self.image_config.merge_size
    layouts = [pixtral_images.image_token_ids(v.shape[0] // side, v.shape[1] // side,
                                              builder.image_token_id, self.break_id, self.end_id)
               for v in views]
    ids = replace_placeholders(ids, builder.image_token_id, layouts)
    height, width = max(v.shape[0] for v in views), max(v.shape[1] for v in views)
    pixels = np.stack([np.pad(v, ((0, height - v.shape[0]), (0, width - v.shape[1]), (0, 0)))
                       for v in views])  # [I, H, W, 3]
    return ids[None], {"pixel_values": np.transpose(pixels, (0, 3, 1, 2)),
                       "image_sizes": np.asarray([v.shape[:2] for v in views], np.int64)}


def _processor_tokens(ckpt_dir: str) -> dict[str, str]:
  """The layout tokens PixtralProcessor's saved settings name (processor_config.json)."""
  path = os.path.join(ckpt_dir, checkpoint.HF_EXTRAS_DIR, "processor_config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    saved = json.load(f)
  return {k: saved[k] for k in DEFAULT_TOKENS if isinstance(saved.get(k), str)}
