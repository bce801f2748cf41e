"""Chat mode's prompt builder for InternVL (generation runs through the shared `EmbeddingFusion`
adapter): dynamic tiling and `<img><IMG_CONTEXT>*N</img>` per image, as InternVLProcessor makes
them."""

import dataclasses

import numpy as np

from mmjax.data.preprocess import ImageConfig, ImageProcessor
from mmjax.generation import prompt_images
from mmjax.generation.prompt import (FamilyPromptBuilder, PromptBuilder, expand_placeholders,
                                     image_config_from_hf, image_processor_config)


@dataclasses.dataclass
class InternVLPromptBuilder(FamilyPromptBuilder):
  """The chat template places one `<IMG_CONTEXT>` per image; each becomes `<img>`, the context
  token once per token of the image's tiles (grid + thumbnail, `mmjax.data.preprocess.tiling`)
  and `</img>`. Returns `input_ids [1, T]` and the tiles NHWC `[tiles, H, W, 3]`."""

  image_config: ImageConfig | None
  tokens_per_tile: int
  start_id: int
  end_id: int

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config, chat_template: bool = True):
    text = PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=chat_template,
                                         image_processor=False)
    tokenizer = text.tokenizer
    # InternVLProcessor reads them from the tokenizer's special tokens; these are its defaults.
    start = tokenizer.special_token("start_image_token") or "<img>"
    end = tokenizer.special_token("end_image_token") or "</img>"
    pre = image_processor_config(ckpt_dir)
    image_config = None if pre is None else image_config_from_hf(pre)
    return cls(text, image_config, config.tokens_per_image, tokenizer.token_to_id(start),
               tokenizer.token_to_id(end))

  def __call__(self, prompt: str, images: list[str]):
    self.check_images(images, self.image_config)
    builder = self.text_builder
    ids = builder.token_ids(builder.text(prompt, len(images)))  # [T], one context token per image
    if not images:
      return ids[None], None
    processor = ImageProcessor(self.image_config)
    tiles = [processor(prompt_images.load(ref)).pixels for ref in images]  # [tiles_i, H, W, 3]
    ids = expand_placeholders(ids, builder.image_token_id,
                              [t.shape[0] * self.tokens_per_tile for t in tiles],
                              wrap=(self.start_id, self.end_id))
    return ids[None], np.concatenate(tiles)
