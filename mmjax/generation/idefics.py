"""Generation of IDEFICS: the cross-attention adapter (`mmjax.generation.cross_attention`): the
image states' keys/values are computed once at prefill and every new token sees the images the
last prompt token sees, as transformers' `generate` repeats the last row of
`image_attention_mask`."""

import dataclasses

from mmjax.generation.adapters import checked_positions
from mmjax.generation.cross_attention import CrossAttentionAdapter
from mmjax.models import idefics


@dataclasses.dataclass(frozen=True)
class IdeficsAdapter(CrossAttentionAdapter):
  """`pixels`: the module's images (`idefics.images_from_processor`); None: a text-only prompt,
  run as the processor's arrays of one (its gated layers' MLPs still apply)."""

  def prepare_inputs(self, input_ids, mask, pixels, positions):
    if pixels is None:
      pixels = idefics.images_from_processor(self.config, {"input_ids": input_ids})
    idefics.check_images(self.config, input_ids, pixels)
    return pixels, checked_positions(positions, input_ids)
