"""Chat mode for Qwen2-VL / Qwen2.5-VL / Qwen3-VL: from a converted checkpoint with the
processor's files, the prompt's ids, patches and grids equal the Qwen processor's (several images
of their own sizes, the pixel budget overridden), and `mmjax generate --image --prompt` answers
as transformers' processor + generate, with images given as paths or as http(s) URLs; `mmjax
eval` batches such prompts (rows of different lengths and grids) to the same answers."""

import functools
import http.server
import json
import threading

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import processing_utils

from gen_helpers import hf_answer
from hf_models import save
from mmjax import cli
from mmjax.checkpoint import read_metadata
from mmjax.data.tokenizer import train_tiny_tokenizer
from qwen_vl_models import CLASSES, qwen_vl_config

N = 10
PROMPT = "what shape is in the picture"
SPECIALS = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' }}"
            "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
            "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% else %}{{ c['text'] }}"
            "{% endif %}{% endfor %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
PROCESSORS = {"qwen2_vl": transformers.Qwen2VLProcessor,
              "qwen2_5_vl": transformers.Qwen2_5_VLProcessor,
              "qwen3_vl": transformers.Qwen3VLProcessor}
# Pixel budget of the checkpoint's processor (4x4 patches merged 2x2: 64 pixels per token).
MIN_PIXELS, MAX_PIXELS = 64 * 4, 64 * 40


def _processor(kind, tokenizer, image_processor, monkeypatch):
  """The family's transformers processor without a video processor: that one needs torchvision,
  which the CPU test extra does not install, and images never reach it."""
  check = processing_utils.ProcessorMixin.check_argument_for_proper_class
  monkeypatch.setattr(processing_utils.ProcessorMixin, "check_argument_for_proper_class",
                      lambda self, name, arg: None if arg is None else check(self, name, arg))
  return PROCESSORS[kind](image_processor=image_processor, tokenizer=tokenizer,
                          chat_template=TEMPLATE)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl"])
def qwen_chat(request, tmp_path_factory):
  """(kind, converted checkpoint, hf dir, fast tokenizer, image processor, image paths)."""
  kind, tmp = request.param, tmp_path_factory.mktemp(request.param)
  corpus = ["what shape is in the picture", "a red square on a blue ground", "the cat sat"] * 30
  tok = train_tiny_tokenizer(corpus, special_tokens=("<unk>", "<s>", "</s>"), vocab_size=120)
  vocab = tok.get_vocab_size()
  tok.add_special_tokens(SPECIALS)  # ids vocab .. vocab + 3
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<unk>")
  fast.chat_template = TEMPLATE
  image_processor = transformers.Qwen2VLImageProcessorPil(
      patch_size=4, merge_size=2, temporal_patch_size=2,
      size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})
  hf_cfg = qwen_vl_config(kind)
  hf_cfg.text_config.vocab_size = vocab + len(SPECIALS)
  hf_cfg.image_token_id, hf_cfg.video_token_id, hf_cfg.vision_start_token_id, \
      hf_cfg.vision_end_token_id = range(vocab, vocab + 4)
  torch.manual_seed(3)
  hf_dir = save(CLASSES[kind][1](hf_cfg), str(tmp / "hf"), seed=3)
  fast.save_pretrained(hf_dir)
  image_processor.save_pretrained(hf_dir)
  ckpt = str(tmp / "mm")
  assert cli.main(["convert", "--hf", hf_dir, "--out", ckpt, "--quiet"]) == 0
  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate([(40, 90), (18, 30)]):  # a budget-capped wide one, a small one
    paths.append(str(tmp / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(paths[-1])
  return kind, ckpt, hf_dir, fast, image_processor, paths


def _hf_inputs(kind, fast, image_processor, paths, monkeypatch):
  processor = _processor(kind, fast, image_processor, monkeypatch)
  conversation = [{"role": "user", "content": [{"type": "image", "path": p} for p in paths]
                   + [{"type": "text", "text": PROMPT}]}]
  return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="np")


def _builder_arrays(ckpt, paths, **options):
  family, config, _ = read_metadata(ckpt)
  return family.prompt_builder(ckpt, config, **options)(PROMPT, paths)


def _assert_same_arrays(ids, pixels, inputs):
  np.testing.assert_array_equal(ids, inputs["input_ids"])
  np.testing.assert_array_equal(pixels["image_grid_thw"], inputs["image_grid_thw"])
  np.testing.assert_allclose(pixels["pixel_values"], inputs["pixel_values"], atol=1e-5)


def test_prompt_arrays_equal_the_qwen_processors(qwen_chat, monkeypatch):
  kind, ckpt, _, fast, image_processor, paths = qwen_chat
  inputs = _hf_inputs(kind, fast, image_processor, paths, monkeypatch)
  assert len(set(map(tuple, inputs["image_grid_thw"]))) == 2  # images of their own sizes
  _assert_same_arrays(*_builder_arrays(ckpt, paths), inputs)
  # A smaller budget (`--max-pixels`), and a larger floor (`--min-pixels`), as the processor's.
  for options in (dict(max_pixels=64 * 12), dict(min_pixels=64 * 30, max_pixels=64 * 60)):
    budget = {"shortest_edge": options.get("min_pixels", MIN_PIXELS),
              "longest_edge": options["max_pixels"]}
    other = transformers.Qwen2VLImageProcessorPil(patch_size=4, merge_size=2,
                                                  temporal_patch_size=2, size=budget)
    resized = _hf_inputs(kind, fast, other, paths, monkeypatch)
    assert not np.array_equal(resized["image_grid_thw"], inputs["image_grid_thw"])
    _assert_same_arrays(*_builder_arrays(ckpt, paths, **options), resized)


@pytest.fixture
def image_server(qwen_chat):
  """An http server on localhost that serves the test images' directory."""
  directory = qwen_chat[-1][0].rsplit("/", 1)[0]
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()


def _hf_answer(kind, hf_dir, fast, image_processor, paths, monkeypatch, stop=None) -> str:
  """transformers' greedy answer to PROMPT about `paths` (to `stop` or N tokens)."""
  inputs = _hf_inputs(kind, fast, image_processor, paths, monkeypatch)
  model = CLASSES[kind][1].from_pretrained(hf_dir, attn_implementation="eager").eval()
  return hf_answer(model, inputs, fast, N, eos=stop)


def test_chat_answers_like_transformers_from_paths_and_urls(qwen_chat, image_server, monkeypatch,
                                                            capsys):
  kind, ckpt, hf_dir, fast, image_processor, paths = qwen_chat
  expected = _hf_answer(kind, hf_dir, fast, image_processor, paths, monkeypatch)
  assert expected.strip()
  urls = [f"{image_server}/{p.rsplit('/', 1)[1]}" for p in paths]
  for images in (paths, [urls[0], paths[1]]):
    capsys.readouterr()
    argv = ["generate", "--checkpoint", ckpt, "--prompt", PROMPT, "--max-new-tokens", str(N),
            "--stop", "-1"]
    for image in images:
      argv += ["--image", image]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_eval_batches_rows_of_their_own_grids_to_transformers_answers(qwen_chat, monkeypatch,
                                                                      tmp_path, capsys):
  kind, ckpt, hf_dir, fast, image_processor, paths = qwen_chat
  images = [paths, paths[1:], paths[:1]]  # rows of different lengths and grids in one batch
  expected = [_hf_answer(kind, hf_dir, fast, image_processor, row, monkeypatch,
                         stop=fast.eos_token_id).strip() for row in images]
  assert all(expected) and len(set(expected)) > 1
  with open(tmp_path / "set.jsonl", "w") as f:
    for i, row in enumerate(images):
      f.write(json.dumps({"image": row, "question": PROMPT, "answers": [expected[i]]}) + "\n")
  out = tmp_path / "preds.jsonl"
  assert cli.main(["eval", "--checkpoint", ckpt, "--data", str(tmp_path / "set.jsonl"),
                   "--metric", "exact", "--batch-size", "4", "--max-new-tokens", str(N),
                   "--out", str(out)]) == 0
  with open(out) as f:
    assert [json.loads(line)["prediction"] for line in f] == expected
  assert "exact: 1.0000 on 3 questions" in capsys.readouterr().out


def test_unreachable_and_missing_urls_and_foreign_options_are_one_line_errors(
    qwen_chat, image_server, capsys):
  kind, ckpt, *_ = qwen_chat
  with socket_closed() as port:  # nothing listens there: what a machine without network sees
    assert cli.main(["generate", "--checkpoint", ckpt, "--prompt", "hi", "--image",
                     f"http://127.0.0.1:{port}/a.png"]) == 1
  err = capsys.readouterr().err
  assert f"cannot fetch http://127.0.0.1:{port}/a.png" in err and "no network access" in err
  assert "Traceback" not in err
  assert cli.main(["generate", "--checkpoint", ckpt, "--prompt", "hi", "--image",
                   f"{image_server}/none.png"]) == 1
  assert "none.png: the server answered 404" in capsys.readouterr().err
  assert cli.main(["generate", "--checkpoint", ckpt, "--prompt", "hi", "--image",
                   qwen_chat[-1][0], "--min-pixels", "900", "--max-pixels", "100"]) == 1
  assert "min_pixels 900 exceeds max_pixels 100" in capsys.readouterr().err


class socket_closed:
  """A localhost port with nothing listening on it (bound, then released)."""

  def __enter__(self) -> int:
    import socket

    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      return s.getsockname()[1]

  def __exit__(self, *exc):
    return False
