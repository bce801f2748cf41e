"""The files that make a model trained from a config a complete checkpoint.

A converted checkpoint keeps the HF directory's config.json, tokenizer and processor files; a model
trained from scratch (`mmjax train` without `train.init_from`) gets them here, from what training
used: the data config's tokenizer (or the shapes set's), its chat template written out so that it
renders what training rendered, the special tokens, the image preprocessing as the transformers
image processor that does the same, the family's processor settings and its HF config. Chat mode
(`mmjax generate --checkpoint DIR/model`), `mmjax eval` and `mmjax export` read them.
"""

import dataclasses
import json
import logging
from typing import Any, Mapping

from mmjax.data import synthetic
from mmjax.data.preprocess import ImageConfig
from mmjax.data.preprocess.common import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD
from mmjax.data.templates import standalone_source
from mmjax.generation.prompt import image_config_to_hf
from mmjax.models.family import Family, Unsupported

log = logging.getLogger("mmjax.train")


@dataclasses.dataclass
class ModelFiles:
  hf_config: dict | None  # config.json; None when the family has no transformers counterpart
  extras: dict[str, str]  # hf_extras/ file name -> text
  missing: list[str]  # what could not be written, and why (said once the model is written)


@dataclasses.dataclass
class _TextSide:
  tokenizer: Any  # tokenizers.Tokenizer
  tokenizer_config: dict
  chat_template: str
  special_ids: dict[str, int | None]  # bos / eos / pad token ids


def _shapes_text(data: Mapping[str, Any]) -> tuple[_TextSide, ImageConfig]:
  """The shapes set: its shipped tokenizer, `encode_example`'s layout, pixels `(x / 255 - .5) / .5`
  at the rendered size (no resize)."""
  side = synthetic.ShapesConfig(**dict(data.get("shapes", {}) or {})).image_size
  text = _TextSide(
      synthetic.load_tokenizer(), synthetic.tokenizer_config(),
      synthetic.chat_template(image_first=bool(data.get("image_first", True))),
      {"bos": synthetic.BOS_ID, "eos": synthetic.EOS_ID, "pad": synthetic.PAD_ID})
  image = ImageConfig(family="siglip", shortest_edge=None, size=(side, side), crop_size=None,
                      pad_to_square=False, mean=IMAGENET_STANDARD_MEAN, std=IMAGENET_STANDARD_STD)
  return text, image


def _pipeline_text(data: Mapping[str, Any]) -> tuple[_TextSide, ImageConfig]:
  """The general pipeline: `data.tokenizer`, `data.template`, `data.image`."""
  from mmjax.data.pipeline import DataConfig
  from mmjax.data.tokenizer import Tokenizer

  cfg = DataConfig.from_dict({k: v for k, v in dict(data).items() if k != "source"})
  tokenizer = Tokenizer.load(cfg.tokenizer)
  ids = {}
  for name in ("bos", "eos", "pad"):
    token = tokenizer.special_token(f"{name}_token")
    ids[name] = tokenizer.tok.token_to_id(token) if token else None
  text = _TextSide(tokenizer.tok, dict(tokenizer.config),
                   standalone_source(cfg.template, tokenizer, cfg.image_token), ids)
  return text, cfg.image


def model_files(family: Family, config: Any, data: Mapping[str, Any]) -> ModelFiles:
  """The files for a model of `family` / `config` trained on `data` (a training config's `data`
  section)."""
  data = dict(data.to_dict() if hasattr(data, "to_dict") else data)
  source = data.get("source", "pipeline" if data.get("sources") else "shapes")
  text, image = (_shapes_text if source == "shapes" else _pipeline_text)(data)
  missing = []
  tokenizer_config = dict(text.tokenizer_config, chat_template=text.chat_template)
  extras = {"tokenizer.json": text.tokenizer.to_str(), "chat_template.jinja": text.chat_template}
  generation = {f"{k}_token_id": v for k, v in text.special_ids.items() if v is not None}
  extras["generation_config.json"] = json.dumps(generation, indent=2)

  image_token_id = getattr(config, "image_token_id", None)
  if image_token_id is not None:
    try:
      extras["preprocessor_config.json"] = json.dumps(image_config_to_hf(image), indent=2)
    except ValueError as e:
      missing.append(f"image processor settings ({e})")
    image_token = text.tokenizer.id_to_token(image_token_id)
    processor = family.hf_processor_config(config, image_token) if image_token else {}
    if processor:
      tokenizer_config.setdefault("processor_class", processor["processor_class"])
      extras["processor_config.json"] = json.dumps(processor, indent=2)
  extras["tokenizer_config.json"] = json.dumps(tokenizer_config, indent=2, ensure_ascii=False)

  try:
    hf_config = family.hf_config(config)
  except Unsupported as e:
    hf_config = None
    missing.append(f"an HF config ({e})")
  return ModelFiles(hf_config, extras, missing)
