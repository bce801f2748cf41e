"""`mmjax generate`: array mode equals transformers' greedy ids; chat mode answers like a
transformers processor + generate; clear errors."""

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from gen_helpers import PAD, hf_greedy, llava_prompts
from hf_models import clip_vision_config, llava_config, save, text_config
from mmjax import cli
from mmjax.data.tokenizer import train_tiny_tokenizer

N = 16


def _generate(*argv):
  return cli.main(["generate", *map(str, argv)])


def test_inputs_mode_equals_transformers_greedy(tiny_llava, tmp_path):
  model, hf_cfg, _, _, _, ckpt = tiny_llava
  ids, mask, pixels = llava_prompts(hf_cfg, (2, 1, 0), seed=11)
  np.savez(tmp_path / "in.npz", input_ids=ids, attention_mask=mask, pixel_values=pixels)
  assert _generate("--checkpoint", ckpt, "--inputs", tmp_path / "in.npz", "--out",
                   tmp_path / "ids.npy", "--max-new-tokens", N) == 0
  ours = np.load(tmp_path / "ids.npy")
  assert ours.shape == (3, N)
  np.testing.assert_array_equal(ours, hf_greedy(model, ids, mask, pixels, n=N))

  stop = int(ours[1, 2])
  assert _generate("--checkpoint", ckpt, "--inputs", tmp_path / "in.npz", "--out",
                   tmp_path / "stop.npy", "--max-new-tokens", N, "--stop", stop,
                   "--pad-id", PAD) == 0
  stopped = np.load(tmp_path / "stop.npy")
  ref = hf_greedy(model, ids, mask, pixels, n=N, eos=stop)
  assert stopped.shape == (3, N)
  np.testing.assert_array_equal(stopped[:, :ref.shape[1]], ref)
  assert (stopped[:, ref.shape[1]:] == PAD).all() and (stopped[1, 3:] == PAD).all()


CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ ' ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def test_chat_mode_answers_like_a_transformers_processor(tmp_path, capsys):
  corpus = ["what shape is in the picture", "a red square on a blue ground", "the cat sat"] * 30
  tok = train_tiny_tokenizer(corpus, vocab_size=120)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<unk>", extra_special_tokens={"image_token": "<image>"})
  vocab = tok.get_vocab_size()
  image_processor = transformers.CLIPImageProcessorPil(
      size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  processor = transformers.LlavaProcessor(
      image_processor=image_processor, tokenizer=fast, patch_size=8, chat_template=CHAT_TEMPLATE,
      vision_feature_select_strategy="default", num_additional_image_tokens=1)
  torch.manual_seed(5)
  hf_cfg = llava_config(clip_vision_config(), text_config("llama", vocab_size=vocab, eos_token_id=2,
                                                          bos_token_id=1),
                        image_token_id=tok.token_to_id("<image>"))
  hf_dir = save(transformers.LlavaForConditionalGeneration(hf_cfg), str(tmp_path / "hf"), seed=5)
  processor.save_pretrained(hf_dir)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(tmp_path / "mm"), "--quiet"]) == 0

  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate([(40, 56), (48, 36)]):
    paths.append(tmp_path / f"img{i}.png")
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(paths[-1])
  prompt = "what shape is in the picture"
  conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                               {"type": "text", "text": prompt}]}]
  text = processor.apply_chat_template(conversation, add_generation_prompt=True)
  inputs = processor(images=[Image.open(p) for p in paths], text=text, return_tensors="pt")
  model = transformers.LlavaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  with torch.no_grad():
    out = model.generate(**inputs, do_sample=False, max_new_tokens=N, pad_token_id=0)
  expected = fast.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
  assert expected.strip()

  capsys.readouterr()
  assert _generate("--checkpoint", tmp_path / "mm", "--image", paths[0], "--image", paths[1],
                   "--prompt", prompt, "--max-new-tokens", N) == 0
  assert capsys.readouterr().out == expected + "\n"


def test_errors_name_what_is_missing(tiny_llava, tmp_path, capsys):
  *_, ckpt = tiny_llava
  assert _generate("--checkpoint", ckpt, "--prompt", "hi") == 1
  assert "has no tokenizer (hf_extras/tokenizer.json)" in capsys.readouterr().err
  assert _generate("--checkpoint", ckpt, "--inputs", tmp_path / "none.npz", "--out",
                   tmp_path / "x.npy") == 1
  assert "none.npz: no such file" in capsys.readouterr().err
  assert _generate("--checkpoint", ckpt, "--prompt", "hi", "--inputs", "x.npz") == 1
  assert "either --prompt" in capsys.readouterr().err
  assert _generate("--checkpoint", ckpt, "--prompt", "hi", "--image", tmp_path / "no.png") == 1
  assert "no.png: no such image" in capsys.readouterr().err
  assert _generate("--checkpoint", ckpt, "--prompt", "hi", "--max-pixels", 100) == 1
  assert "--max-pixels: llava checkpoints take no such image option" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    _generate("--help")
  assert "--max-new-tokens" in capsys.readouterr().out


def test_inputs_outside_the_models_limits_are_refused(tiny_llava, tmp_path, capsys):
  """Ids outside the vocabulary (NaN logits everywhere before, or zeros from generate; negative
  ids changed other positions), prompts and generation lengths past the model's positions."""
  _, hf_cfg, _, config, _, ckpt = tiny_llava
  vocab, positions = config.decoder.vocab_size, config.decoder.rope.max_position_embeddings
  good = np.array([[1, 5, 7, 9]], np.int64)
  cases = {
      "large": (np.array([[1, 5, vocab, 9]]), 4, f"input_ids[0, 2] is {vocab}, outside the "
                f"model's vocabulary [0, {vocab})"),
      "negative": (np.array([[1, -3, 7, 9]]), 4, f"input_ids[0, 1] is -3, outside"),
      "long_prompt": (np.ones((1, positions + 1), np.int64), 1,
                      f"the prompt has {positions + 1} tokens, more than the model's {positions}"),
      "long_generation": (good, 100_000_000, f"--max-new-tokens 100000000 after a 4-token prompt "
                          f"runs past the model's {positions} positions (max_position_embeddings): "
                          f"at most {positions - 4}"),
  }
  capsys.readouterr()
  for name, (ids, n, message) in cases.items():
    np.savez(tmp_path / f"{name}.npz", input_ids=ids)
    assert _generate("--checkpoint", ckpt, "--inputs", tmp_path / f"{name}.npz", "--out",
                     tmp_path / f"{name}.npy", "--max-new-tokens", n) == 1, name
    err = capsys.readouterr().err
    assert err.startswith(f"mmjax generate: error: {message}"), err
    assert err.count("\n") == 1 and not (tmp_path / f"{name}.npy").exists(), err
    if name == "long_generation":
      continue
    assert cli.main(["logits", "--checkpoint", ckpt, "--inputs", str(tmp_path / f"{name}.npz"),
                     "--out", str(tmp_path / f"{name}_logits.npy")]) == 1, name
    assert capsys.readouterr().err.startswith(f"mmjax logits: error: {message}")
    assert not (tmp_path / f"{name}_logits.npy").exists()
