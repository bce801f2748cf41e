"""Image processor settings written for transformers (`image_config_to_hf`, what a trained
model's `hf_extras/preprocessor_config.json` holds): transformers' own image processor, built from
them, preprocesses an image exactly as mmjax does, and mmjax reads them back to the same settings."""

import numpy as np
import pytest
import transformers
from PIL import Image

from mmjax.data.preprocess import ImageProcessor, preset
from mmjax.data.preprocess.mllama import MllamaImageConfig
from mmjax.generation.prompt import image_config_from_hf, image_config_to_hf

CASES = {
    "clip336": dict(shortest_edge=32, crop_size=32),
    "llava15": dict(shortest_edge=32, crop_size=32),
    "siglip384": dict(size=32),
    "llava_next": dict(shortest_edge=32, crop_size=32, grid_pinpoints=((32, 64), (64, 32))),
    "internvl": dict(size=32, max_tiles=6),
    "qwen2_vl": dict(patch_size=4, min_pixels=64 * 4, max_pixels=64 * 40),
    "mllama": dict(size=32, max_tiles=4),
}
# OneVision's settings are read back by its own prompt builder (with the model config's
# anyres_max_N), so only its pixels are checked here.
PIXEL_CASES = {**CASES, "llava_onevision": dict(size=32, grid_pinpoints=((32, 64), (64, 32)))}


def _hf_pixels(out, family, cfg) -> np.ndarray:
  """transformers' `pixel_values` in mmjax's layout."""
  pixels = out["pixel_values"]
  if family == "qwen2_vl":
    return pixels  # [N, C*T*P*P] both
  if family == "mllama":
    pixels = pixels[0, 0]  # [tiles, C, H, W]
  if family in ("anyres", "onevision"):
    pixels = pixels[0]  # [1 + tiles, C, H, W]
  return np.transpose(pixels, (0, 2, 3, 1))


@pytest.mark.parametrize("name", sorted(PIXEL_CASES))
def test_transformers_preprocesses_as_mmjax_from_the_written_settings(name):
  cfg = preset(name, **PIXEL_CASES[name])
  settings = image_config_to_hf(cfg)
  kind = settings.pop("image_processor_type")
  hf = getattr(transformers, kind + "Pil")(**settings)
  rng = np.random.default_rng(0)
  for size in [(50, 90), (70, 40)]:
    image = Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    processed = ImageProcessor(cfg)(image)
    ours = processed.patches(cfg) if cfg.family == "qwen2_vl" else processed.pixels
    theirs = _hf_pixels(hf(images=[image], return_tensors="np"), cfg.family, cfg)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_written_settings_read_back(name):
  cfg = preset(name, **CASES[name])
  settings = image_config_to_hf(cfg)
  if cfg.family == "mllama":
    back = MllamaImageConfig.from_hf(settings)
    assert (back.size, back.max_tiles, back.mean, back.std, back.resample) == \
        (cfg.size, cfg.max_tiles, cfg.mean, cfg.std, cfg.resample)
    return
  back = image_config_from_hf(settings)
  fields = {"clip": ("shortest_edge", "crop_size"), "llava": ("shortest_edge", "crop_size",
                                                             "pad_to_square"),
            "siglip": ("size",), "anyres": ("shortest_edge", "crop_size", "grid_pinpoints"),
            "internvl": ("size", "min_tiles", "max_tiles"),
            "qwen2_vl": ("patch_size", "merge_size", "temporal_patch_size", "min_pixels",
                         "max_pixels")}[cfg.family]
  common = ("family", "mean", "std", "rescale_factor", "resample")
  for field in common + fields:
    assert getattr(back, field) == getattr(cfg, field), field
