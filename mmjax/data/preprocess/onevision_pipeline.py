"""The training pipeline's image hooks (`mmjax.data.preprocess`) for LLaVA-OneVision, over the
processor's own functions in `mmjax.data.preprocess.onevision` (the ones chat mode and the parity
tests use).

An image's views depend on whether it shares its sample with other images (`SHARED_LAYOUT`): alone
it takes AnyRes tiles (base view first) and its grid shrinks past `anyres_max_N` features, N being
`ImageConfig.max_tiles`; among several it takes one padded square and one newline. Every image
token is a bilinear mix of four rows of `concat(tile features, image_newline)`
(`mmjax.models.onevision_layout`): `image_token_source [n, 4, 2]` names them as (tile of the
sample, feature within the tile), tile -1 for the newline, and `image_token_weights [n, 4]`
mixes them. Packing makes the tiles slots of the row (`mmjax.data.packing.rebase_tiles`).

Videos (`mmjax.data.onevision_sample`) are media slots too: their frames are tiles after the
sample's images' (`image_is_video [n]` = 1 for such a slot, whose `image_tiles` are its frames),
and their `<video>` tokens take the same four-source layout (every frame pooled 2x2, one newline).
"""

from __future__ import annotations

import numpy as np

from mmjax.data.preprocess import anyres

SHARED_LAYOUT = True
TOKEN_FEATURES = ('image_token_source', 'image_token_weights')
PER_IMAGE_FEATURES = ('image_is_video',)  # 1: the media slot is a video, its tiles its frames


def hf_settings(cfg) -> dict:
  """LlavaOnevisionImageProcessor's settings (N of ``anyres_max_N`` is the model config's
  ``vision_aspect_ratio``, not the processor's)."""
  height, width = cfg.size
  return dict(image_processor_type='LlavaOnevisionImageProcessor',
              size={'height': height, 'width': width},
              image_grid_pinpoints=[list(p) for p in cfg.grid_pinpoints], do_pad=True)


def process(image, cfg, shared: bool = False) -> tuple[np.ndarray, dict]:
  """Views `[n, H, W, 3]` float32 (AnyRes, or with `shared` the one padded square) and {}."""
  from mmjax.data.preprocess import onevision  # pylint: disable=g-import-not-at-top

  return onevision.process(image, cfg, shared), {}


def num_tokens(height: int, width: int, cfg, shared: bool = False) -> int:
  from mmjax.data.preprocess import onevision  # pylint: disable=g-import-not-at-top

  return onevision.num_tokens(height, width, cfg, cfg.max_tiles, shared)


def image_features(processed, cfg) -> dict[str, np.ndarray]:
  """`image_is_video [n]` int32: 0 for every image (`onevision_sample` appends its videos' 1s)."""
  del cfg
  return {'image_is_video': np.zeros(len(processed), np.int32)}


def token_features(processed, cfg, frames=()) -> dict[str, np.ndarray]:
  """`image_token_source [n, 4, 2]` int32 and `image_token_weights [n, 4]` float32 of the sample's
  image tokens in order (see the module docstring), then, with `frames` (frames per video of the
  sample, its tiles after the images'), its video tokens' in order."""
  from mmjax.models.onevision_layout import feature_layout  # pylint: disable=g-import-not-at-top

  side = anyres.tile_side(cfg)
  g = side // cfg.patch_size
  counts, image, video = feature_layout(
      [p.image_size for p in processed], [p.shared for p in processed], list(frames), g,
      cfg.grid_pinpoints, side, cfg.max_tiles)
  newline = (sum(counts) + sum(frames)) * g * g  # the row `feature_layout` appends after the tiles
  index = np.concatenate([image[0], video[0]])  # [n, 4]
  tile = np.where(index == newline, -1, index // (g * g))
  within = np.where(index == newline, 0, index % (g * g))
  return {'image_token_source': np.stack([tile, within], -1).astype(np.int32),
          'image_token_weights': np.concatenate([image[1], video[1]]).astype(np.float32)}
