"""Videos in the pipeline: frame sampling, decoding (PyAV, frame directories, arrays), temporal
patches against transformers' Qwen2-VL preprocessing, prompts against the Qwen processors'
placeholder text, and M-RoPE positions against transformers' `get_rope_index`."""

import dataclasses
import json
import types

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.video_utils import VideoMetadata

from mmjax.data.media_sample import MediaSampleProcessor
from mmjax.data.pipeline import DataConfig, DataIterator, SourceConfig, build_dataset
from mmjax.data.preprocess import preset
from mmjax.data.synthetic_video import SPECIAL_TOKENS, render_clip, write_mp4
from mmjax.data.tokenizer import Tokenizer, train_tiny_tokenizer
from mmjax.data.validation import SampleError
from mmjax.data.video import VideoConfig, VideoError, load_frames, process_video, sample_indices
from qwen_vl_models import build, qwen_vl_config

TOLERANCE = 1e-5  # pixel values, as the image preprocessing tests


@pytest.mark.parametrize("total, video_fps, cfg, expected", [
    (8, 4.0, VideoConfig(), [0, 2, 4, 6]),                   # 8 / 4 * 2 = 4 frames
    (30, 30.0, VideoConfig(), [0, 7, 15, 22]),               # 2 frames -> min_frames 4; step 7.5
    (100, 10.0, VideoConfig(max_frames=16), list(np.floor(np.arange(16) * 6.25).astype(int))),
    (9, 4.0, VideoConfig(fps=4.0), [0, 1, 2, 3, 4, 5, 6, 7]),  # floored to a multiple of 2
    (1, 4.0, VideoConfig(), [0]),                             # shorter than a temporal patch
])
def test_sample_indices(total, video_fps, cfg, expected):
  assert sample_indices(total, video_fps, cfg, 2).tolist() == expected


def test_frames_from_a_file_a_directory_and_an_array(tmp_path):
  clip, _, _ = render_clip(np.random.default_rng(1), size=32, frames=8)
  write_mp4(str(tmp_path / "clip.mp4"), clip, fps=4)
  (tmp_path / "frames").mkdir()
  for f, frame in enumerate(clip):
    Image.fromarray(frame).save(tmp_path / "frames" / f"{f:03d}.png")
  cfg = VideoConfig()
  frames, fps, indices, total = load_frames(str(tmp_path / "clip.mp4"), cfg, 2)
  assert (fps, total, indices.tolist(), frames.shape) == (4.0, 8, [0, 2, 4, 6], (4, 32, 32, 3))
  assert np.abs(frames.astype(int) - clip[indices]).mean() < 8  # MPEG-4 at qscale 2
  data = (tmp_path / "clip.mp4").read_bytes()  # embedded bytes (Parquet, tar members)
  np.testing.assert_array_equal(load_frames(data, cfg, 2)[0], frames)
  # A directory / an array has no frame rate: frames_fps (default fps: every frame kept).
  frames, _, indices, _ = load_frames(str(tmp_path / "frames"), cfg, 2)
  np.testing.assert_array_equal(frames, clip)
  frames, _, indices, _ = load_frames(clip, dataclasses.replace(cfg, frames_fps=4.0), 2)
  np.testing.assert_array_equal(frames, clip[[0, 2, 4, 6]])
  with pytest.raises(VideoError, match="no video at") as missing:
    load_frames(str(tmp_path / "none.mp4"), cfg, 2)
  assert missing.value.missing
  (tmp_path / "bad.mp4").write_bytes(b"not a video" * 10)
  with pytest.raises(VideoError, match="cannot decode"):
    load_frames(str(tmp_path / "bad.mp4"), cfg, 2)


@pytest.mark.parametrize("size", [(45, 70), (64, 32), (20, 30)])  # resized down, kept, up
def test_temporal_patches_equal_transformers_per_frame(size):
  """Each frame through transformers' Qwen2VLImageProcessorPil (resize + normalise + its patch
  order, the frame repeated over the temporal axis); temporal patch k of the video takes frame
  2k's values in temporal slot 0 and frame 2k+1's in slot 1."""
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (5, *size, 3), dtype=np.uint8)  # odd: the last is repeated
  image_cfg = preset("qwen2_vl", patch_size=8, merge_size=2, min_pixels=32 * 32,
                     max_pixels=64 * 64)
  cfg = VideoConfig(min_pixels=32 * 32, max_pixels=64 * 64)
  ours = process_video(frames, 2.0, np.arange(5), 5, image_cfg, cfg)
  hf = transformers.Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                             min_pixels=32 * 32, max_pixels=64 * 64)
  per_frame = []
  for frame in list(frames) + [frames[-1]]:
    out = hf(images=[Image.fromarray(frame)], return_tensors="np")
    per_frame.append(out["pixel_values"].reshape(-1, 3, 2, 8, 8))  # [h*w, C, T, P, P]
    grid = out["image_grid_thw"][0]
  expected = np.concatenate([np.stack([per_frame[k][:, :, 0], per_frame[k + 1][:, :, 1]], axis=2)
                             for k in range(0, 6, 2)]).reshape(-1, 3 * 2 * 8 * 8)
  assert ours.grid_thw == (3, int(grid[1]), int(grid[2]))
  assert ours.patches.shape == expected.shape
  assert np.abs(ours.patches - expected).max() <= TOLERANCE


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok")
  corpus = ["system You are a helpful assistant. user assistant seconds",
            "Which way does the red square move? left right up down"] * 20
  train_tiny_tokenizer(corpus, special_tokens=SPECIAL_TOKENS, vocab_size=320).save(
      str(path / "tokenizer.json"))
  return Tokenizer.load(str(path))


def _data_cfg(kind, tokens_per_second=4.0, **kw):
  video = VideoConfig(min_pixels=32 * 32, max_pixels=64 * 64, max_patches=96, max_videos=2,
                      model_type=kind, tokens_per_second=tokens_per_second, frames_fps=4.0)
  base = dict(image=preset("qwen2_vl", patch_size=8, merge_size=2, min_pixels=32 * 32,
                           max_pixels=64 * 64),
              template="chatml", image_token="<|image_pad|>", image_start="<|vision_start|>",
              image_end="<|vision_end|>", max_length=256, max_tiles=64, max_images=2, mrope=True,
              video=video, batch_size=2, packing=True, read_threads=1, read_buffer=2)
  return DataConfig(**{**base, **kw})


def _sample(tmp_path):
  clips = [render_clip(np.random.default_rng(s), size=32, frames=8)[0] for s in range(2)]
  Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 48, 3), np.uint8)).save(
      tmp_path / "img.png")
  return {"id": "mixed", "images": [str(tmp_path / "img.png")], "videos": clips, "messages": [
      {"role": "user", "content": "<video>\nWhich way? <image> and <video>"},
      {"role": "assistant", "content": "left right"}]}


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_video_prompt_and_positions_equal_transformers(kind, tokenizer, tmp_path):
  raw = _sample(tmp_path)
  processor = MediaSampleProcessor(_data_cfg(kind), tokenizer)
  ex = processor(raw)
  video_id, image_id = tokenizer.token_to_id("<|video_pad|>"), tokenizer.token_to_id("<|image_pad|>")
  grids = ex["video_grid_thw"]
  assert grids.tolist() == [[2, 4, 4], [2, 4, 4]] and ex["pixel_values_videos"].shape == (64, 384)
  assert ex["image_grid_thw"].tolist() == [[1, 4, 6]]
  # The prompt text around each video is what the transformers processor writes.
  metadata = VideoMetadata(total_num_frames=8, fps=4.0, frames_indices=np.array([0, 2, 4, 6]))
  fake = types.SimpleNamespace(
      video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
      vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
      video_token="<|video_pad|>",
      _calculate_timestamps=lambda *a: Qwen3VLProcessor._calculate_timestamps(None, *a))
  inputs = {"video_grid_thw": grids, "video_metadata": [metadata, metadata]}
  if kind == "qwen3_vl":
    pads = Qwen3VLProcessor.replace_video_token(fake, inputs, 0)
  else:
    pads = transformers.Qwen2VLProcessor.replace_video_token(fake, inputs, 0)
  expected_video = "<|vision_start|>" + pads + "<|vision_end|>"
  text = tokenizer.decode(ex["input_ids"])
  assert text.count(expected_video) == 2, text
  assert (ex["input_ids"] == video_id).sum() == 16 and (ex["input_ids"] == image_id).sum() == 6
  # Positions: transformers' get_rope_index on these ids and grids.
  hf_cfg = qwen_vl_config(kind)  # its tokens_per_second is 4, merge 2
  model = build(kind, hf_cfg).model
  ids = torch.tensor(ex["input_ids"][None].astype(np.int64))
  types_ = torch.tensor(np.where(ex["input_ids"] == image_id, 1,
                                 np.where(ex["input_ids"] == video_id, 2, 0))[None])
  kw = dict(image_grid_thw=torch.tensor(ex["image_grid_thw"]), video_grid_thw=torch.tensor(grids))
  if kind == "qwen2_5_vl":
    kw["second_per_grid_ts"] = torch.tensor([1.0, 1.0])  # 2 frames / (4 of 8 frames at 4 fps)
  ref, _ = model.get_rope_index(ids, types_, **kw)
  np.testing.assert_array_equal(ex["mrope_positions"], ref[:, 0].numpy().T)


def test_bad_videos_are_skipped_and_counted(tokenizer, tmp_path):
  cfg = _data_cfg("qwen2_vl")
  processor = MediaSampleProcessor(cfg, tokenizer)
  messages = [{"role": "user", "content": "<video>\nWhich way?"},
              {"role": "assistant", "content": "left"}]
  (tmp_path / "bad.mp4").write_bytes(b"garbage" * 20)
  for ref, reason in ((str(tmp_path / "none.mp4"), "missing_video"),
                      (str(tmp_path / "bad.mp4"), "corrupt_video")):
    with pytest.raises(SampleError) as e:
      processor({"id": "v", "images": [], "videos": [ref], "messages": messages})
    assert e.value.reason == reason
  with pytest.raises(SampleError) as e:
    MediaSampleProcessor(dataclasses.replace(cfg, video=VideoConfig()), tokenizer)(
        {"id": "v", "images": [], "videos": [ref], "messages": messages})
  assert e.value.reason == "bad_record" and "data.video.max_patches" in e.value.detail


def test_truncation_never_cuts_a_video(tokenizer, tmp_path):
  raw = dict(_sample(tmp_path), images=[], messages=[
      {"role": "user", "content": "Which way? <video>"}, {"role": "assistant", "content": "left"},
      {"role": "user", "content": "And here? <video>"}, {"role": "assistant", "content": "right"}])
  pad = tokenizer.token_to_id("<|video_pad|>")
  full = MediaSampleProcessor(_data_cfg("qwen3_vl"), tokenizer)(raw)
  assert (full["input_ids"] == pad).sum() == 16
  second_video = int(np.flatnonzero(full["input_ids"] == pad)[8])  # its first frame's pads
  ex = MediaSampleProcessor(_data_cfg("qwen3_vl", max_length=second_video + 4), tokenizer)(raw)
  # The second video's frames do not all fit: it goes whole (and the cut is before its run);
  # the first stays whole, with its answer.
  assert len(ex["input_ids"]) < second_video
  assert ex["video_grid_thw"].tolist() == [[2, 4, 4]] and len(ex["pixel_values_videos"]) == 32
  assert (ex["input_ids"] == pad).sum() == 8 and ex["loss_mask"].sum() > 0
  assert ex["mrope_positions"].shape == (len(ex["input_ids"]), 3)


def test_pipeline_packs_video_rows(tokenizer, tmp_path):
  raw = _sample(tmp_path)
  clips = tmp_path / "clips"
  clips.mkdir()
  records = []
  for i, clip in enumerate(raw["videos"] * 3):
    write_mp4(str(clips / f"{i}.mp4"), clip, fps=4)
    records.append({"id": f"v{i}", "video": f"clips/{i}.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhich way?"}, {"from": "gpt", "value": "left"}]})
  (tmp_path / "videos.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  cfg = _data_cfg("qwen2_vl", sources=(SourceConfig(str(tmp_path / "videos.jsonl"),
                                                    str(tmp_path)),))
  batch = next(DataIterator(build_dataset(cfg, tokenizer, process_index=0, process_count=1)))
  assert batch["pixel_values_videos"].shape == (2 * 96, 384)
  grids = batch["video_grid_thw"].reshape(2, 2, 3)
  assert (grids[:, 0] == [2, 4, 4]).all()  # each row packs two 32-patch videos
  assert (batch["segment_ids"].max(axis=1) == 2).all()


def test_data_check_decodes_videos(tmp_path, capsys):
  from mmjax import cli

  clip, _, _ = render_clip(np.random.default_rng(0))
  write_mp4(str(tmp_path / "ok.mp4"), clip, fps=4)
  (tmp_path / "bad.mp4").write_bytes(b"garbage" * 20)
  conv = [{"from": "human", "value": "<video>\nWhich way?"}, {"from": "gpt", "value": "left"}]
  records = [{"id": name, "video": f"{name}.mp4", "conversations": conv}
             for name in ("ok", "bad", "none")]
  (tmp_path / "v.json").write_text(json.dumps(records))
  report = tmp_path / "r.json"
  assert cli.main(["data", "check", str(tmp_path / "v.json"), "--image-root", str(tmp_path),
                   "--report", str(report)]) == 0
  assert json.loads(report.read_text()) == {
      "total": 3, "usable": 1, "skipped": {"missing_video": 1, "corrupt_video": 1}}
