"""Chat mode's prompt builder for Fuyu: FuyuProcessor's layout, which has no chat template.

FuyuProcessor (transformers 5.24) puts one `|SPEAKER|` in front of the prompt and the
beginning-of-answer string `<0x04>` after it, then replaces that `|SPEAKER|` with the image's
placeholders (`|SPEAKER|` x columns + `|NEWLINE|` per patch row) followed by `<s>`. It tokenizes
the text up to and including that `<s>` and the rest separately, both without special tokens,
and drops the first id of the first part (the `▁` a SentencePiece tokenizer puts in front). A
prompt without an image is tokenized as it is, with special tokens (no `<0x04>`). One image per
prompt: the processor lays out one image per text.
"""

import dataclasses

import numpy as np

from mmjax.data.preprocess import fuyu as fuyu_images
from mmjax.generation import prompt_images
from mmjax.generation.prompt import (FamilyPromptBuilder, PromptBuilder, image_processor_config,
                                     required_token_ids)

IMAGE_TOKEN, NEWLINE_TOKEN, BOS_TEXT = "|SPEAKER|", "|NEWLINE|", "<s>"
BEGINNING_OF_ANSWER = "<0x04>"  # FuyuProcessor's `<boa>` string

# FuyuImageProcessor's settings that `mmjax.data.preprocess.fuyu` fixes: a checkpoint whose
# preprocessor_config.json sets others is refused rather than preprocessed differently.
FIXED = {"do_resize": True, "do_pad": True, "do_rescale": True, "do_normalize": True,
         "padding_value": 1.0, "padding_mode": "constant", "rescale_factor": 1 / 255,
         "resample": 2, "image_mean": 0.5, "image_std": 0.5}


@dataclasses.dataclass(frozen=True)
class FuyuImageSettings:
  size: tuple[int, int]  # (h, w) an image is shrunk to fit and padded to
  patch: int

  @classmethod
  def from_hf(cls, pre: dict, config) -> "FuyuImageSettings":
    """FuyuImageProcessor's preprocessor settings, checked against the model's patch size."""
    kind = pre.get("image_processor_type", "")
    if not kind.startswith("Fuyu"):
      raise ValueError(f"the checkpoint's image processor ({kind or 'unnamed'}) is not Fuyu's "
                       "FuyuImageProcessor")
    differing = [k for k, v in FIXED.items() if k in pre and not _same(pre[k], v)]
    if differing:
      raise ValueError(f"FuyuImageProcessor settings {differing} differ from the ones mmjax "
                       f"preprocesses with ({ {k: FIXED[k] for k in differing} })")
    size = pre.get("size") or {"height": 1080, "width": 1920}
    patch = pre.get("patch_size") or {"height": 30, "width": 30}
    if patch["height"] != patch["width"] or patch["height"] != config.patch_size:
      raise ValueError(f"the image processor's patch_size {patch} is not the model's square "
                       f"patch of {config.patch_size}")
    return cls((int(size["height"]), int(size["width"])), int(patch["height"]))


def _same(value, fixed) -> bool:
  values = value if isinstance(value, (list, tuple)) else [value]
  return all(np.isclose(float(v), float(fixed)) if not isinstance(fixed, str) else v == fixed
             for v in values)


@dataclasses.dataclass
class FuyuPromptBuilder(FamilyPromptBuilder):
  """Returns `input_ids [1, T]` and FuyuProcessor's `image_patches [P, F]` (as a mapping; None
  without an image)."""

  settings: FuyuImageSettings | None
  speaker_id: int
  newline_id: int

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config):
    text = PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=False,
                                         image_processor=False)
    pre = image_processor_config(ckpt_dir)
    settings = None if pre is None else FuyuImageSettings.from_hf(pre, config)
    ids = required_token_ids(text.tokenizer, (IMAGE_TOKEN, NEWLINE_TOKEN))
    if ids[IMAGE_TOKEN] != config.image_token_id:
      raise ValueError(f"the tokenizer's {IMAGE_TOKEN} is id {ids[IMAGE_TOKEN]}, the model's "
                       f"image_token_id {config.image_token_id}")
    return cls(text, settings, ids[IMAGE_TOKEN], ids[NEWLINE_TOKEN])

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens)[0])

  def __call__(self, prompt: str, images: list[str]):
    self.check_images(images, self.settings)
    if not images:  # the processor's text-only path: the tokenizer as it is
      return np.asarray([self.encode(prompt, add_special_tokens=True)], np.int32), None
    if len(images) > 1:
      raise ValueError(f"Fuyu takes one image per prompt (FuyuProcessor lays out one), got "
                       f"{len(images)}")
    if IMAGE_TOKEN in prompt:
      raise ValueError(f"the prompt holds the image placeholder {IMAGE_TOKEN!r}, which "
                       "FuyuProcessor would replace by an image's patches")
    image = prompt_images.load(images[0])
    patches, (rows, cols) = fuyu_images.process(image, self.settings.size, self.settings.patch)
    placeholders = (IMAGE_TOKEN * cols + NEWLINE_TOKEN) * rows + BOS_TEXT
    ids = self.encode(placeholders)[1:] + self.encode(prompt + BEGINNING_OF_ANSWER)
    return np.asarray([ids], np.int32), {"image_patches": patches}
