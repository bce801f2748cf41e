"""Training Qwen2-VL / Qwen2.5-VL / Qwen3-VL from `configs/tiny/qwen2_vl.py` on a JSON dataset
through the packed pipeline (flattened patches, M-RoPE positions): the loss falls, and the train
forward of a packed batch gives, sample by sample, the logits of the parity-tested forward on
that sample's processor-style arrays."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from hf_models import TOLERANCE, record
from mmjax.data import pipeline
from mmjax.data.tokenizer import Tokenizer, train_tiny_tokenizer
from mmjax.encoders.qwen_vit_inputs import PAD_SEGMENT, packed_vision_inputs, row_vision_inputs
from mmjax.models.qwen_vl import forward_from_hf_inputs
from mmjax.train import data as train_data
from mmjax.train.cli import load_config
from mmjax.train.loop import Trainer
from mmjax.train.step import forward

KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
TINY = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny", "qwen2_vl.py")
SPECIALS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
CORPUS = ["system You are a helpful assistant. user assistant",
          "What is in the picture? A red square on a blue background. Two shapes, one green."] * 20


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """(json path, image root, tokenizer dir): one- and two-image samples of different sizes, and
  text-only ones."""
  tmp = tmp_path_factory.mktemp("qwen_vl_data")
  tok_dir = tmp / "tok"
  tok_dir.mkdir()
  train_tiny_tokenizer(CORPUS, special_tokens=SPECIALS, vocab_size=200).save(
      str(tok_dir / "tokenizer.json"))
  root = tmp / "images"
  root.mkdir()
  rng = np.random.default_rng(0)
  sizes = [(32, 48), (64, 40), (40, 40), (56, 32), (48, 64), (32, 32)]
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
  return str(path), str(root), str(tok_dir)


def config(kind, dataset):
  path, root, tok_dir = dataset
  cfg = load_config(f"{TINY}:{kind}")
  tok = Tokenizer.load(tok_dir)
  cfg.model.image_token_id = tok.token_to_id("<|image_pad|>")
  cfg.model.video_token_id = tok.token_to_id("<|video_pad|>")
  cfg.data.update(tokenizer=tok_dir, sources=[dict(path=path, image_root=root)], max_length=256,
                  max_tiles=192)
  cfg.optim.warmup_steps = 1
  return cfg


def host_batch(cfg, skip=0):
  it = pipeline.make_iterator(pipeline.DataConfig.from_dict(cfg.data))
  for _ in range(skip):
    next(it)
  return next(it)


@pytest.mark.parametrize("options", [{}, dict(window=1), dict(window=2), dict(pos_embed_side=8)])
def test_row_vision_inputs_equal_the_host_arrays(options):
  """Under jit, per row (images from slot 0, zero grids for unused slots): the arrays of
  `packed_vision_inputs`; segments and windows group the same patches."""
  rows, slots = [[(1, 4, 6), (2, 2, 2), (1, 8, 4)], [(3, 4, 4)], []], 140
  grid = np.zeros((len(rows), 3, 3), np.int32)
  for b, row in enumerate(rows[:2]):
    grid[b, :len(row)] = row
  got = jax.jit(lambda g: row_vision_inputs(g, slots, merge_size=2, **options))(grid)
  assert (np.asarray(got["segment_ids"][2]) == PAD_SEGMENT).all()
  for b, row in enumerate(rows[:2]):
    ref = packed_vision_inputs(row, merge_size=2, num_patches=slots, **options)
    assert sorted(got) == sorted(ref)
    for key, expected in ref.items():
      ours = np.asarray(got[key][b])
      if key in ("segment_ids", "window_ids"):
        same = lambda ids: ids[:, None] == ids[None]  # [S, S] same group
        np.testing.assert_array_equal(same(ours), same(expected))
        np.testing.assert_array_equal(ours == PAD_SEGMENT, expected == PAD_SEGMENT)
      else:
        assert ours.dtype == expected.dtype, key
        np.testing.assert_array_equal(ours, expected, err_msg=key)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_config_trains_on_a_json_dataset(kind, dataset):
  cfg = config(kind, dataset)
  trainer = Trainer.build(cfg, jax.devices())  # 8 fake devices: rows (and their patches) split
  state = trainer.init()
  batch = host_batch(cfg)
  assert batch["image_mask"].sum() > 0 and (batch["segment_ids"].max(1) > 1).any()  # packed
  losses = []
  for _ in range(6):  # a repeated batch
    with jax.set_mesh(trainer.mesh):
      state, metrics = trainer.step_fn(state, train_data.to_global(batch, trainer.mesh))
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and int(state.skipped) == 0, losses
  assert losses[-1] < losses[0] - 0.1, losses
  assert int(state.step) == 6


@pytest.mark.parametrize("kind", KINDS)
def test_train_forward_equals_the_parity_tested_forward_per_sample(kind, dataset):
  """The logits of each packed sample (of the first rows: one with two images, a text-only one)
  equal `forward_from_hf_inputs` on that sample alone (its tokens, patches and grids as a Qwen
  processor gives them; positions from `get_rope_index`)."""
  cfg = config(kind, dataset)
  trainer = Trainer.build(cfg, jax.devices()[:1])
  params = trainer.init().all_params()
  params = jax.tree.map(  # weights large enough that positions and images move the logits
      lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape, x.dtype), params)
  batch = host_batch(cfg, skip=1)
  train_logits = np.asarray(jax.jit(lambda p, b: forward(trainer.module, p, b))(params, batch))
  wrong = dict(batch, mrope_positions=np.repeat(batch["positions"][..., None], 3, axis=-1))
  wrong_logits = np.asarray(jax.jit(lambda p, b: forward(trainer.module, p, b))(params, wrong))

  rows, length = batch["input_ids"].shape
  slots = batch["pixel_values"].shape[0] // rows
  max_images = batch["image_grid_thw"].shape[0] // rows
  checked = with_images = two_images = text_only = 0
  worst = position_effect = 0.0
  for b in range(3):  # 3 packed rows (each sample compiles its own reference forward)
    grids = batch["image_grid_thw"][b * max_images:(b + 1) * max_images]
    image_segments = batch["image_segment_ids"][b * max_images:(b + 1) * max_images]
    starts = b * slots + np.concatenate([[0], np.cumsum(grids.prod(-1))])
    for s in range(1, batch["segment_ids"][b].max() + 1):
      tokens = batch["segment_ids"][b] == s
      sample = {"input_ids": batch["input_ids"][b][tokens][None]}
      mine = np.flatnonzero(image_segments == s)
      if len(mine):
        sample["pixel_values"] = batch["pixel_values"][starts[mine[0]]:starts[mine[-1] + 1]]
        sample["image_grid_thw"] = grids[mine]
        with_images += 1
        two_images += len(mine) > 1
      else:
        text_only += 1
      ref = forward_from_hf_inputs(trainer.model_config, params, sample)[0]
      worst = max(worst, float(np.abs(train_logits[b][tokens] - ref).max()))
      position_effect = max(position_effect, float(np.abs(wrong_logits[b][tokens] - ref).max()))
      checked += 1
  record(f"qwen_vl/train_forward_vs_forward_{kind}", worst)
  assert checked > 3 and with_images >= 2 and two_images and text_only  # packed rows
  assert worst <= TOLERANCE, worst
  assert position_effect > 100 * TOLERANCE, position_effect  # the check sees wrong positions


def test_model_flops_count_patches_per_frame():
  """`mmjax train`'s model FLOPs for native-resolution batches: the decoder as for LLaVA, the ViT
  per patch of the batch's grids (attention within a frame), the mergers per merged token."""
  from mmjax.models.registry import FAMILIES, abstract_params
  from mmjax.train.metrics import count_params, flops_per_step
  from mmjax.train.model_config import build_model_config

  family, config = build_model_config(load_config(f"{TINY}:qwen3_vl").model.to_dict())
  params = abstract_params(family, config)
  rows, seq = 4, 64
  grid = np.asarray([[1, 4, 6], [1, 8, 8], [0, 0, 0]])  # 24 + 64 patches, an unused slot
  text = flops_per_step(config, {"decoder": params["decoder"]}, rows, seq, 0)
  both = ("encoder", "decoder")
  trained = flops_per_step(config, params, rows, seq, 2, both, grid) - text
  frozen = flops_per_step(config, params, rows, seq, 2, ("decoder",), grid) - text
  encoder = dict(params["encoder"])
  mergers = count_params([encoder.pop("merger"), encoder.pop("deepstack")])
  v = config.vision
  forward = (count_params(encoder) * 88 + mergers * 22
             + 2 * v.num_layers * v.hidden_size * (24**2 + 64**2))
  assert trained == 6 * forward and frozen == 2 * forward
  assert flops_per_step(config, params, rows, seq, 0, both, np.zeros((3, 3))) == text
