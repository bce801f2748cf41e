"""Chat mode's prompt builders for BLIP-2 and InstructBLIP: their processors' layout, which has no
chat template.

Blip2Processor (transformers 5.24) tokenizes the prompt as it is, with special tokens (the BOS),
and puts `num_query_tokens` image tokens in front of it, before the BOS; its BlipImageProcessor
resizes each image to `size` (both sides), rescales and normalizes. InstructBlipProcessor does the
same and also tokenizes the prompt, with special tokens, with the Q-Former's own tokenizer (a BERT
one, saved in the `qformer_tokenizer/` folder the converter keeps beside the others): the
instruction the Q-Former reads beside its queries. One image per prompt: the model fills one
image's queries per row.
"""

import dataclasses
import os

import numpy as np

from mmjax import checkpoint
from mmjax.data.preprocess import ImageConfig, ImageProcessor
from mmjax.data.tokenizer import Tokenizer
from mmjax.generation import prompt_images
from mmjax.generation.prompt import (FamilyPromptBuilder, PromptBuilder, image_config_from_hf,
                                     image_processor_config)

IMAGE_TOKEN = "<image>"  # the token Blip2Processor adds and repeats
QFORMER_TOKENIZER_DIR = "qformer_tokenizer"  # where InstructBlipProcessor saves its second tokenizer


@dataclasses.dataclass
class Blip2PromptBuilder(FamilyPromptBuilder):
  """Returns `input_ids [1, T]` (the image's `queries` image tokens first when there is an
  image) and NHWC `pixels [1, H, W, 3]` (None without an image)."""

  image_config: ImageConfig | None
  queries: int  # num_query_tokens: the image tokens in front of the prompt

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config, **fields):
    text = PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=False,
                                         image_processor=False)
    pre = image_processor_config(ckpt_dir)
    image_config = None
    if pre is not None:
      kind = pre.get("image_processor_type", "")
      # SiglipImageProcessor: what a model mmjax trained carries for the same fixed-square resize.
      if not kind.startswith(("Blip", "Siglip")):
        raise ValueError(f"the checkpoint's image processor ({kind or 'unnamed'}) is not BLIP's "
                         "BlipImageProcessor")
      image_config = image_config_from_hf(pre)  # a fixed (height, width): the `siglip` resize
    image_id = text.tokenizer.tok.token_to_id(IMAGE_TOKEN)
    if image_id is not None and image_id != config.image_token_id:  # the processor uses the token
      raise ValueError(f"the tokenizer's {IMAGE_TOKEN} is id {image_id}, the model's "
                       f"image_token_index {config.image_token_id}")
    return cls(text, image_config, config.tokens_per_image, **fields)

  def token_ids(self, prompt: str, images: list[str]) -> np.ndarray:
    """`[1, T]`: the prompt with special tokens, after the image tokens when there is an
    image."""
    self.check_images(images, self.image_config)
    if len(images) > 1:
      raise ValueError(f"BLIP-2 takes one image per prompt (the processor fills one image's "
                       f"query tokens per row), got {len(images)}")
    ids, _ = self.tokenizer.encode(prompt, add_special_tokens=True)
    if np.any(ids == self.text_builder.image_token_id):
      raise ValueError(f"the prompt holds the image token {IMAGE_TOKEN!r}: the processor puts "
                       "the image's tokens in front of the prompt, so the prompt takes none")
    image = [self.text_builder.image_token_id] * (self.queries if images else 0)
    return np.concatenate([np.asarray(image, np.int32), ids]).astype(np.int32)[None]

  def pixels(self, images: list[str]) -> np.ndarray | None:
    """NHWC `[1, H, W, 3]` float32 as BlipImageProcessor makes them (None without an image)."""
    if not images:
      return None
    return ImageProcessor(self.image_config)(prompt_images.load(images[0])).pixels

  def __call__(self, prompt: str, images: list[str]):
    return self.token_ids(prompt, images), self.pixels(images)


@dataclasses.dataclass
class Blip2T5PromptBuilder(Blip2PromptBuilder):
  """BLIP-2 with Flan-T5: the same `input_ids [1, T]`, and Blip2Processor's
  `{'pixel_values': [1, C, H, W]}` (None without an image), as the encoder-decoder adapter reads
  the processor's arrays."""

  def __call__(self, prompt: str, images: list[str]):
    ids, pixels = super().__call__(prompt, images)
    return ids, None if pixels is None else {"pixel_values": np.transpose(pixels, (0, 3, 1, 2))}


@dataclasses.dataclass
class InstructBlipPromptBuilder(Blip2PromptBuilder):
  """Returns `input_ids [1, T]` and InstructBlipProcessor's arrays: `pixel_values [1, C, H, W]`,
  `qformer_input_ids [1, S]` and `qformer_attention_mask [1, S]` (ones) (None without an
  image)."""

  qformer_tokenizer: Tokenizer | None = None  # None: the checkpoint kept none

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config, **fields):
    path = os.path.join(ckpt_dir, checkpoint.HF_EXTRAS_DIR, QFORMER_TOKENIZER_DIR)
    qformer = Tokenizer.load(path) if os.path.exists(os.path.join(path, "tokenizer.json")) else None
    return super().from_checkpoint(ckpt_dir, config, qformer_tokenizer=qformer, **fields)

  def __call__(self, prompt: str, images: list[str]):
    ids = self.token_ids(prompt, images)
    if not images:  # the Q-Former runs only on images: its instruction is not needed
      return ids, None
    if self.qformer_tokenizer is None:
      raise FileNotFoundError(
          f"the checkpoint has no Q-Former tokenizer ({checkpoint.HF_EXTRAS_DIR}/"
          f"{QFORMER_TOKENIZER_DIR}/tokenizer.json, what InstructBlipProcessor.save_pretrained "
          "writes): convert from a directory that holds it, or pass processor arrays with --inputs")
    qformer_ids, _ = self.qformer_tokenizer.encode(prompt, add_special_tokens=True)
    pixels = self.pixels(images)  # [1, H, W, 3]
    return ids, {"pixel_values": np.transpose(pixels, (0, 3, 1, 2)),
                 "qformer_input_ids": qformer_ids[None].astype(np.int32),
                 "qformer_attention_mask": np.ones((1, len(qformer_ids)), np.int32)}
