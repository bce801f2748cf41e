"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: greedy ids equal transformers' `generate(do_sample=False)` on
processor arrays (left padding, two images in a row, videos, text-only rows, DeepStack, windows,
tied heads), from the Python API and `mmjax generate --inputs`; tensor-parallel equals one device.
"""

import numpy as np
import pytest
import torch

from gen_helpers import PAD
from hf_models import save
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.generation import GenerateConfig, Generator, generate
from mmjax.generation.partition import shard_params, tensor_mesh
from mmjax.models.fusion import PlaceholderMismatchError
from mmjax.models.qwen_vl import PROCESSOR_KEYS
from qwen_vl_models import CLASSES, IMAGE, build, make_inputs, qwen_vl_config

N = 12
IMG = lambda h, w: ("image", (1, h, w))
VID = lambda t, h, w: ("video", (t, h, w))

# name -> (kind, config kwargs, rows of make_inputs)
CASES = {
    "qwen2_vl_two_images_video_text_row": (
        "qwen2_vl", {}, [[3, IMG(4, 6), 2, IMG(2, 2)], [2, VID(2, 4, 4)], [5]]),
    "qwen2_5_vl_windows_video_seconds": (
        "qwen2_5_vl", {}, [[2, IMG(8, 12), 3, IMG(6, 4)], [1, VID(3, 4, 6)]]),
    "qwen3_vl_deepstack_two_images_video": (
        "qwen3_vl", {}, [[2, IMG(6, 8), 2, IMG(2, 2)], [1, VID(2, 4, 4), 1], [4]]),
    "qwen3_vl_tied_text_rows": (
        "qwen3_vl", dict(tied=True), [[6], [2, IMG(4, 4)], [1]]),
}


def _build(kind, kw, tmp_path, seed=0):
  """A noisy random transformers model, converted: (hf model, hf config, family, config, params)."""
  torch.manual_seed(seed)
  hf_cfg = qwen_vl_config(kind, **kw)
  hf_dir = save(build(kind, hf_cfg), str(tmp_path / "hf"), seed=seed)
  convert_hf(hf_dir, str(tmp_path / "mm"), progress=False)
  model = CLASSES[kind][1].from_pretrained(hf_dir, attn_implementation="eager").eval()
  return (model, hf_cfg, *load_checkpoint(str(tmp_path / "mm")))


def hf_greedy(model, inputs, n=N):
  """transformers' greedy ids `[B, n]` after the prompt, from the processor's arrays."""
  model.generation_config.eos_token_id = None
  with torch.no_grad():
    out = model.generate(**{k: torch.tensor(v) for k, v in inputs.items()}, do_sample=False,
                         max_new_tokens=n, pad_token_id=PAD)
  return out[:, inputs["input_ids"].shape[1]:].numpy()


def vision(inputs):
  return {k: inputs[k] for k in PROCESSOR_KEYS if k in inputs}


@pytest.mark.parametrize("name", sorted(CASES))
def test_qwen_vl_greedy_matches_transformers(name, tmp_path):
  kind, kw, rows = CASES[name]
  model, hf_cfg, family, config, params = _build(kind, kw, tmp_path)
  inputs = make_inputs(kind, hf_cfg, rows, seed=3)
  if "second_per_grid_ts" in inputs:
    # Frames 16 positions apart: the video's temporal positions run past the text after it, so
    # the decode positions must continue from the prompt's last position, not its maximum.
    inputs["second_per_grid_ts"][:] = 4.0
  assert len(set(inputs["attention_mask"].sum(1))) == len(rows)  # left padding in every row
  ref = hf_greedy(model, inputs)
  assert len(np.unique(ref)) > 2, ref  # the rows say different things: the ids can disagree
  ours = generate(family, config, params, inputs["input_ids"], inputs["attention_mask"],
                  vision(inputs), max_new_tokens=N, pad_id=PAD)
  assert ours.shape == (len(rows), N)
  np.testing.assert_array_equal(ours, ref)


@pytest.fixture(scope="module")
def qwen2_5_vl(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("qwen2_5_vl")
  return (*_build("qwen2_5_vl", {}, tmp, seed=4), str(tmp / "mm"))


def test_cli_inputs_mode_equals_transformers_greedy(qwen2_5_vl, tmp_path, capsys):
  """Processor arrays in an npz (`mm_token_type_ids` left out: derived from the ids)."""
  model, hf_cfg, *_, ckpt = qwen2_5_vl
  inputs = make_inputs("qwen2_5_vl", hf_cfg, [[1, IMG(4, 4), VID(2, 4, 4)], [3, IMG(2, 6), 2]],
                       seed=6)
  np.savez(tmp_path / "in.npz", **{k: v for k, v in inputs.items() if k != "mm_token_type_ids"})
  assert cli.main(["generate", "--checkpoint", ckpt, "--inputs", str(tmp_path / "in.npz"),
                   "--out", str(tmp_path / "ids.npy"), "--max-new-tokens", str(N)]) == 0
  ours = np.load(tmp_path / "ids.npy")
  assert ours.shape == (2, N) and ours.dtype == np.int32
  np.testing.assert_array_equal(ours, hf_greedy(model, inputs))
  # Chat mode needs the tokenizer files, which this checkpoint was converted without.
  assert cli.main(["generate", "--checkpoint", ckpt, "--prompt", "hi"]) == 1
  assert "has no tokenizer (hf_extras/tokenizer.json)" in capsys.readouterr().err


def test_tensor_parallel_qwen_vl_equals_one_device(qwen2_5_vl):
  model, hf_cfg, family, config, params, _ = qwen2_5_vl
  inputs = make_inputs("qwen2_5_vl", hf_cfg, [[2, IMG(4, 4)], [1], [3, IMG(2, 2), 1], [5]], seed=2)
  gen = GenerateConfig(N, pad_id=PAD)
  args = (inputs["input_ids"], inputs["attention_mask"], vision(inputs))
  single = Generator(family, config, params)(*args, gen=gen)
  mesh = tensor_mesh(tensor=2, data=4)  # rows over 'data': [3, B, T] positions split on B
  parallel = Generator(family, config, shard_params(family, config, params, mesh), mesh)(
      *args, gen=gen)
  np.testing.assert_array_equal(parallel, single)
  np.testing.assert_array_equal(single, hf_greedy(model, inputs))


def test_bad_qwen_vl_inputs_raise_clear_errors(qwen2_5_vl):
  _, hf_cfg, family, config, params, _ = qwen2_5_vl
  inputs = make_inputs("qwen2_5_vl", hf_cfg, [[2, IMG(4, 4)]])
  g = Generator(family, config, params)
  gen = GenerateConfig(2, pad_id=PAD)
  with pytest.raises(PlaceholderMismatchError, match="placeholder"):
    g(inputs["input_ids"], inputs["attention_mask"], None, gen=gen)
  extra = inputs["input_ids"].copy()
  extra[0, 1] = IMAGE
  with pytest.raises(ValueError, match="placeholder"):
    g(extra, inputs["attention_mask"], vision(inputs), gen=gen)
  with pytest.raises(ValueError, match="unknown Qwen-VL inputs"):
    g(inputs["input_ids"], inputs["attention_mask"], dict(vision(inputs), pixels=1), gen=gen)
  with pytest.raises(KeyError, match="no 'image_grid_thw'"):
    g(inputs["input_ids"], inputs["attention_mask"],
      {"pixel_values": inputs["pixel_values"]}, gen=gen)
