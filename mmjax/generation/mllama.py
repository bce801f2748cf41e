"""Generation of Llama 3.2 Vision: the adapter (see `mmjax.generation.adapters`) and chat mode's
prompt builder.

The prefill runs the vision tower once and every cross-attention layer keeps its images'
keys/values in the decode state (the decoder's cache); each new token sees the images the last
prompt token sees, as transformers' `generate` repeats the last row of `cross_attention_mask`.
A prompt without images skips the cross-attention layers throughout, as transformers does.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import numpy as np

from mmjax.decoders.cross import CrossInputs
from mmjax.decoders.llama import init_cache
from mmjax.generation.adapters import DecodeState, checked_positions, last_logits
from mmjax.generation import prompt_images
from mmjax.generation.prompt import FamilyPromptBuilder, PromptBuilder
from mmjax.models import mllama


@dataclasses.dataclass(frozen=True)
class MllamaAdapter:
  """`pixels`: the module's image arrays (`mllama.images_from_processor`) or None."""

  module: nn.Module
  config: mllama.MllamaConfig

  def prepare_inputs(self, input_ids, mask, pixels, positions):
    mllama.check_image_tokens(input_ids, self.config.image_token_id, pixels)
    return pixels, checked_positions(positions, input_ids)

  def init_state(self, batch: int, length: int) -> DecodeState:
    return {"cache": init_cache(self.config.decoder, batch, length)}

  def prefill(self, params, input_ids, pixels, positions, mask, state: DecodeState):
    """Logits of the last prompt token `[B, V]`; the state gains the images' keys/values (in
    the cache) and the last token's cross-attention mask (`cross`)."""

    def run(m, input_ids, images, positions, mask, cache):
      cross = None
      if images is not None:
        cross = m.cross_inputs(input_ids, images, m.image_states(images))
      out = m.decoder(m.decoder.embed(input_ids), positions, mask, None, cache, 0, cross=cross)
      return last_logits(m.decoder, out), cross

    (logits, cache), cross = self.module.apply({"params": params}, input_ids, pixels, positions,
                                               mask, state["cache"], method=run)
    state = {**state, "cache": cache}
    if cross is not None:  # [B, 1, 1, S] and [B, 1]: what every new token sees
      state["cross"] = CrossInputs(None, cross.mask[:, :, -1:], cross.row_mask[:, -1:])
    return logits, state

  def step(self, params, tokens, positions, mask, state: DecodeState, index):
    """`tokens [B, 1]`, `positions [B, 1]`, written at cache slot `index`."""

    def run(m, tokens, positions, mask, cache, index, cross):
      return m.decoder(m.decoder.embed(tokens), positions, mask, None, cache, index, cross=cross)

    out = self.module.apply({"params": params}, tokens, positions, mask, state["cache"], index,
                            state.get("cross"), method=run)
    return out.logits[:, -1], {**state, "cache": out.cache}


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
