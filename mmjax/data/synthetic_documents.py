"""A procedural interleaved image-text set from the shapes world (`mmjax.data.synthetic`): each
document holds several shapes images, each followed by its caption and an end-of-chunk token, as
Flamingo lays out web pages (`mmjax.data.documents`)::

  <image>red circle top-left , blue square bottom-right<|endofchunk|><image>green diamond center...

    python -m mmjax.data.synthetic_documents DIR [--num 256]

writes `DIR/images/*.png`, `DIR/documents.jsonl` (`{"id", "text", "images"}`), `DIR/captions.jsonl`
(one image a document: image-text pairs, the second source of a Flamingo-style mixture) and
`DIR/tokenizer/` (the shapes tokenizer with `<fake_token_around_image>` and `<|endofchunk|>` added
after its vocabulary, where IDEFICS keeps its additional rows). `configs/tiny/idefics.py:DIR`
trains a tiny IDEFICS on it. `ShapesDocuments` is the same set as an in-memory source.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

from mmjax.data import synthetic

FAKE_TOKEN = "<fake_token_around_image>"  # IDEFICS' image wrapper
END_OF_CHUNK = "<|endofchunk|>"
ADDED_TOKENS = (FAKE_TOKEN, END_OF_CHUNK)  # ids vocab_size, vocab_size + 1


class ShapesDocuments:
  """Random-access documents of `images` (min, max) shapes images each; document i is a pure
  function of (`shapes.seed`, `seed`, i). Raw samples as sources give them (`mmjax.data.sources`),
  the images uint8 arrays."""

  def __init__(self, size: int, images: tuple[int, int] = (1, 3), seed: int = 0,
               shapes: synthetic.ShapesConfig | None = None):
    self.size, self.images, self.seed = int(size), tuple(images), int(seed)
    self.shapes = shapes or synthetic.ShapesConfig()

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index) -> dict:
    i = int(index)
    if not 0 <= i < self.size:
      raise IndexError(f"index {i} out of range for {self.size} documents")
    rng = np.random.default_rng([self.shapes.seed, self.seed, 7, i])
    text, images = [], []
    for _ in range(int(rng.integers(self.images[0], self.images[1] + 1))):
      objects = synthetic.sample_scene(rng, self.shapes)
      images.append(synthetic.render_scene(objects, self.shapes.image_size))
      text.append(synthetic.IMAGE + synthetic.describe_scene(objects, self.shapes) + END_OF_CHUNK)
    return {"id": f"shapes_documents/{self.seed}/{i}", "text": "".join(text), "images": images}


def tokenizer():
  """The shapes tokenizer with `ADDED_TOKENS` after its vocabulary (special: never split)."""
  tok = synthetic.load_tokenizer()
  tok.add_special_tokens(list(ADDED_TOKENS))
  return tok


def write_tokenizer(directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  tokenizer().save(os.path.join(directory, "tokenizer.json"))
  config = synthetic.tokenizer_config()
  config["additional_special_tokens"] = [*config.get("additional_special_tokens", []),
                                         *ADDED_TOKENS]
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  return directory


def write_set(directory: str, num: int = 256, captions: int | None = None, seed: int = 0) -> str:
  """`documents.jsonl` (`num` documents of 1-3 images), `captions.jsonl` (`captions` one-image
  documents, default num / 4), `images/` and `tokenizer/` under `directory`."""
  os.makedirs(os.path.join(directory, "images"), exist_ok=True)
  sets = {"documents": ShapesDocuments(num, (1, 3), seed),
          "captions": ShapesDocuments(num // 4 if captions is None else captions, (1, 1),
                                      seed + 1)}
  for name, source in sets.items():
    with open(os.path.join(directory, f"{name}.jsonl"), "w") as f:
      for i in range(len(source)):
        doc = source[i]
        paths = []
        for k, image in enumerate(doc["images"]):
          paths.append(os.path.join("images", f"{name}_{i:05d}_{k}.png"))
          Image.fromarray(image).save(os.path.join(directory, paths[-1]))
        f.write(json.dumps({"id": doc["id"], "text": doc["text"], "images": paths}) + "\n")
  write_tokenizer(os.path.join(directory, "tokenizer"))
  return directory


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("directory")
  parser.add_argument("--num", type=int, default=256, help="documents (and num / 4 captions)")
  args = parser.parse_args(argv)
  write_set(args.directory, args.num)
  print(f"wrote {args.num} documents and {args.num // 4} captions to {args.directory}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
