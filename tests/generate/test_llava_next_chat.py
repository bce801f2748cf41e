"""Chat mode for LLaVA-NeXT: from a converted checkpoint with the processor's files, the prompt's
ids (`<image>` expanded per image as LlavaNextProcessor counts) and arrays (`pixel_values`
[I, tiles, C, H, W] padded with zero tiles, `image_sizes`) equal LlavaNextProcessor's
`apply_chat_template`, and `mmjax generate --image --prompt` answers as transformers' generate."""

import numpy as np
import transformers
from PIL import Image

from gen_helpers import assert_chat_answers, hf_answer
from hf_models import text_config
from llava_next_models import image_processor, llava_next_config, load_reference, tiny
from mmjax import cli
from mmjax.checkpoint import read_metadata
from mmjax.data.tokenizer import train_tiny_tokenizer

N = 10
PROMPT = "what shape is in the picture"
TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' }}"
            "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
            "{{ '<image>\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def test_chat_mode_answers_like_llava_next_processor(tmp_path, capsys):
  corpus = ["what shape is in the picture", "a red square on a blue ground", "the cat sat"] * 30
  tok = train_tiny_tokenizer(corpus, special_tokens=("<unk>", "<s>", "</s>"), vocab_size=120)
  vocab = tok.get_vocab_size()
  tok.add_special_tokens(["<image>"])  # id `vocab`
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<unk>")
  fast.chat_template = TEMPLATE
  hf_cfg = llava_next_config(text=text_config("llama", vocab_size=vocab + 1),
                             image_token_index=vocab)
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=4)
  processor_images = image_processor(hf_cfg)
  fast.save_pretrained(hf_dir)
  processor_images.save_pretrained(hf_dir)
  ckpt = str(tmp_path / "mm")
  assert cli.main(["convert", "--hf", hf_dir, "--out", ckpt, "--quiet"]) == 0

  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate([(30, 100), (20, 24), (5, 120)]):  # wide grid, small, extreme
    paths.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(paths[-1])
  processor = transformers.LlavaNextProcessor(
      image_processor=processor_images, tokenizer=fast, chat_template=TEMPLATE,
      patch_size=hf_cfg.vision_config.patch_size, num_additional_image_tokens=1,
      vision_feature_select_strategy=hf_cfg.vision_feature_select_strategy)
  conversation = [{"role": "user", "content": [{"type": "image", "path": p} for p in paths]
                   + [{"type": "text", "text": PROMPT}]}]
  inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                         return_dict=True, return_tensors="np")
  assert inputs["pixel_values"].shape[:2] == (3, 4)  # the wide image's 3 tiles + base view

  family, config, _ = read_metadata(ckpt)
  ids, pixels = family.prompt_builder(ckpt, config)(PROMPT, paths)
  np.testing.assert_array_equal(ids, inputs["input_ids"])
  np.testing.assert_array_equal(pixels["image_sizes"], inputs["image_sizes"])
  np.testing.assert_allclose(pixels["pixel_values"], inputs["pixel_values"], atol=1e-5, rtol=0)

  model = load_reference(hf_dir)
  expected = hf_answer(model, inputs, fast, N)
  assert expected.strip()
  assert_chat_answers(ckpt, paths, PROMPT, N, expected, capsys)
