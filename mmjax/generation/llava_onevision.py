"""Chat mode's prompt builder for LLaVA-OneVision (its adapter:
`mmjax.generation.adapters.HostImagesFusion`)."""

import dataclasses

from mmjax.data.preprocess import ImageConfig, onevision
from mmjax.generation import prompt_images
from mmjax.generation.prompt import (FamilyPromptBuilder, PromptBuilder, expand_placeholders,
                                     image_config_from_hf, image_processor_config)


@dataclasses.dataclass
class OnevisionPromptBuilder(FamilyPromptBuilder):
  """Chat mode: the checkpoint's chat template and tokenizer, and LlavaOnevisionImageProcessor's
  settings (`mmjax.data.preprocess.onevision`); the prompt's images are one sample's, as the
  processor's `apply_chat_template` batches them (one image: AnyRes; several: a padded square
  each), each `<image>` expanded to the count LlavaOnevisionProcessor gives it. Returns
  `input_ids [1, T]` and the processor's arrays (`pixel_values [I, P, C, H, W]`, `image_sizes`,
  `batch_num_images`; None without images)."""

  image_config: ImageConfig | None
  max_tiles: int

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config, chat_template: bool = True):
    text = PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=chat_template,
                                         image_processor=False)
    pre = image_processor_config(ckpt_dir)
    image_config = None
    if pre is not None:
      kind = pre.get("image_processor_type", "")
      if not kind.startswith("LlavaOnevision"):
        raise ValueError(f"the checkpoint's image processor ({kind or 'unnamed'}) is not "
                         "LLaVA-OneVision's LlavaOnevisionImageProcessor")
      plain = image_config_from_hf(pre)  # size, mean / std, rescale, resample
      pinpoints = pre.get("image_grid_pinpoints") or onevision.DEFAULT_PINPOINTS
      image_config = onevision.image_config(plain.size, config.vision.patch_size, pinpoints,
                                            mean=plain.mean, std=plain.std,
                                            rescale_factor=plain.rescale_factor,
                                            resample=plain.resample)
    return cls(text, image_config, config.max_tiles)

  def __call__(self, prompt: str, images: list[str]):
    self.check_images(images, self.image_config)
    builder = self.text_builder
    ids = builder.token_ids(builder.text(prompt, len(images)))  # [T], one <image> per image
    if not images:
      return ids[None], None
    loaded = [prompt_images.load(ref) for ref in images]
    multi = len(loaded) > 1
    counts = [onevision.num_tokens(image.size[1], image.size[0], self.image_config,
                                   self.max_tiles, multi) for image in loaded]
    ids = expand_placeholders(ids, builder.image_token_id, counts)
    return ids[None], onevision.processor_arrays(loaded, self.image_config)
