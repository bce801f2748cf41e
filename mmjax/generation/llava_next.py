"""Chat mode's prompt builder for LLaVA-NeXT (its adapter:
`mmjax.generation.adapters.HostImagesFusion`)."""

import dataclasses

import numpy as np

from mmjax.data.preprocess import ImageConfig, ImageProcessor
from mmjax.generation import prompt_images
from mmjax.generation.prompt import (FamilyPromptBuilder, PromptBuilder, expand_placeholders,
                                     image_config_from_hf, image_processor_config)


@dataclasses.dataclass
class LlavaNextPromptBuilder(FamilyPromptBuilder):
  """Chat mode: the checkpoint's chat template and tokenizer, and LlavaNextImageProcessor's
  settings (`mmjax.data.preprocess.anyres`); each image's `<image>` is expanded to its tokens as
  LlavaNextProcessor counts them. Returns `input_ids [1, T]` and the processor's arrays:
  `pixel_values [I, P, C, H, W]` (tiles zero-padded to the most any image has) and
  `image_sizes [I, 2]` (None without images)."""

  image_config: ImageConfig | None

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config, chat_template: bool = True):
    text = PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=chat_template,
                                         image_processor=False)
    pre = image_processor_config(ckpt_dir)
    image_config = None
    if pre is not None:  # the tower's patch size counts the tokens, as LlavaNextProcessor's
      image_config = dataclasses.replace(image_config_from_hf(pre),
                                         patch_size=config.vision.patch_size)
      if image_config.family != "anyres":
        raise ValueError(f"the checkpoint's image processor ({pre.get('image_processor_type')}) "
                         "is not LLaVA-NeXT's LlavaNextImageProcessor")
    return cls(text, image_config)

  def __call__(self, prompt: str, images: list[str]):
    self.check_images(images, self.image_config)
    builder = self.text_builder
    ids = builder.token_ids(builder.text(prompt, len(images)))  # [T], one <image> per image
    if not images:
      return ids[None], None
    processor = ImageProcessor(self.image_config)
    processed = [processor(prompt_images.load(ref)) for ref in images]
    ids = expand_placeholders(ids, builder.image_token_id, [p.num_tokens for p in processed])
    tiles = max(p.pixels.shape[0] for p in processed)
    pixels = np.stack([np.pad(p.pixels, ((0, tiles - p.pixels.shape[0]), (0, 0), (0, 0), (0, 0)))
                       for p in processed])  # [I, P, H, W, C]
    return ids[None], {"pixel_values": np.transpose(pixels, (0, 1, 4, 2, 3)),
                       "image_sizes": np.asarray([p.image_size for p in processed], np.int64)}
