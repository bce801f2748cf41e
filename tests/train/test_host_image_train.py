"""LLaVA-NeXT (AnyRes tiles), LLaVA-OneVision (AnyRes shrunk past anyres_max_N alone, one view
an image among several), Pixtral (native resolution, packed tower; Mistral3: and the 2x2 patch
merger) and Fuyu (raw patches)
through `mmjax train`'s trainer and data iterator on a JSON dataset of one- and two-image and text-only samples
(OneVision: and two videos, their frames tiles of the row), on 8 fake
devices: the loss falls, the frozen parts stay bit for bit, and the train forward of a packed
pipeline batch gives, sample by sample, the logits of the parity-tested inference forward
(`forward_from_hf_inputs`) on that sample's arrays laid out as the family's processor lays them.
One compiled trainer per family, shared by the tests."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from hf_models import record
from mmjax.data.synthetic_video import render_clip
from mmjax.data.tokenizer import Tokenizer, train_tiny_tokenizer
from mmjax.models.registry import family_named
from mmjax.train.cli import load_config
from mmjax.train import data as train_data
from mmjax.train.loop import Trainer
from mmjax.train.step import forward

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny")
FAMILIES = ("llava_next", "llava_onevision", "fuyu", "pixtral", "mistral3")
# Parts frozen in the test where the tiny config trains every part (Fuyu: the patch Linear).
TRAINABLE = {"fuyu": ("decoder",)}
IMAGE_TOKENS = {"llava_next": "<image>", "llava_onevision": "<image>", "pixtral": "[IMG]",
                "mistral3": "[IMG]", "fuyu": "|SPEAKER|"}
SPECIALS = ("<unk>", "<s>", "</s>", "<image>", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "|SPEAKER|",
            "|NEWLINE|", "<video>")
VIDEO_FAMILIES = ("llava_onevision",)  # their data adds two video samples
CORPUS = ["A chat between a curious user and an artificial intelligence assistant. USER: "
          "ASSISTANT: What is in the picture? A red square on a blue background. Two shapes, "
          "one green."] * 20
STEPS = 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """(json path, image root, tokenizer dir, json path with videos): one- and two-image samples of
  different sizes and aspect ratios, and text-only ones; the second set adds two moving-shape
  videos of 8 frames (directories of PNGs, 32 and 24 px), a `<video>` each."""
  tmp = tmp_path_factory.mktemp("host_image_data")
  tok_dir = tmp / "tok"
  tok_dir.mkdir()
  train_tiny_tokenizer(CORPUS, special_tokens=SPECIALS, vocab_size=200).save(
      str(tok_dir / "tokenizer.json"))
  root = tmp / "images"
  root.mkdir()
  rng = np.random.default_rng(0)
  sizes = [(30, 50), (64, 40), (40, 40), (50, 26), (48, 64), (32, 32)]
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
  records = []
  for i in range(12):
    images = [] if i % 4 == 3 else [f"{i % 6}.png"] + ([f"{(i + 1) % 6}.png"] if i % 4 == 1 else [])
    question = "<image>\n" * len(images) + "What is in the picture?"
    answer = "A red square on a blue background." if i % 2 else "Two shapes, one green."
    records.append({"id": f"s{i}", "images": images, "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": answer}]})
  path = tmp / "data.json"
  path.write_text(json.dumps(records))
  videos = []
  for i, size in enumerate((32, 24)):
    clip, question, answer = render_clip(rng, size=size, frames=8)
    (root / f"clip{i}").mkdir()
    for f, frame in enumerate(clip):
      Image.fromarray(frame).save(root / f"clip{i}" / f"{f:02d}.png")
    videos.append({"id": f"v{i}", "video": f"clip{i}", "conversations": [
        {"from": "human", "value": f"<video>\n{question}"}, {"from": "gpt", "value": answer}]})
  video_path = tmp / "data_video.json"
  video_path.write_text(json.dumps(records + videos))
  return str(path), str(root), str(tok_dir), str(video_path)


def config(family, dataset):
  path, root, tok_dir, video_path = dataset
  cfg = load_config(os.path.join(TINY, f"{family}.py"))
  cfg.model.image_token_id = Tokenizer.load(tok_dir).token_to_id(IMAGE_TOKENS[family])
  if family in VIDEO_FAMILIES:
    cfg.model.video_token_id = Tokenizer.load(tok_dir).token_to_id("<video>")
    path = video_path
  # The plain template (images, then the answer): a short text beside up to 48 image tokens.
  cfg.data.update(tokenizer=tok_dir, sources=[dict(path=path, image_root=root)], template="plain")
  cfg.optim.update(lr=3e-3, warmup_steps=1)
  cfg.train.update(steps=STEPS, log_every=1)
  if family in TRAINABLE:
    cfg.train.trainable = TRAINABLE[family]
  return cfg


def _paths(tree):
  return {"/".join(k.key for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module", params=FAMILIES)
def run(request, dataset):
  """The family's tiny config trained for a few steps by `mmjax train`'s trainer (8 devices)
  on `mmjax train`'s data iterator (the pipeline, the family's data checks): its losses, the
  parameters it started from and ended with, and the first batch (host arrays)."""
  assert jax.device_count() == 8
  family = request.param
  cfg = config(family, dataset)
  trainer = Trainer.build(cfg)
  state = trainer.init()
  before = jax.device_get(state.all_params())
  data = train_data.make_train_iterator(cfg.data, trainer.model_config, cfg.seed)
  batches, losses = [], []
  for _ in range(STEPS):
    batches.append(next(data))
    with jax.set_mesh(trainer.mesh):
      state, metrics = trainer.step_fn(state, train_data.to_global(batches[-1], trainer.mesh))
    losses.append(float(metrics["loss"]))
  return dict(family=family, cfg=cfg, trainer=trainer, losses=losses, before=before,
              after=jax.device_get(state.all_params()), skipped=int(state.skipped),
              batch=batches[0], stats=data.stats())


def test_loss_falls_and_frozen_parts_stay(run):
  losses = run["losses"]
  print(run["family"], "losses", losses)  # the report's figures
  assert run["skipped"] == 0 and not any(run["stats"]["skipped"].values()), run["stats"]
  assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.1, losses
  trainable = tuple(run["cfg"].train.trainable)
  before, after = _paths(run["before"]), _paths(run["after"])
  assert sorted(before) == sorted(after)
  for path, value in before.items():
    moved = bool(np.any(after[path] != value))
    assert moved == path.startswith(trainable), path  # frozen parts bit for bit


def _row_media(batch, b):
  """Row b's tiles and, per media slot: tiles, sizes, segment, first tile, whether a video."""
  rows = batch["input_ids"].shape[0]
  slots = batch["pixel_values"].shape[0] // rows
  m = batch["image_sizes"].shape[0] // rows
  counts = batch["image_tiles"][b * m:(b + 1) * m]
  video = batch.get("image_is_video", np.zeros_like(batch["image_tiles"]))[b * m:(b + 1) * m]
  return (batch["pixel_values"][b * slots:(b + 1) * slots], counts,
          batch["image_sizes"][b * m:(b + 1) * m], batch["image_segment_ids"][b * m:(b + 1) * m],
          np.concatenate([[0], np.cumsum(counts)]), video.astype(bool))


def _llava_next_samples(batch, b):
  """Row b's samples as LlavaNextProcessor lays them out: (token mask, processor arrays,
  images); a video slot's frames as LlavaOnevisionProcessor's `pixel_values_videos [V, F, C, H,
  W]`."""
  tiles, counts, sizes, image_segments, first, video = _row_media(batch, b)
  for s in range(1, batch["segment_ids"][b].max() + 1):
    tokens = batch["segment_ids"][b] == s
    sample = {"input_ids": batch["input_ids"][b][tokens][None]}
    clips = [tiles[first[i]:first[i + 1]] for i in np.flatnonzero((image_segments == s) & video)]
    if clips:
      sample["pixel_values_videos"] = np.transpose(np.stack(clips), (0, 1, 4, 2, 3))
    mine = np.flatnonzero((image_segments == s) & ~video)
    if len(mine):
      most = int(counts[mine].max())
      pixels = np.zeros((len(mine), most, *tiles.shape[1:]), np.float32)  # [I, P, H, W, C]
      for j, i in enumerate(mine):
        pixels[j, :counts[i]] = tiles[first[i]:first[i + 1]]
      sample.update(pixel_values=np.transpose(pixels, (0, 1, 4, 2, 3)), image_sizes=sizes[mine])
    yield tokens, sample, len(mine)


def _onevision_samples(batch, b):
  """Row b's samples as LlavaOnevisionProcessor lays them out: LLaVA-NeXT's arrays and the
  sample's image count (`batch_num_images`: several images take one view each)."""
  for tokens, sample, images in _llava_next_samples(batch, b):
    if images:
      sample["batch_num_images"] = np.asarray([images])
    yield tokens, sample, images


def _fuyu_samples(batch, b):
  """Row b's samples as FuyuProcessor gives them: their patches `image_patches [P, F]`."""
  rows = batch["input_ids"].shape[0]
  slots = batch["pixel_values"].shape[0] // rows
  m = batch["image_sizes"].shape[0] // rows
  patches = batch["pixel_values"][b * slots:(b + 1) * slots]
  counts = batch["image_tiles"][b * m:(b + 1) * m]
  image_segments = batch["image_segment_ids"][b * m:(b + 1) * m]
  first = np.concatenate([[0], np.cumsum(counts)])
  for s in range(1, batch["segment_ids"][b].max() + 1):
    tokens = batch["segment_ids"][b] == s
    sample = {"input_ids": batch["input_ids"][b][tokens][None]}
    mine = np.flatnonzero(image_segments == s)
    if len(mine):
      sample["image_patches"] = patches[first[mine[0]]:first[mine[-1] + 1]]
    yield tokens, sample, len(mine)


def _pixtral_samples(batch, b):
  """Row b's samples as PixtralProcessor gives them: each image's patches put back in place,
  `pixel_values [I, C, H, W]` padded to the largest, and its (resized) `image_sizes`."""
  rows = batch["input_ids"].shape[0]
  slots = batch["pixel_values"].shape[0] // rows
  m = batch["image_sizes"].shape[0] // rows
  patches = batch["pixel_values"][b * slots:(b + 1) * slots]  # [S, C, P, P]
  positions = batch["patch_positions"][b * slots:(b + 1) * slots]
  counts = batch["image_tiles"][b * m:(b + 1) * m]
  image_segments = batch["image_segment_ids"][b * m:(b + 1) * m]
  first = np.concatenate([[0], np.cumsum(counts)])
  c, p = patches.shape[1], patches.shape[-1]
  for s in range(1, batch["segment_ids"][b].max() + 1):
    tokens = batch["segment_ids"][b] == s
    sample = {"input_ids": batch["input_ids"][b][tokens][None]}
    mine = np.flatnonzero(image_segments == s)
    if len(mine):
      grids = [positions[first[i]:first[i + 1]].max(0) + 1 for i in mine]  # (rows, cols)
      h, w = max(g[0] for g in grids) * p, max(g[1] for g in grids) * p
      pixels = np.zeros((len(mine), c, h, w), np.float32)
      for j, i in enumerate(mine):
        for patch, (r, q) in zip(patches[first[i]:first[i + 1]], positions[first[i]:first[i + 1]]):
          pixels[j, :, r * p:(r + 1) * p, q * p:(q + 1) * p] = patch
      sample.update(pixel_values=pixels, image_sizes=np.asarray(grids) * p)
    yield tokens, sample, len(mine)


SAMPLES = {"llava_next": _llava_next_samples, "llava_onevision": _onevision_samples,
           "fuyu": _fuyu_samples,
           "pixtral": _pixtral_samples, "mistral3": _pixtral_samples}


def _processor_batch(samples):
  """Samples (processor arrays of one row each) -> one processor batch: `input_ids` right-padded
  with an `attention_mask`, images in row order (`pixel_values` zero-padded to the largest, as
  the processors pad them)."""
  length = max(x["input_ids"].shape[1] for x in samples)
  ids = np.zeros((len(samples), length), np.int32)
  mask = np.zeros_like(ids)
  for i, x in enumerate(samples):
    ids[i, :x["input_ids"].shape[1]], mask[i, :x["input_ids"].shape[1]] = x["input_ids"][0], 1
  out = {"input_ids": ids, "attention_mask": mask}
  for key in ("image_sizes", "image_patches", "batch_num_images", "pixel_values_videos"):
    if any(key in x for x in samples):
      out[key] = np.concatenate([x[key] for x in samples if key in x])
  pixels = [x["pixel_values"] for x in samples if "pixel_values" in x]
  if pixels:
    shape = np.max([p.shape[1:] for p in pixels], axis=0)
    out["pixel_values"] = np.concatenate([np.pad(p, [(0, 0)] + [(0, m - n) for m, n in zip(
        shape, p.shape[1:])]) for p in pixels])
  return out


def test_train_forward_equals_the_inference_forward_per_sample(run):
  """The logits of every packed sample of a batch (text-only ones, ones with an image, with two:
  their tiles or patches start past others' in the row) equal the inference forward's on those
  samples as the rows of one processor batch, their images as the family's processor gives
  them."""
  family, trainer, params, batch = run["family"], run["trainer"], run["after"], run["batch"]
  logits = np.asarray(jax.jit(lambda p, b: forward(trainer.module, p, b))(
      params, jax.device_put(batch, jax.devices()[0])))
  chosen, counts = [], set()  # (row, token mask, processor arrays) of every sample
  for b in range(batch["input_ids"].shape[0]):
    for tokens, sample, images in SAMPLES[family](batch, b):
      chosen.append((b, tokens, sample))
      counts.add(images)
  assert sorted(counts) == [0, 1, 2], sorted(counts)
  ref = family_named(family).forward_from_hf_inputs(  # one op-by-op call: a few seconds
      trainer.model_config, params, _processor_batch([x for _, _, x in chosen]))
  worst = max(float(np.abs(logits[b][tokens] - ref[i, :tokens.sum()]).max())
              for i, (b, tokens, _) in enumerate(chosen))
  record(f"host_images/train_forward_vs_forward_{family}", worst)
  print(family, "worst logits diff", worst)
  assert worst <= 1e-5, worst
  videos = [i for i, (_, _, x) in enumerate(chosen) if "pixel_values_videos" in x]
  assert bool(videos) == (family in VIDEO_FAMILIES), videos
  if videos:  # the video samples alone, and proof that their frames move their logits
    blank = np.asarray(jax.jit(lambda p, b: forward(trainer.module, p, b))(params, jax.device_put(
        dict(batch, pixel_values=0 * batch["pixel_values"]), jax.devices()[0])))
    worst_video = max(float(np.abs(logits[b][tokens] - ref[i, :tokens.sum()]).max())
                      for i, (b, tokens, _) in enumerate(chosen) if i in videos)
    effect = min(float(np.abs(blank[b][tokens] - ref[i, :tokens.sum()]).max())
                 for i, (b, tokens, _) in enumerate(chosen) if i in videos)
    record(f"host_images/video_train_forward_vs_forward_{family}", worst_video)
    print(family, len(videos), "video samples, worst logits diff", worst_video, "frames' effect",
          effect)
    assert worst_video <= 1e-5 and effect > 100 * worst_video, (worst_video, effect)


def test_abstract_batch_is_the_pipelines_and_flops_count_real_images(run):
  """`mmjax aot`'s abstract batch has the pipeline batch's arrays (names, shapes, dtypes); the
  analytic FLOPs of the batch are positive and at most the abstract batch's (every slot used)."""
  fam, trainer, batch = family_named(run["family"]), run["trainer"], run["batch"]
  config, params = trainer.model_config, run["before"]
  abstract = fam.abstract_train_batch(config, run["cfg"].data, jax.ShapeDtypeStruct)
  for key, struct in abstract.items():
    assert (batch[key].shape, batch[key].dtype) == (struct.shape, struct.dtype), key
  trainable = tuple(run["cfg"].train.trainable)
  flops = fam.train_flops(config, params, batch, trainable)
  text = fam.train_flops(config, {"decoder": params["decoder"]}, batch, trainable)
  bound = fam.aot_train_flops(config, params, abstract, trainable)
  print(run["family"], "model FLOPs", flops, "text only", text, "abstract bound", bound)
  assert text < flops <= bound
