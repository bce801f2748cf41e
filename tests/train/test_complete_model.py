"""A model trained from a config is a complete checkpoint: chat mode answers from it, and its
export loads in transformers (model and processor) and generates the same greedy ids."""

import os

import numpy as np
import pytest
from PIL import Image

from mmjax.checkpoint import HF_CONFIG_FILE, HF_EXTRAS_DIR, load_checkpoint, read_metadata
from mmjax.cli import main as mmjax_main
from mmjax.data import synthetic
from mmjax.generation import GenerateConfig, Generator
from mmjax.train.loop import train

from tiny_train import tiny_config

EXTRAS = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
          "preprocessor_config.json", "processor_config.json", "generation_config.json")
QUESTION = "what color is the circle?"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(model dir, a held-out shapes image file) after one step of the default recipe, narrow."""
  root = tmp_path_factory.mktemp("complete")
  summary = train(tiny_config(steps=1), str(root / "run"))
  sample = synthetic.ShapesDataset(synthetic.ShapesConfig(), split="eval", size=1)[0]
  image = str(root / "shape.png")
  Image.fromarray(sample["image"]).save(image)
  return summary["model_dir"], image


def test_the_model_carries_tokenizer_template_processor_and_hf_config(trained):
  model, _ = trained
  assert os.path.isfile(os.path.join(model, HF_CONFIG_FILE))
  assert sorted(os.listdir(os.path.join(model, HF_EXTRAS_DIR))) == sorted(EXTRAS)


def test_chat_mode_renders_the_training_layout_and_answers(trained, capsys):
  model, image = trained
  family, config, _ = read_metadata(model)
  builder = family.prompt_builder(model, config)
  ids, pixels = builder(QUESTION, [image])
  tokenizer = synthetic.load_tokenizer()
  sample = {"question": QUESTION, "answer": "red", "image": np.asarray(Image.open(image))}
  expected = synthetic.encode_example(sample, tokenizer, config.tokens_per_image,
                                      image_first=False)
  np.testing.assert_array_equal(ids[0], expected["input_ids"][:expected["prompt_length"]])
  np.testing.assert_allclose(pixels[0], (expected["image"] - 0.5) / 0.5, atol=1e-6)
  family, config, params = load_checkpoint(model)
  gen = GenerateConfig(3, stop_ids=builder.stop_ids, pad_id=builder.pad_id)
  answer = list(Generator(family, config, params)(ids, None, pixels, gen=gen)[0])
  answer = answer[:answer.index(synthetic.EOS_ID)] if synthetic.EOS_ID in answer else answer
  capsys.readouterr()
  assert mmjax_main(["generate", "--checkpoint", model, "--image", image, "--prompt", QUESTION,
                     "--max-new-tokens", "3"]) == 0
  assert capsys.readouterr().out == tokenizer.decode(answer, skip_special_tokens=True) + "\n"


def test_export_loads_in_transformers_and_generates_the_same_greedy_ids(trained, tmp_path):
  import torch
  import transformers

  model, image = trained
  out = str(tmp_path / "hf")
  assert mmjax_main(["export", "--checkpoint", model, "--out", out]) == 0
  hf_model = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
  processor = transformers.AutoProcessor.from_pretrained(out)
  messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
  text = processor.apply_chat_template(messages, add_generation_prompt=True)
  inputs = processor(images=Image.open(image), text=text, return_tensors="pt")

  family, config, params = load_checkpoint(model)
  builder = family.prompt_builder(model, config)
  ids, pixels = builder(QUESTION, [image])
  np.testing.assert_array_equal(inputs["input_ids"].numpy(), ids)
  np.testing.assert_allclose(inputs["pixel_values"].numpy().transpose(0, 2, 3, 1), pixels,
                             atol=1e-6)

  new = 6
  with torch.no_grad():
    expected = hf_model.generate(**inputs, max_new_tokens=new, do_sample=False)[0, ids.shape[1]:]
  gen = GenerateConfig(new, stop_ids=builder.stop_ids, pad_id=builder.pad_id)
  got = Generator(family, config, params)(ids, None, pixels, gen=gen)[0]
  np.testing.assert_array_equal(got[:len(expected)], expected.numpy())
