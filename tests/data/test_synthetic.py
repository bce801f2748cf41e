"""Tests for the procedural shapes set, its tokenizer and its encoding helpers."""

import collections
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mmjax.data import synthetic
from mmjax.data.synthetic import ShapesConfig, ShapesDataset


@pytest.fixture(scope="module")
def tokenizer():
  return synthetic.load_tokenizer()


@pytest.fixture(scope="module")
def train_samples():
  ds = ShapesDataset(split="train", size=2000)
  return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def eval_samples():
  ds = ShapesDataset(split="eval", size=500)
  return [ds[i] for i in range(len(ds))]


def _fingerprint(sample):
  return (sample["image"].tobytes(), sample["question"], sample["answer"], sample["kind"])


# ---------------------------------------------------------------------------------- determinism


def test_samples_are_deterministic_and_order_free():
  a = ShapesDataset(split="train", size=50)
  b = ShapesDataset(split="train", size=50)
  forward = [_fingerprint(a[i]) for i in range(50)]
  backward = [_fingerprint(b[i]) for i in reversed(range(50))][::-1]
  assert forward == backward
  assert a[np.int64(7)]["id"] == "shapes/train/7"  # grain passes numpy integers


def test_samples_are_identical_across_processes():
  # A fresh interpreter (with its own hash seed) must draw the same sample.
  code = (
    "from mmjax.data.synthetic import ShapesDataset, image_digest;"
    "s = ShapesDataset(split='eval')[123];"
    "print(image_digest(s['image']).hex(), s['question'], s['answer'], sep='|')"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True,
    env=dict(os.environ, PYTHONHASHSEED="12345", JAX_PLATFORMS="cpu"),
    cwd=pathlib.Path(synthetic.__file__).parents[2],  # the checkout, when not installed
  ).stdout.strip()
  here = ShapesDataset(split="eval")[123]
  assert out == "|".join(
    [synthetic.image_digest(here["image"]).hex(), here["question"], here["answer"]]
  )


def test_seed_changes_samples():
  a = ShapesDataset(ShapesConfig(seed=0), size=20)
  b = ShapesDataset(ShapesConfig(seed=1), size=20)
  assert [_fingerprint(a[i]) for i in range(20)] != [_fingerprint(b[i]) for i in range(20)]


def test_index_out_of_range():
  ds = ShapesDataset(split="eval", size=3)
  assert len(ds) == 3
  with pytest.raises(IndexError):
    ds[3]
  with pytest.raises(IndexError):
    ds[-1]


def test_usable_as_grain_source():
  import grain.python as grain

  ds = grain.MapDataset.source(ShapesDataset(split="eval", size=10))
  assert len(ds) == 10 and ds[4]["id"] == "shapes/eval/4"


# ----------------------------------------------------------------------------------- the splits


def test_train_and_eval_never_share_an_image(train_samples, eval_samples):
  train_images = {s["image"].tobytes() for s in train_samples}
  assert not any(s["image"].tobytes() in train_images for s in eval_samples)
  # The guarantee is structural: each split only holds images of its own hash bucket.
  buckets = ShapesConfig().eval_buckets
  assert all(synthetic.image_split(s["image"], buckets) == "train" for s in train_samples)
  assert all(synthetic.image_split(s["image"], buckets) == "eval" for s in eval_samples)


# ------------------------------------------------------------------------- questions and answers


def test_every_question_has_exactly_one_answer(train_samples):
  for s in train_samples:
    objects, kind, answer = s["objects"], s["kind"], s["answer"]
    assert len({o.color for o in objects}) == len(objects)
    assert len({o.shape for o in objects}) == len(objects)
    assert len({o.position for o in objects}) == len(objects)
    if kind == "count":
      assert answer == synthetic.COUNT_WORDS[len(objects)]
      continue
    # The question names exactly one object, and the answer is that object's attribute.
    q = s["question"]
    named = [o for o in objects if f" {o.color} " in q or f" {o.shape}?" in q]
    if kind == "position":
      named = [o for o in objects if f"{o.color} {o.shape}?" in q]
    assert len(named) == 1, q
    assert getattr(named[0], kind) == answer  # ShapeObject fields are named after the kinds


def test_all_kinds_and_answers_occur(train_samples):
  cfg = ShapesConfig()
  seen = collections.defaultdict(set)
  for s in train_samples:
    seen[s["kind"]].add(s["answer"])
  assert set(seen) == set(cfg.kinds)
  for kind in cfg.kinds:
    assert seen[kind] == set(cfg.answers(kind))


def test_chance_accuracy_is_at_most_30_percent(train_samples, eval_samples):
  assert synthetic.chance_accuracy(train_samples) <= 0.30
  assert synthetic.chance_accuracy(train_samples + eval_samples) <= 0.30


def test_chance_accuracy_is_per_kind_majority():
  samples = [
    {"kind": "color", "answer": "red"},
    {"kind": "color", "answer": "red"},
    {"kind": "color", "answer": "blue"},
    {"kind": "count", "answer": "one"},
  ]
  assert synthetic.chance_accuracy(samples) == pytest.approx(3 / 4)
  with pytest.raises(ValueError):
    synthetic.chance_accuracy([])


def test_exact_match():
  assert synthetic.exact_match("red", "red")
  assert synthetic.exact_match(" Red. </s>", "red")
  assert synthetic.exact_match("top-left</s><pad>", "top-left")
  assert not synthetic.exact_match("the red", "red")
  assert not synthetic.exact_match("top", "top-left")
  assert not synthetic.exact_match("", "red")


# ------------------------------------------------------------------------------------ rendering


def test_rendering_matches_the_scene(train_samples):
  background = np.array(synthetic.BACKGROUND, np.uint8)
  cell = ShapesConfig().cell_size
  for s in train_samples[:300]:
    image = s["image"]
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    mask = np.ones(image.shape[:2], bool)  # pixels outside every object's box
    for o in s["objects"]:
      # The centre pixel has the object's colour ...
      np.testing.assert_array_equal(image[o.cy, o.cx], synthetic.PALETTE[o.color])
      # ... and the object stays inside its own cell.
      box = slice(o.cy - o.half, o.cy + o.half + 1), slice(o.cx - o.half, o.cx + o.half + 1)
      assert (o.cy - o.half) // cell == (o.cy + o.half) // cell
      assert (o.cx - o.half) // cell == (o.cx + o.half) // cell
      mask[box] = False
    assert (image[mask] == background).all()
    # No anti-aliasing: exactly the background and the objects' colours appear.
    colours = {tuple(p) for p in image.reshape(-1, 3)}
    expected = {tuple(synthetic.PALETTE[o.color]) for o in s["objects"]}
    assert colours == expected | {synthetic.BACKGROUND}


def test_every_shape_renders_distinctly():
  images = [
    synthetic.render_scene([synthetic.ShapeObject("red", shape, "center", 8, 8, 6)], 16)
    for shape in synthetic.ALL_SHAPES
  ]
  assert len({im.tobytes() for im in images}) == len(synthetic.ALL_SHAPES)


def test_config_variants():
  cfg = ShapesConfig(image_size=48, grid=3, colors=tuple(synthetic.PALETTE),
                     shapes=synthetic.ALL_SHAPES, max_objects=5, jitter=2)
  s = synthetic.render_sample(np.random.default_rng(0), cfg)
  assert s["image"].shape == (48, 48, 3)
  assert s["answer"] in cfg.answers(s["kind"])


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(image_size=33),
    dict(grid=4),
    dict(colors=("red", "mauve")),
    dict(shapes=("circle", "circle")),
    dict(max_objects=5),  # only four cells
    dict(kinds=("colour",)),
    dict(image_size=8),  # cells too small to draw in
    dict(eval_buckets=1),
    dict(size_range=-1),
  ],
)
def test_invalid_configs_are_rejected(kwargs):
  with pytest.raises(ValueError):
    ShapesConfig(**kwargs)


# ------------------------------------------------------------------------------------ tokenizer


def test_shipped_tokenizer_matches_its_builder(tokenizer):
  # tools/make_shapes_tokenizer.py must be re-run when the vocabulary changes.
  assert tokenizer.get_vocab() == synthetic.build_tokenizer().get_vocab()
  for i, token in enumerate(synthetic.SHAPES_SPECIAL_TOKENS):
    assert tokenizer.token_to_id(token) == i
  assert tokenizer.token_to_id("<pad>") == synthetic.PAD_ID == 0


def test_shipped_tokenizer_config_is_valid():
  import importlib.resources

  path = importlib.resources.files("mmjax")
  for name in ("assets", "shapes_tokenizer", "tokenizer_config.json"):
    path = path.joinpath(name)
  config = json.loads(path.read_text())
  assert config["pad_token"] == "<pad>" and config["additional_special_tokens"] == ["<image>"]


def test_every_word_is_in_vocabulary_and_answers_are_one_token(tokenizer, train_samples):
  wide = ShapesConfig(image_size=48, grid=3, colors=tuple(synthetic.PALETTE),
                      shapes=synthetic.ALL_SHAPES, max_objects=5)
  for cfg in (ShapesConfig(), wide):
    for kind in cfg.kinds:
      for answer in cfg.answers(kind):
        ids = tokenizer.encode(answer, add_special_tokens=False).ids
        assert len(ids) == 1 and ids[0] != synthetic.UNK_ID, answer
  for s in train_samples:
    ids = tokenizer.encode(s["question"], add_special_tokens=False).ids
    assert synthetic.UNK_ID not in ids, s["question"]


def test_encode_example_layout(tokenizer, train_samples):
  sample = next(s for s in train_samples if s["kind"] == "position")
  ex = synthetic.encode_example(sample, tokenizer, num_image_tokens=4)
  ids, mask = ex["input_ids"], ex["loss_mask"]
  assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == mask.shape
  question_len = len(tokenizer.encode(sample["question"], add_special_tokens=False).ids)
  prompt_len = 1 + 4 + question_len
  assert int(ex["prompt_length"]) == prompt_len
  assert ids[0] == synthetic.BOS_ID and (ids[1:5] == synthetic.IMAGE_ID).all()
  assert ids[-1] == synthetic.EOS_ID and len(ids) == prompt_len + 2
  assert mask.tolist() == [0] * prompt_len + [1, 1]
  assert tokenizer.decode(ids[mask == 1].tolist()) == sample["answer"]
  assert synthetic.exact_match(tokenizer.decode(ids[prompt_len:].tolist()), sample["answer"])
  assert ex["image"].dtype == np.float32 and 0.0 <= ex["image"].min() <= ex["image"].max() <= 1.0


def test_encode_example_question_first(tokenizer, train_samples):
  sample = train_samples[0]
  first = synthetic.encode_example(sample, tokenizer, num_image_tokens=4)
  later = synthetic.encode_example(sample, tokenizer, num_image_tokens=4, image_first=False)
  n = int(first["prompt_length"])
  assert int(later["prompt_length"]) == n and (later["loss_mask"] == first["loss_mask"]).all()
  assert (later["input_ids"][n - 4:n] == synthetic.IMAGE_ID).all()
  assert (later["input_ids"][1:n - 4] == first["input_ids"][5:n]).all()
  assert (later["input_ids"][n:] == first["input_ids"][n:]).all()


def test_one_size_and_no_jitter_draws_every_object_alike():
  cfg = ShapesConfig(size_range=0, jitter=0)
  rng = np.random.default_rng(0)
  objects = [o for _ in range(50) for o in synthetic.render_sample(rng, cfg)["objects"]]
  assert {o.half for o in objects} == {cfg.max_half_size}
  cell = cfg.cell_size
  assert all((o.cx % cell, o.cy % cell) == (cell // 2, cell // 2) for o in objects)


def test_encode_example_pads_and_checks_length(tokenizer, train_samples):
  sample = train_samples[0]
  ex = synthetic.encode_example(sample, tokenizer, num_image_tokens=4, max_length=24)
  n = len(synthetic.encode_example(sample, tokenizer, num_image_tokens=4)["input_ids"])
  assert ex["input_ids"].shape == (24,) and (ex["input_ids"][n:] == synthetic.PAD_ID).all()
  assert (ex["loss_mask"][n:] == 0).all() and ex["loss_mask"].sum() == 2
  with pytest.raises(ValueError, match="max_length"):
    synthetic.encode_example(sample, tokenizer, num_image_tokens=4, max_length=8)
  with pytest.raises(ValueError, match="vocabulary"):
    synthetic.encode_example(dict(sample, answer="mauve"), tokenizer, num_image_tokens=4)
