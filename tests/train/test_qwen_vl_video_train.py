"""Qwen-VL on videos: `mmjax train` with configs/tiny/qwen2_vl_video.py on a generated
moving-shapes set (falling loss), and the train forward of a packed video batch equals, sample
by sample, the parity-tested forward on that sample's processor-style arrays."""

import json
import os

import jax
import numpy as np
import pytest

from hf_models import TOLERANCE, record
from mmjax import cli
from mmjax.data import pipeline
from mmjax.data.synthetic_video import write_video_dataset
from mmjax.models.qwen_vl import forward_from_hf_inputs
from mmjax.train.cli import load_config
from mmjax.train.loop import Trainer
from mmjax.train.step import forward

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny",
                      "qwen2_vl_video.py")


@pytest.fixture(scope="module")
def video_set(tmp_path_factory):
  out = tmp_path_factory.mktemp("videos")
  write_video_dataset(str(out), num=24, seed=0)
  return str(out)


@pytest.mark.slow
def test_mmjax_train_on_generated_videos_lowers_the_loss(video_set, tmp_path, capsys):
  workdir = tmp_path / "run"
  assert cli.main(["train", "--config", f"{CONFIG}:{video_set}", "--workdir", str(workdir),
                   "--config.train.steps=12", "--config.train.log_every=4",
                   "--config.checkpoint.every_steps=100"]) == 0
  with open(workdir / "metrics.jsonl") as f:
    losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  assert len(losses) == 12 and np.isfinite(losses).all()
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 1.0, losses
  assert "loss plot:" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
def test_train_forward_of_video_rows_equals_the_forward_per_sample(kind, video_set):
  cfg = load_config(f"{CONFIG}:{video_set},{kind}")
  trainer = Trainer.build(cfg, jax.devices()[:1])
  params = jax.tree.map(  # weights large enough that the video features move the logits
      lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape, x.dtype),
      trainer.init().all_params())
  batch = next(pipeline.make_iterator(pipeline.DataConfig.from_dict(cfg.data)))
  run = jax.jit(lambda p, b: forward(trainer.module, p, b))
  logits = np.asarray(run(params, batch))
  blank = np.asarray(run(params, dict(batch, pixel_values_videos=0 * batch["pixel_values_videos"])))

  rows = batch["input_ids"].shape[0]
  slots = batch["pixel_values_videos"].shape[0] // rows
  per_row = batch["video_grid_thw"].shape[0] // rows
  worst = video_effect = 0.0
  checked = 0
  for b in range(2):
    grids = batch["video_grid_thw"][b * per_row:(b + 1) * per_row]
    starts = b * slots + np.concatenate([[0], np.cumsum(grids.prod(-1))])
    for s in range(1, batch["segment_ids"][b].max() + 1):  # one video per sample, in order
      tokens = batch["segment_ids"][b] == s
      sample = {"input_ids": batch["input_ids"][b][tokens][None],
                "pixel_values_videos": batch["pixel_values_videos"][starts[s - 1]:starts[s]],
                "video_grid_thw": grids[s - 1:s],
                "second_per_grid_ts": np.asarray([1.0], np.float32)}  # 2 of 4 sampled / 2 fps
      ref = forward_from_hf_inputs(trainer.model_config, params, sample)[0]
      worst = max(worst, float(np.abs(logits[b][tokens] - ref).max()))
      video_effect = max(video_effect, float(np.abs(blank[b][tokens] - ref).max()))
      checked += 1
  record(f"qwen_vl/video_train_forward_vs_forward_{kind}", worst)
  assert checked >= 2 and worst <= TOLERANCE, worst
  assert video_effect > 100 * TOLERANCE, video_effect  # the check sees the video features
