"""Text + image files -> model inputs, with the tokenizer and processor a checkpoint carries.

Reads `DIR/hf_extras/` (kept at conversion): `tokenizer.json`, `tokenizer_config.json`, the chat
template (`tokenizer_config.json`'s `chat_template`, `chat_template.jinja` or
`chat_template.json`), the image processor settings (`preprocessor_config.json`, or the
`image_processor` entry of `processor_config.json`) and `generation_config.json`. Tokenization
follows transformers' processor `apply_chat_template(tokenize=True)`: special tokens are added
unless the rendered text already starts with the BOS token; each image placeholder token is then
expanded to the model's tokens per image.
"""

import dataclasses
import json
import os

import numpy as np

from mmjax import checkpoint
from mmjax.data.preprocess import ImageConfig, ImageProcessor, common, hf_image_processor_config
from mmjax.generation import prompt_images
from mmjax.data.templates import ChatTemplate, TemplateSpec
from mmjax.data.tokenizer import Tokenizer

_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _pair(value) -> tuple[int, int]:
  if isinstance(value, dict):
    return int(value["height"]), int(value["width"])
  return int(value), int(value)


def image_config_from_hf(pre: dict, tokens_per_image: int | None = None) -> ImageConfig:
  """A transformers `preprocessor_config.json` (CLIP, LLaVA, LLaVA-NeXT, SigLIP, Qwen2-VL,
  GotOcr2 (InternVL), Pixtral processors) -> ImageConfig."""
  kind = pre.get("image_processor_type", "CLIPImageProcessor")
  size = pre.get("size") or {}
  common_kw = dict(
      mean=tuple(pre.get("image_mean", common.OPENAI_CLIP_MEAN)),
      std=tuple(pre.get("image_std", common.OPENAI_CLIP_STD)),
      rescale_factor=float(pre.get("rescale_factor", 1 / 255)),
      resample=_RESAMPLE.get(pre.get("resample", 3), "bicubic"),
      tokens_per_image=tokens_per_image)
  if kind.startswith("Qwen2VL"):  # Qwen2-VL, Qwen2.5-VL and Qwen3-VL (patch 16) alike
    return _qwen_image_config(pre, size, common_kw)
  if kind.startswith("GotOcr2"):  # InternVL's: dynamic tiles when `crop_to_patches`
    tiles = ((int(pre.get("min_patches", 1)), int(pre.get("max_patches", 12)))
             if pre.get("crop_to_patches") else (1, 1))
    return ImageConfig(family="internvl", shortest_edge=None, size=_pair(size), crop_size=None,
                       pad_to_square=False, min_tiles=tiles[0], max_tiles=tiles[1], **common_kw)
  if kind.startswith("LlavaNext"):  # AnyRes: a base view + tiles at the best pinpoint
    return _anyres_image_config(pre, size, common_kw)
  if kind.startswith("Pixtral"):  # fit within the longest edge, multiples of the patch
    edge = size.get("longest_edge")
    patch = pre.get("patch_size") or {"height": 16, "width": 16}
    return ImageConfig(family="pixtral", shortest_edge=None, crop_size=None, pad_to_square=False,
                       size=(int(edge), int(edge)) if edge else _pair(size),
                       patch_size=_pair(patch)[0], **common_kw)
  if "Siglip" in kind or "shortest_edge" not in size:
    return ImageConfig(family="siglip", shortest_edge=None, size=_pair(size), crop_size=None,
                       pad_to_square=False, **common_kw)
  crop = _pair(pre["crop_size"]) if pre.get("do_center_crop", True) and "crop_size" in pre else None
  pad = bool(pre.get("do_pad", False)) and "Llava" in kind
  return ImageConfig(family="llava" if pad else "clip", shortest_edge=int(size["shortest_edge"]),
                     crop_size=crop, pad_to_square=pad, **common_kw)


def _anyres_image_config(pre: dict, size: dict, common_kw: dict) -> ImageConfig:
  """LlavaNextImageProcessor: `size` (a shortest edge, or height and width), the crop and the
  grid pinpoints (transformers' default ones when absent)."""
  edge = size.get("shortest_edge")
  crop = pre.get("crop_size") if pre.get("do_center_crop", True) else None
  pinpoints = pre.get("image_grid_pinpoints")
  return ImageConfig(family="anyres", shortest_edge=None if edge is None else int(edge),
                     size=None if edge is not None else _pair(size),
                     crop_size=None if not crop else _pair(crop), pad_to_square=False,
                     **({"grid_pinpoints": pinpoints} if pinpoints else {}), **common_kw)


def _qwen_image_config(pre: dict, size: dict, common_kw: dict) -> ImageConfig:
  """Qwen2VLImageProcessor: the pixel budget is `size`'s shortest/longest edge (transformers
  v5) or the older top-level `min_pixels` / `max_pixels`, which take precedence as there."""
  default = ImageConfig(family="qwen2_vl")
  pick = lambda old, new: pre.get(old) or size.get(new) or size.get(old) or getattr(default, old)
  return ImageConfig(family="qwen2_vl", shortest_edge=None, crop_size=None, pad_to_square=False,
                     patch_size=int(pre.get("patch_size", 14)),
                     merge_size=int(pre.get("merge_size", 2)),
                     temporal_patch_size=int(pre.get("temporal_patch_size", 2)),
                     min_pixels=int(pick("min_pixels", "shortest_edge")),
                     max_pixels=int(pick("max_pixels", "longest_edge")), **common_kw)


def image_config_to_hf(cfg: ImageConfig) -> dict:
  """ImageConfig -> the `preprocessor_config.json` of the transformers image processor that
  preprocesses the same way (`image_config_from_hf` reads it back; each preprocessing family's
  `hf_settings`)."""
  return hf_image_processor_config(cfg, {v: k for k, v in _RESAMPLE.items()})


@dataclasses.dataclass
class PromptBuilder:
  tokenizer: Tokenizer
  template: ChatTemplate | None  # None: the prompt text is used as is
  image_processor: ImageProcessor | None
  image_token_id: int | None
  tokens_per_image: int
  stop_ids: tuple[int, ...]
  pad_id: int

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, config, chat_template: bool = True,
                      image_processor: bool = True) -> "PromptBuilder":
    """`image_processor=False` leaves the images to the caller (a family's own processor)."""
    extras = os.path.join(ckpt_dir, checkpoint.HF_EXTRAS_DIR)
    if not os.path.exists(os.path.join(extras, "tokenizer.json")):
      raise FileNotFoundError(
          f"{ckpt_dir} has no tokenizer ({checkpoint.HF_EXTRAS_DIR}/tokenizer.json): convert from a "
          "Hugging Face directory that holds tokenizer.json (and tokenizer_config.json, "
          "preprocessor_config.json), or pass processor arrays with --inputs")
    tokenizer = Tokenizer.load(extras)
    template = _chat_template(extras, tokenizer) if chat_template else None
    image_token_id = getattr(config, "image_token_id", None)
    processor = None
    if image_token_id is not None and image_processor:
      pre = _image_processor_config(extras)
      if pre is not None:
        processor = ImageProcessor(image_config_from_hf(pre, config.tokens_per_image))
    gen_path = os.path.join(extras, "generation_config.json")
    gen_cfg = _read_json(gen_path) if os.path.exists(gen_path) else {}
    stop = gen_cfg.get("eos_token_id")
    if stop is None and tokenizer.special_token("eos_token"):
      stop = tokenizer.tok.token_to_id(tokenizer.special_token("eos_token"))
    stop = () if stop is None else tuple(stop) if isinstance(stop, list) else (stop,)
    pad = gen_cfg.get("pad_token_id")
    if pad is None and tokenizer.special_token("pad_token"):
      pad = tokenizer.tok.token_to_id(tokenizer.special_token("pad_token"))
    return cls(tokenizer, template, processor, image_token_id,
               getattr(config, "tokens_per_image", 0), stop, pad if pad is not None else 0)

  def text(self, prompt: str, num_images: int) -> str:
    """The prompt rendered by the chat template (with generation prompt), one marker per image."""
    marker = self.tokenizer.tok.id_to_token(self.image_token_id) if num_images else ""
    plain = f"{marker}\n" * num_images + prompt
    if self.template is None:
      return plain
    structured = [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]
    text = self.template.render([{"role": "user", "content": structured}], add_generation_prompt=True)
    if prompt not in text or "'type'" in text:  # a template that expects string contents
      text = self.template.render([{"role": "user", "content": plain}], add_generation_prompt=True)
    if num_images and text.count(marker) != num_images:
      raise ValueError(f"the chat template placed {text.count(marker)} image markers {marker!r} "
                       f"for {num_images} images")
    return text

  def token_ids(self, text: str) -> np.ndarray:
    """`text` tokenized as transformers' processors do in chat mode: special tokens added unless
    the text already starts with the BOS token; image markers not expanded."""
    bos = self.tokenizer.special_token("bos_token")
    ids, _ = self.tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos)))
    return np.asarray(ids, np.int32)

  def __call__(self, prompt: str, images: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """`input_ids [1, T]` and NHWC `pixels [I, H, W, 3]` (None without images); `images` are
    paths or http(s) URLs."""
    if images and self.image_token_id is None:
      raise ValueError("this checkpoint is text-only; it takes no --image")
    if images and self.image_processor is None:
      raise FileNotFoundError(f"the checkpoint has no image processor settings to preprocess "
                              f"images with ({checkpoint.HF_EXTRAS_DIR}/preprocessor_config.json "
                              "or processor_config.json)")
    ids = self.token_ids(self.text(prompt, len(images)))
    if images:
      ids = expand_placeholders(ids, self.image_token_id, [self.tokens_per_image] * len(images))
    pixels = None
    if images:
      pixels = np.concatenate([self.image_processor(prompt_images.load(ref)).pixels
                               for ref in images])
    return ids.astype(np.int32)[None], pixels


def expand_placeholders(ids: np.ndarray, placeholder: int, counts,
                        wrap: tuple[int, int] | None = None) -> np.ndarray:
  """`ids [T]` with the i-th `placeholder` repeated `counts[i]` times (int32), between the
  `wrap` (start, end) ids when given (InternVL's `<img>` ... `</img>`)."""
  start, end = ([wrap[0]], [wrap[1]]) if wrap else ([], [])
  return replace_placeholders(ids, placeholder, [start + [placeholder] * n + end for n in counts])


def replace_placeholders(ids: np.ndarray, placeholder: int, replacements) -> np.ndarray:
  """`ids [T]` with the i-th `placeholder` replaced by the ids `replacements[i]` (int32)."""
  replacements = iter(replacements)
  return np.concatenate([np.asarray(next(replacements), np.int64) if i == placeholder else [i]
                         for i in ids]).astype(np.int32)


@dataclasses.dataclass
class FamilyPromptBuilder:
  """Base of a family's own chat-mode builder: the text side is a `PromptBuilder` (template,
  tokenizer, stop and pad ids); the subclass makes the family's image arrays."""

  text_builder: PromptBuilder

  @property
  def tokenizer(self) -> Tokenizer:
    return self.text_builder.tokenizer

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return self.text_builder.stop_ids

  @property
  def pad_id(self) -> int:
    return self.text_builder.pad_id

  def check_images(self, images: list[str], image_config) -> None:
    if images and self.text_builder.image_token_id is None:
      raise ValueError("this checkpoint is text-only; it takes no --image")
    if images and image_config is None:
      raise FileNotFoundError(f"the checkpoint has no image processor settings to preprocess "
                              f"images with ({checkpoint.HF_EXTRAS_DIR}/preprocessor_config.json "
                              "or processor_config.json)")


def required_token_ids(tokenizer: Tokenizer, tokens: tuple[str, ...]) -> dict[str, int]:
  """Each token's id in the checkpoint's tokenizer; an error naming a token it lacks."""
  ids = {}
  for token in tokens:
    ids[token] = tokenizer.tok.token_to_id(token)
    if ids[token] is None:
      raise ValueError(f"the checkpoint's tokenizer has no {token!r}")
  return ids


def image_processor_config(ckpt_dir: str) -> dict | None:
  """The image processor settings a checkpoint keeps (see `_image_processor_config`)."""
  return _image_processor_config(os.path.join(ckpt_dir, checkpoint.HF_EXTRAS_DIR))


def _image_processor_config(extras: str) -> dict | None:
  """preprocessor_config.json (transformers v4), or processor_config.json's `image_processor`
  (what v5's processor `save_pretrained` writes)."""
  pre = os.path.join(extras, "preprocessor_config.json")
  if os.path.exists(pre):
    return _read_json(pre)
  proc = os.path.join(extras, "processor_config.json")
  if os.path.exists(proc):
    return _read_json(proc).get("image_processor")
  return None


def has_chat_template(ckpt_dir: str) -> bool:
  """Whether the checkpoint's files carry a chat template (where `_chat_template` looks)."""
  extras = os.path.join(ckpt_dir, checkpoint.HF_EXTRAS_DIR)
  config_file = os.path.join(extras, "tokenizer_config.json")
  if os.path.exists(config_file) and _read_json(config_file).get("chat_template"):
    return True
  json_file = os.path.join(extras, "chat_template.json")
  return (os.path.exists(os.path.join(extras, "chat_template.jinja"))
          or (os.path.exists(json_file) and bool(_read_json(json_file).get("chat_template"))))


def _chat_template(extras: str, tokenizer: Tokenizer) -> ChatTemplate:
  source = tokenizer.chat_template
  jinja_file = os.path.join(extras, "chat_template.jinja")
  json_file = os.path.join(extras, "chat_template.json")
  if not source and os.path.exists(jinja_file):
    with open(jinja_file) as f:
      source = f.read()
  if not source and os.path.exists(json_file):
    source = _read_json(json_file).get("chat_template")
  if not source:
    raise ValueError(f"the checkpoint has no chat template (looked in tokenizer_config.json, "
                     f"chat_template.jinja, chat_template.json under {extras}); pass "
                     "--no-chat-template to use the prompt text as is")
  context = {k: tokenizer.special_token(k) for k in ("bos_token", "eos_token", "pad_token",
                                                      "unk_token")}
  return ChatTemplate(TemplateSpec(source), name="checkpoint", extra_context=context)
