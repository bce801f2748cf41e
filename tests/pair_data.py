"""Preference pairs of the procedural shapes set for the pair tests: JSONL records with PNG
images, a tiny BPE tokenizer that knows their words, and a tiny LLaVA config that trains on them
through the data pipeline.

Each pair asks a shapes question (`mmjax.data.synthetic`); the chosen answer is the right one,
the rejected one a wrong answer drawn from every answer word of the set (mostly of another kind:
a shape for a colour question, so a tiny model can learn the preference from the text alone).
"""

import json
import os

import numpy as np
from PIL import Image

from mmjax.data import synthetic
from mmjax.data.tokenizer import train_tiny_tokenizer
from mmjax.train.cli import add_optional_keys
from tiny_train import tiny_config

SPECIALS = ("<unk>", "<s>", "</s>", "<image>", "<|im_start|>", "<|im_end|>")
IMAGE_TOKEN_ID = 3  # "<image>" above


def answer_words(cfg: synthetic.ShapesConfig) -> list[str]:
  return sorted({w for kind in synthetic.QUESTION_KINDS for w in cfg.answers(kind)})


def write_tokenizer(directory: str) -> str:
  """A BPE tokenizer whose vocabulary holds the chat template's and the shapes set's words."""
  os.makedirs(directory, exist_ok=True)
  words = answer_words(synthetic.ShapesConfig()) + synthetic.vocabulary()[5:]
  corpus = ["system user assistant You are a helpful assistant.", " ".join(words)] * 20
  train_tiny_tokenizer(corpus, special_tokens=SPECIALS, vocab_size=400).save(
      os.path.join(directory, "tokenizer.json"))
  return directory


def write_pairs(directory: str, name: str, size: int, split: str = "train", seed: int = 0,
                reference: dict | None = None) -> str:
  """`directory/name.jsonl` of `size` pairs (images beside it); `reference`: record index ->
  (ref_chosen_logps, ref_rejected_logps) columns."""
  os.makedirs(directory, exist_ok=True)
  cfg = synthetic.ShapesConfig()
  data = synthetic.ShapesDataset(cfg, split=split, size=size)
  words = answer_words(cfg)
  rng = np.random.default_rng(seed)
  path = os.path.join(directory, f"{name}.jsonl")
  with open(path, "w") as f:
    for i in range(size):
      sample = data[i]
      image = f"{name}_{i}.png"
      Image.fromarray(sample["image"]).save(os.path.join(directory, image))
      wrong = [w for w in words if w != sample["answer"]]
      record = {"id": f"{name}{i}", "image": image, "prompt": sample["question"],
                "chosen": sample["answer"], "rejected": str(rng.choice(wrong))}
      if reference is not None:
        record["ref_chosen_logps"], record["ref_rejected_logps"] = reference[i]
      f.write(json.dumps(record) + "\n")
  return path


def pair_config(data_path: str, tok_dir: str, objective: str = "dpo", **train_kw):
  """The tiny LLaVA of the trainer tests on pair data (32 px images: 4 image tokens)."""
  cfg = tiny_config(**{"objective": objective, **train_kw})
  add_optional_keys(cfg)
  cfg.model.decoder.vocab_size = 448
  cfg.model.image_token_id = IMAGE_TOKEN_ID
  cfg.data = dict(image_preset="clip224", image_overrides=dict(
      shortest_edge=32, crop_size=32, patch_size=16), template="chatml", tokenizer=tok_dir,
      max_length=64, max_tiles=2, max_images=2, batch_size=8, packing=True,
      sources=[dict(path=data_path)])
  return cfg
