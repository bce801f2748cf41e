"""The procedural "shapes" VQA set: the embedded default dataset of mmjax.

Each image is a small RGB picture of coloured shapes on a coarse grid (default: 32x32 pixels,
a 2x2 grid of 16-pixel cells, at most one object per cell). Each sample asks one question with a
one-word answer:

  color     "what color is the triangle?"      -> "red"
  shape     "what shape is the blue object?"   -> "circle"
  count     "how many shapes are there?"       -> "three"
  position  "where is the green square?"       -> "top-left"

The set is built so that a tiny model trained from scratch on a CPU can learn it in minutes:

* Every object in an image has a colour and a shape no other object in it has, so every question
  names exactly one object and has exactly one right answer.
* Objects sit in grid cells (with a pixel or two of jitter), so a patch size equal to the cell
  size (16 by default) gives one object per image token.
* Colours, shapes, counts, cells and question kinds are all drawn uniformly, so the best
  image-blind guess (the majority answer of each kind) is right about a quarter of the time;
  `chance_accuracy` measures it.
* Train and eval never share an image: the image bytes are hashed, and a fixed 1/`eval_buckets`
  of all possible images belongs to eval only (see `image_split`).

`ShapesDataset` is a deterministic random-access source (usable as a grain
`RandomAccessDataSource`), `load_tokenizer` returns the word-level tokenizer shipped in
`mmjax/assets/shapes_tokenizer/`, and `encode_example` turns a sample into `input_ids` and a
`loss_mask` without needing the general data pipeline.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.resources
import json
import operator
import re
from typing import Any, Iterable, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

# ------------------------------------------------------------------------------------------------
# Vocabulary of the rendered world.

# Saturated colours far apart in RGB, so that one pixel is enough to tell them apart. The default
# config uses the first four; the others exist so variants of the set stay inside the shipped
# tokenizer's vocabulary.
PALETTE: dict[str, tuple[int, int, int]] = {
  "red": (220, 30, 30),
  "green": (30, 170, 40),
  "blue": (40, 70, 230),
  "yellow": (240, 210, 20),
  "purple": (150, 40, 190),
  "orange": (245, 130, 20),
  "cyan": (20, 200, 210),
  "white": (240, 240, 240),
}
ALL_SHAPES = ("circle", "square", "triangle", "diamond", "cross")
BACKGROUND = (24, 24, 24)
# Index k holds the answer for k objects.
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTION_KINDS = ("color", "shape", "count", "position")

# Cell names, row-major. A 3x3 grid uses single words for the middle row and column ("top",
# "center") so that every answer stays one word, and thus one token.
_POSITION_NAMES = {
  1: ("center",),
  2: ("top-left", "top-right", "bottom-left", "bottom-right"),
  3: (
    "top-left", "top", "top-right",
    "left", "center", "right",
    "bottom-left", "bottom", "bottom-right",
  ),
}

_QUESTION_TEMPLATES = {
  "color": "what color is the {shape}?",
  "shape": "what shape is the {color} object?",
  "count": "how many shapes are there?",
  "position": "where is the {color} {shape}?",
}


def position_names(grid: int) -> tuple[str, ...]:
  """The answer word of each cell of a `grid` x `grid` layout, row-major."""
  if grid not in _POSITION_NAMES:
    raise ValueError(f"grid must be one of {sorted(_POSITION_NAMES)}, got {grid}")
  return _POSITION_NAMES[grid]


# ------------------------------------------------------------------------------------------------
# Config.


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
  """What the shapes set draws and asks.

  Attributes:
    image_size: side of the square RGB image, in pixels; a multiple of `grid`.
    grid: cells per side (1, 2 or 3); at most one object per cell.
    colors: colour names, keys of `PALETTE`; no two objects in an image share one.
    shapes: shape names from `ALL_SHAPES`; no two objects in an image share one.
    min_objects, max_objects: the object count is uniform over this inclusive range.
    kinds: question kinds to ask, drawn uniformly; a subset of `QUESTION_KINDS`.
    jitter: largest offset, in pixels, of an object's centre from its cell's centre.
    size_range: objects' half-widths vary over this many pixels below the largest that fits
      (0: every object has the same size).
    eval_buckets: 1/eval_buckets of all possible images are reserved for the eval split.
    seed: base seed; with the split and the index it fixes every sample.
  """

  image_size: int = 32
  grid: int = 2
  colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
  shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
  min_objects: int = 1
  max_objects: int = 4
  kinds: tuple[str, ...] = QUESTION_KINDS
  jitter: int = 1
  size_range: int = 2
  eval_buckets: int = 8
  seed: int = 0

  def __post_init__(self):
    # Tuples keep the config hashable and picklable even when built from lists.
    for name in ("colors", "shapes", "kinds"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    position_names(self.grid)  # validates grid
    if self.image_size % self.grid:
      raise ValueError(f"image_size {self.image_size} is not a multiple of grid {self.grid}")
    for name, allowed in (("colors", PALETTE), ("shapes", ALL_SHAPES), ("kinds", QUESTION_KINDS)):
      values = getattr(self, name)
      unknown = [v for v in values if v not in allowed]
      if unknown or not values or len(set(values)) != len(values):
        raise ValueError(
          f"ShapesConfig.{name}={values!r}: expected distinct names from {tuple(allowed)}"
        )
    # Every object needs its own cell, colour and shape.
    room = min(self.grid * self.grid, len(self.colors), len(self.shapes))
    if not 1 <= self.min_objects <= self.max_objects <= room:
      raise ValueError(
        f"need 1 <= min_objects ({self.min_objects}) <= max_objects ({self.max_objects}) "
        f"<= {room} (cells, colours and shapes available)"
      )
    if self.size_range < 0:
      raise ValueError(f"size_range must be >= 0, got {self.size_range}")
    if self.jitter < 0 or self.max_half_size < 2:
      raise ValueError(
        f"cells of {self.cell_size} px are too small for jitter {self.jitter}: "
        "objects would be under 5 px wide"
      )
    if self.eval_buckets < 2:
      raise ValueError(f"eval_buckets must be >= 2, got {self.eval_buckets}")

  @property
  def cell_size(self) -> int:
    return self.image_size // self.grid

  @property
  def max_half_size(self) -> int:
    """Largest half-width of an object that, jittered, still keeps a 1 px margin in its cell."""
    return self.cell_size // 2 - 1 - self.jitter

  @property
  def min_half_size(self) -> int:
    return max(2, self.max_half_size - self.size_range)

  def answers(self, kind: str) -> tuple[str, ...]:
    """Every answer a question of `kind` can have."""
    if kind == "color":
      return self.colors
    if kind == "shape":
      return self.shapes
    if kind == "count":
      return COUNT_WORDS[self.min_objects : self.max_objects + 1]
    if kind == "position":
      return position_names(self.grid)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {QUESTION_KINDS}")


# ------------------------------------------------------------------------------------------------
# Scenes and rendering.


class ShapeObject(NamedTuple):
  """One drawn object. (cx, cy) is its centre in pixels, `half` its half-width."""

  color: str
  shape: str
  position: str
  cx: int
  cy: int
  half: int


def sample_scene(rng: np.random.Generator, cfg: ShapesConfig) -> list[ShapeObject]:
  """Draws the objects of one image: distinct cells, distinct colours, distinct shapes."""
  n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
  cells = rng.choice(cfg.grid * cfg.grid, size=n, replace=False)
  colors = rng.choice(len(cfg.colors), size=n, replace=False)
  shapes = rng.choice(len(cfg.shapes), size=n, replace=False)
  names = position_names(cfg.grid)
  objects = []
  for cell, color, shape in zip(cells, colors, shapes):
    row, col = divmod(int(cell), cfg.grid)
    half = int(rng.integers(cfg.min_half_size, cfg.max_half_size + 1))
    dx, dy = (int(d) for d in rng.integers(-cfg.jitter, cfg.jitter + 1, size=2))
    objects.append(
      ShapeObject(
        color=cfg.colors[color],
        shape=cfg.shapes[shape],
        position=names[cell],
        cx=col * cfg.cell_size + cfg.cell_size // 2 + dx,
        cy=row * cfg.cell_size + cfg.cell_size // 2 + dy,
        half=half,
      )
    )
  return objects


def render_scene(objects: Iterable[ShapeObject], image_size: int) -> np.ndarray:
  """Draws objects on the background; returns uint8 [H, W, 3].

  Pillow draws these primitives without anti-aliasing, so every pixel is either the background
  or exactly one palette colour, and the centre pixel of each object has its colour.
  """
  image = Image.new("RGB", (image_size, image_size), BACKGROUND)
  draw = ImageDraw.Draw(image)
  for obj in objects:
    fill = PALETTE[obj.color]
    x, y, h = obj.cx, obj.cy, obj.half
    if obj.shape == "circle":
      draw.ellipse((x - h, y - h, x + h, y + h), fill=fill)
    elif obj.shape == "square":
      draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
    elif obj.shape == "triangle":  # apex up; (x, y) is inside it
      draw.polygon([(x, y - h), (x + h, y + h), (x - h, y + h)], fill=fill)
    elif obj.shape == "diamond":
      draw.polygon([(x, y - h), (x + h, y), (x, y + h), (x - h, y)], fill=fill)
    elif obj.shape == "cross":
      arm = max(1, h // 3)
      draw.rectangle((x - h, y - arm, x + h, y + arm), fill=fill)
      draw.rectangle((x - arm, y - h, x + arm, y + h), fill=fill)
    else:
      raise ValueError(f"unknown shape {obj.shape!r}; expected one of {ALL_SHAPES}")
  return np.asarray(image, dtype=np.uint8)


def image_digest(image: np.ndarray) -> bytes:
  """A content hash of an image, stable across processes and platforms (unlike `hash`)."""
  header = repr(image.shape).encode()
  return hashlib.blake2b(header + np.ascontiguousarray(image).tobytes(), digest_size=16).digest()


def image_split(image: np.ndarray, eval_buckets: int) -> str:
  """'eval' for a fixed 1/eval_buckets of all possible images, 'train' for the rest.

  Deciding the split from the pixels (not from the sample index) is what guarantees that no
  eval image is ever seen in training, even though small scenes recur often.
  """
  bucket = int.from_bytes(image_digest(image)[:8], "little") % eval_buckets
  return "eval" if bucket == 0 else "train"


def ask_question(rng: np.random.Generator, objects: list[ShapeObject], cfg: ShapesConfig):
  """Draws a question about the scene; returns (kind, question, answer)."""
  kind = cfg.kinds[int(rng.integers(len(cfg.kinds)))]
  # Colours and shapes are unique within a scene, so naming either one picks out the target.
  target = objects[int(rng.integers(len(objects)))]
  question = _QUESTION_TEMPLATES[kind].format(color=target.color, shape=target.shape)
  answer = {
    "color": target.color,
    "shape": target.shape,
    "count": COUNT_WORDS[len(objects)],
    "position": target.position,
  }[kind]
  return kind, question, answer


def render_sample(
  rng: np.random.Generator, cfg: ShapesConfig | None = None, split: str | None = None
) -> dict[str, Any]:
  """Draws one sample.

  Args:
    rng: the only source of randomness; the same generator state gives the same sample.
    cfg: the set's config (default `ShapesConfig()`).
    split: if 'train' or 'eval', redraw until the image belongs to that split (`image_split`).

  Returns:
    dict with `image` (uint8 [H, W, 3]), `question`, `answer` (one word), `kind` (one of
    `QUESTION_KINDS`), `id` (hex content hash of the image) and `objects` (the scene, a list of
    `ShapeObject`, for checking and debugging).
  """
  cfg = cfg or ShapesConfig()
  if split not in (None, "train", "eval"):
    raise ValueError(f"split must be 'train', 'eval' or None, got {split!r}")
  while True:
    objects = sample_scene(rng, cfg)
    image = render_scene(objects, cfg.image_size)
    if split is None or image_split(image, cfg.eval_buckets) == split:
      break
  kind, question, answer = ask_question(rng, objects, cfg)
  return {
    "image": image,
    "question": question,
    "answer": answer,
    "kind": kind,
    "id": image_digest(image).hex(),
    "objects": objects,
  }


def describe_scene(objects: Iterable[ShapeObject], cfg: ShapesConfig) -> str:
  """A caption naming every object, in reading order of the cells: "red circle top-left ,
  blue square bottom-right" (for contrastive image-text training)."""
  order = {name: i for i, name in enumerate(position_names(cfg.grid))}
  return " , ".join(f"{o.color} {o.shape} {o.position}"
                    for o in sorted(objects, key=lambda o: order[o.position]))


def encode_caption(text: str, tokenizer, max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """`<s> caption </s>` right-padded to `max_length`: int32 `ids [L]` and `mask [L]`."""
  ids = [BOS_ID] + tokenizer.encode(text, add_special_tokens=False).ids + [EOS_ID]
  if UNK_ID in ids or len(ids) > max_length:
    raise ValueError(f"caption {text!r}: {len(ids)} tokens (max_length {max_length}) or words "
                     "outside the tokenizer's vocabulary")
  mask = np.zeros(max_length, np.int32)
  mask[:len(ids)] = 1
  return np.asarray(ids + [PAD_ID] * (max_length - len(ids)), np.int32), mask


# ------------------------------------------------------------------------------------------------
# Random-access dataset.

_SPLIT_IDS = {"train": 0, "eval": 1}
DEFAULT_SIZES = {"train": 100_000, "eval": 1_000}


class ShapesDataset:
  """Deterministic random-access shapes set; a grain `RandomAccessDataSource`.

  Sample i of a split is drawn from a generator seeded with (cfg.seed, split, i), so it is the
  same in every process and run, in any order of access, and workers need no shared state.
  """

  def __init__(
    self, cfg: ShapesConfig | None = None, split: str = "train", size: int | None = None
  ):
    if split not in _SPLIT_IDS:
      raise ValueError(f"split must be one of {tuple(_SPLIT_IDS)}, got {split!r}")
    self.cfg = cfg or ShapesConfig()
    self.split = split
    self.size = DEFAULT_SIZES[split] if size is None else int(size)
    if self.size < 0:
      raise ValueError(f"size must be >= 0, got {self.size}")

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index) -> dict[str, Any]:
    i = operator.index(index)  # accepts numpy integers, as grain passes them
    if not 0 <= i < self.size:
      raise IndexError(f"index {i} out of range for {self!r}")
    rng = np.random.default_rng([self.cfg.seed, _SPLIT_IDS[self.split], i])
    sample = render_sample(rng, self.cfg, split=self.split)
    sample["id"] = f"shapes/{self.split}/{i}"
    return sample

  def __repr__(self) -> str:
    return f"ShapesDataset(split={self.split!r}, size={self.size}, cfg={self.cfg})"


# ------------------------------------------------------------------------------------------------
# Scoring.


def chance_accuracy(samples: Iterable[dict[str, Any]]) -> float:
  """Accuracy of always answering the majority answer of each question kind.

  This is the best an image-blind model that knows the question kind can do on `samples`
  (it is measured on the same samples, so it is an upper bound on a fair blind guess).
  """
  counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  total = 0
  for sample in samples:
    counts[sample["kind"]][sample["answer"]] += 1
    total += 1
  if not total:
    raise ValueError("chance_accuracy needs at least one sample")
  return sum(max(c.values()) for c in counts.values()) / total


_SPECIAL_RE = re.compile(r"<pad>|<s>|</s>|<image>|<unk>")


def normalize_answer(text: str) -> str:
  """Lower case, special tokens dropped, spaces collapsed, trailing punctuation removed."""
  text = _SPECIAL_RE.sub(" ", text.lower())
  return " ".join(text.split()).strip(" .?!,")


def exact_match(pred_text: str, answer: str) -> bool:
  """Whether a decoded prediction is the answer, up to case, spaces and final punctuation."""
  return normalize_answer(pred_text) == normalize_answer(answer)


# ------------------------------------------------------------------------------------------------
# Tokenizer.

PAD, BOS, EOS, IMAGE, UNK = "<pad>", "<s>", "</s>", "<image>", "<unk>"
# Their ids are their positions here: <pad> is 0, so zero-padded batches are padded.
SHAPES_SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE, UNK)
PAD_ID, BOS_ID, EOS_ID, IMAGE_ID, UNK_ID = range(len(SHAPES_SPECIAL_TOKENS))

_TOKENIZER_DIR = ("assets", "shapes_tokenizer")
# Split off these punctuation marks (but not '-', which is part of "top-left").
_PUNCTUATION = "?.,!"


def vocabulary() -> list[str]:
  """The shipped tokenizer's tokens in id order: special tokens, then words sorted.

  It covers every word any `ShapesConfig` can produce (all palette colours, all shapes, all
  grids, all counts), so config variants need no new tokenizer.
  """
  words = set(_PUNCTUATION)
  for template in _QUESTION_TEMPLATES.values():
    words.update(template.replace("{color}", "").replace("{shape}", "").replace("?", "").split())
  words.update(PALETTE, ALL_SHAPES, COUNT_WORDS)
  for names in _POSITION_NAMES.values():
    words.update(names)
  return list(SHAPES_SPECIAL_TOKENS) + sorted(words)


def build_tokenizer():
  """Builds the word-level tokenizer from `vocabulary()` (see tools/make_shapes_tokenizer.py)."""
  from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

  vocab = {token: i for i, token in enumerate(vocabulary())}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tokenizer.normalizer = normalizers.Lowercase()
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [
      pre_tokenizers.WhitespaceSplit(),
      pre_tokenizers.Split(Regex(f"[{re.escape(_PUNCTUATION)}]"), behavior="isolated"),
    ]
  )
  # Registered as special so "<image>" is never split and decode(skip_special_tokens) drops them.
  tokenizer.add_special_tokens(list(SHAPES_SPECIAL_TOKENS))
  return tokenizer


def load_tokenizer():
  """The `tokenizers.Tokenizer` shipped in mmjax/assets/shapes_tokenizer/tokenizer.json."""
  from tokenizers import Tokenizer

  # One joinpath per level: namespace-package paths accept only one name at a time.
  path = importlib.resources.files("mmjax")
  for name in (*_TOKENIZER_DIR, "tokenizer.json"):
    path = path.joinpath(name)
  return Tokenizer.from_str(path.read_text(encoding="utf-8"))


def tokenizer_config() -> dict:
  """The shipped `tokenizer_config.json` (special tokens), as a dict."""
  path = importlib.resources.files("mmjax")
  for name in (*_TOKENIZER_DIR, "tokenizer_config.json"):
    path = path.joinpath(name)
  return json.loads(path.read_text(encoding="utf-8"))


def chat_template(image_first: bool = True) -> str:
  """A jinja chat template rendering the layout `encode_example` trains on (`<s>`, the question
  and one `<image>` marker per image, in `image_first` order, then the answer and `</s>`), for
  string or structured (transformers processor) user contents; the processor expands each marker
  to the model's tokens per image."""
  text = ("{%- if m['content'] is string -%}{{- m['content'] -}}{%- else -%}"
          "{%- for part in m['content'] if part['type'] == 'text' -%}{{- part['text'] -}}"
          "{%- endfor -%}{%- endif -%}")
  images = ("{%- if m['content'] is not string -%}"
            "{%- for part in m['content'] if part['type'] == 'image' -%}{{- '" + IMAGE + "' -}}"
            "{%- endfor -%}{%- endif -%}")
  user = images + text if image_first else text + images
  return ("{{- '" + BOS + "' -}}{%- for m in messages -%}"
          "{%- if m['role'] == 'user' -%}" + user +
          "{%- elif m['role'] == 'assistant' -%}{{- m['content'] + '" + EOS + "' -}}{%- endif -%}"
          "{%- endfor -%}")


def encode_example(
  sample: dict[str, Any], tokenizer, num_image_tokens: int, max_length: int | None = None,
  image_first: bool = True,
) -> dict[str, np.ndarray]:
  """Tokenizes a sample for training without the general data pipeline.

  Layout: `<s> <image>*num_image_tokens question-tokens answer-tokens </s>`, then `<pad>` up to
  `max_length` if given; with `image_first=False` the question comes before the image
  (`<s> question-tokens <image>*n answer-tokens </s>`), so image tokens can attend to it. `loss_mask[t]` is 1 where `input_ids[t]` is a target (the answer and
  `</s>`): a trainer predicting token t from position t-1 uses `loss_mask[1:]` with
  `input_ids[1:]`.

  Returns:
    dict with int32 `input_ids` [T], int32 `loss_mask` [T], int32 scalar `prompt_length` (the
    number of tokens to feed before generating the answer) and float32 `image` [H, W, 3] in
    [0, 1].
  """
  question = tokenizer.encode(sample["question"], add_special_tokens=False).ids
  answer = tokenizer.encode(sample["answer"], add_special_tokens=False).ids
  if UNK_ID in question or UNK_ID in answer:
    raise ValueError(
      f"sample {sample.get('id')!r}: words outside the tokenizer's vocabulary in "
      f"question {sample['question']!r} or answer {sample['answer']!r}"
    )
  image = [IMAGE_ID] * num_image_tokens
  prompt = [BOS_ID] + (image + question if image_first else question + image)
  target = answer + [EOS_ID]
  input_ids = prompt + target
  loss_mask = [0] * len(prompt) + [1] * len(target)
  if max_length is not None:
    if len(input_ids) > max_length:
      raise ValueError(
        f"sample {sample.get('id')!r}: {len(input_ids)} tokens exceed max_length {max_length}"
      )
    padding = max_length - len(input_ids)
    input_ids += [PAD_ID] * padding
    loss_mask += [0] * padding
  return {
    "input_ids": np.asarray(input_ids, np.int32),
    "loss_mask": np.asarray(loss_mask, np.int32),
    "prompt_length": np.int32(len(prompt)),
    "image": np.asarray(sample["image"], np.float32) / 255.0,
  }
