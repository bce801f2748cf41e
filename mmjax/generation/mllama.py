"""Generation of Llama 3.2 Vision: the adapter (`mmjax.generation.cross_attention`: image
keys/values computed once at prefill, the last token's `cross_attention_mask` row for every new
token) and chat mode's prompt builder.
"""

import dataclasses
from typing import Any

import numpy as np

from mmjax.generation.adapters import checked_positions
from mmjax.generation import prompt_images
from mmjax.generation.cross_attention import CrossAttentionAdapter
from mmjax.generation.prompt import FamilyPromptBuilder, PromptBuilder
from mmjax.models import mllama


@dataclasses.dataclass(frozen=True)
class MllamaAdapter(CrossAttentionAdapter):
  """`pixels`: the module's image arrays (`mllama.images_from_processor`) or None."""

  def prepare_inputs(self, input_ids, mask, pixels, positions):
    mllama.check_image_tokens(input_ids, self.config.image_token_id, pixels)
    return pixels, checked_positions(positions, input_ids)


@dataclasses.dataclass
class MllamaPromptBuilder(FamilyPromptBuilder):
  """Chat mode: the checkpoint's chat template and tokenizer, one `<|image|>` per image, and the
  Mllama image processor's tiles (`mmjax.data.preprocess.mllama`); returns `input_ids [1, T]`
  and the adapter's image arrays, as MllamaProcessor makes them."""

  image_config: Any  # MllamaImageConfig
  image_token_id: int

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config, chat_template: bool = True):
    from mmjax.data.preprocess import mllama as preprocess
    from mmjax.generation.prompt import image_processor_config

    text = PromptBuilder.from_checkpoint(ckpt_dir, config, chat_template=chat_template,
                                         image_processor=False)
    pre = image_processor_config(ckpt_dir)
    image_config = None if pre is None else preprocess.MllamaImageConfig.from_hf(pre)
    return cls(text, image_config, config.image_token_id)

  def token_ids(self, text: str) -> np.ndarray:
    """As transformers' chat path tokenizes for Mllama: special tokens only when the rendered
    text does not start with BOS, then MllamaProcessor's `build_string_from_input` puts the BOS
    text after any leading image tokens when the text holds none."""
    tokenizer = self.tokenizer
    bos = tokenizer.special_token("bos_token")
    add_special = not (bos and text.startswith(bos))
    image = tokenizer.tok.id_to_token(self.image_token_id)
    if bos and bos not in text:
      leading = 0
      while image and text.startswith(image):
        text, leading = text[len(image):], leading + 1
      text = image * leading + bos + text
    ids, _ = tokenizer.encode(text, add_special_tokens=add_special)
    return np.asarray(ids, np.int32)

  def __call__(self, prompt: str, images: list[str]):
    from mmjax.data.preprocess import mllama as preprocess

    self.check_images(images, self.image_config)
    ids = self.token_ids(self.text_builder.text(prompt, len(images)))  # [T]
    if not images:
      return ids[None], None
    processed = [preprocess.process(prompt_images.load(ref), self.image_config) for ref in images]
    arrays = preprocess.pack([[(tiles, meta["aspect_ratio"]) for tiles, meta in processed]],
                             self.image_config.max_tiles)
    arrays["cross_attention_mask"] = preprocess.cross_attention_mask(
        [ids.tolist()], self.image_token_id, [[meta["num_tiles"] for _, meta in processed]],
        self.image_config.max_tiles)
    return ids[None], mllama.images_from_processor(arrays)
