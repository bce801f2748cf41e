"""Chat mode's prompt builder for IDEFICS: IdeficsProcessor's arrays for one user turn, the
images then the prompt, as the interleaved list `[image, ..., prompt]` the processor takes.

IdeficsProcessor (transformers 5.24) has no chat template: it writes BOS, then
`<fake_token_around_image><image><fake_token_around_image>` for an image (an image right after
another adds `<image><fake_token_around_image>`), then the prompt stripped of spaces; tokenizes
that without special tokens; and makes `image_attention_mask [1, T, N]`: token t sees the latest
image at or before it (none before the first, none after an end-of-sequence token until the next
image). Images are resized to the tower's square (`image_config_from_hf`: a fixed size).
"""

import dataclasses

import numpy as np

from mmjax.data.preprocess import ImageConfig, ImageProcessor
from mmjax.generation import prompt_images
from mmjax.generation.prompt import (FamilyPromptBuilder, PromptBuilder, image_config_from_hf,
                                     image_processor_config, required_token_ids)
from mmjax.models import idefics

FAKE_TOKEN, IMAGE_TOKEN = "<fake_token_around_image>", "<image>"


def image_attention_mask(ids: np.ndarray, image_id: int, eos_id: int | None,
                         num_images: int) -> np.ndarray:
  """`ids [T]` -> int `[T, num_images]`: 1 where token t sees image n."""
  mask = np.zeros((len(ids), num_images), np.int64)
  count, after_eos = -1, False
  for t, token in enumerate(ids):
    if token == image_id:
      count, after_eos = count + 1, False
    if not after_eos and 0 <= count < num_images:
      mask[t, count] = 1
    after_eos = after_eos or token == eos_id
  return mask


@dataclasses.dataclass
class IdeficsPromptBuilder(FamilyPromptBuilder):
  """Returns `input_ids [1, T]` and the module's images (`idefics.images_from_processor` of the
  processor's `pixel_values [1, N, C, H, W]` and `image_attention_mask [1, T, N]`; None without
  images)."""

  config: object  # IdeficsConfig
  image_config: ImageConfig | None
  image_id: int
  fake_id: int

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config):
    text = PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=False,
                                         image_processor=False)
    pre = image_processor_config(ckpt_dir)
    image_config = None
    if pre is not None:
      if not pre.get("image_processor_type", "").startswith("Idefics"):
        raise ValueError(f"the checkpoint's image processor ({pre.get('image_processor_type')}) "
                         "is not IDEFICS' IdeficsImageProcessor")
      image_config = image_config_from_hf(pre)
      side = config.vision.image_size
      if image_config.family != "siglip" or image_config.size != (side, side):
        raise ValueError(f"the image processor's size {pre.get('size')} is not the tower's "
                         f"{side}x{side} square")
    ids = required_token_ids(text.tokenizer, (IMAGE_TOKEN, FAKE_TOKEN))
    return cls(text, config, image_config, ids[IMAGE_TOKEN], ids[FAKE_TOKEN])

  def check_images(self, images, image_config) -> None:
    if images and image_config is None:
      super().check_images(images, image_config)  # names the missing processor settings

  def __call__(self, prompt: str, images: list[str]):
    self.check_images(images, self.image_config)
    if IMAGE_TOKEN in prompt:
      raise ValueError(f"the prompt holds the image token {IMAGE_TOKEN!r}; pass images with "
                       "--image")
    tokenizer = self.tokenizer
    text = tokenizer.special_token("bos_token") or ""
    if images:
      text += FAKE_TOKEN + (IMAGE_TOKEN + FAKE_TOKEN) * len(images)
    text += prompt.strip(" ")
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False)[0], np.int32)
    eos = tokenizer.special_token("eos_token")
    eos_id = None if eos is None else tokenizer.tok.token_to_id(eos)
    if images:
      processor = ImageProcessor(self.image_config)
      pixels = np.concatenate([processor(prompt_images.load(r)).pixels for r in images])
      arrays = {"input_ids": ids[None],
                "pixel_values": np.transpose(pixels, (0, 3, 1, 2))[None],  # [1, N, C, H, W]
                "image_attention_mask": image_attention_mask(ids, self.image_id, eos_id,
                                                             len(images))[None]}
    else:  # the processor's text-only arrays: one all-zero image that no token sees
      arrays = {"input_ids": ids[None]}
    return ids[None], idefics.images_from_processor(self.config, arrays)
