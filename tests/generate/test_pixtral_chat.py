"""Chat mode for Pixtral and Mistral3: from a converted checkpoint with the processor's files,
the prompt's ids (each `[IMG]` laid out as rows of `[IMG]` ended by `[IMG_BREAK]`, the last
`[IMG_END]`) and arrays (`pixel_values [I, C, H, W]` zero-padded to the largest image,
`image_sizes`) equal PixtralProcessor's `apply_chat_template`, and `mmjax generate --image
--prompt` answers as transformers' generate."""

import numpy as np
import pytest
import transformers
from PIL import Image

from gen_helpers import assert_chat_answers, hf_answer
from hf_models import text_config
from mmjax import cli
from mmjax.checkpoint import read_metadata
from mmjax.data.tokenizer import train_tiny_tokenizer
from pixtral_models import (image_processor, load_reference, merge_size, mistral3_config,
                            pixtral_config, pixtral_processor_class, tiny)

N = 10
PROMPT = "what shape is in the picture"
TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ '[INST]' }}"
            "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
            "{{ '[IMG]' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ '[/INST]' }}"
            "{% endfor %}")
CONFIGS = {"pixtral": pixtral_config, "mistral3": mistral3_config}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_chat_mode_answers_like_pixtral_processor(tmp_path, capsys, name):
  corpus = ["what shape is in the picture", "a red square on a blue ground", "the cat sat"] * 30
  tok = train_tiny_tokenizer(corpus, special_tokens=("<unk>", "<s>", "</s>"), vocab_size=120)
  vocab = tok.get_vocab_size()
  tok.add_special_tokens(["[IMG]", "[IMG_BREAK]", "[IMG_END]", "[INST]", "[/INST]"])
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<unk>")
  fast.chat_template = TEMPLATE
  make_config = CONFIGS[name]
  hf_cfg = make_config(text=text_config("mistral", vocab_size=vocab + 5),
                       **{"image_token_index" if name == "mistral3" else "image_token_id": vocab})
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=4)
  processor = pixtral_processor_class()(
      image_processor=image_processor(hf_cfg), tokenizer=fast, chat_template=TEMPLATE,
      patch_size=hf_cfg.vision_config.patch_size, spatial_merge_size=merge_size(hf_cfg))
  processor.save_pretrained(hf_dir)
  ckpt = str(tmp_path / "mm")
  assert cli.main(["convert", "--hf", hf_dir, "--out", ckpt, "--quiet"]) == 0

  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate([(30, 100), (20, 24), (9, 120)]):  # wide, small, extreme
    paths.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(paths[-1])
  conversation = [{"role": "user", "content": [{"type": "image", "path": p} for p in paths]
                   + [{"type": "text", "text": PROMPT}]}]
  inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                         return_dict=True, return_tensors="np")
  assert len(set(map(tuple, inputs["image_sizes"]))) == 3  # three sizes, padded to the largest

  family, config, _ = read_metadata(ckpt)
  assert family.name == name
  ids, pixels = family.prompt_builder(ckpt, config)(PROMPT, paths)
  np.testing.assert_array_equal(ids, inputs["input_ids"])
  np.testing.assert_array_equal(pixels["image_sizes"], inputs["image_sizes"])
  np.testing.assert_allclose(pixels["pixel_values"], inputs["pixel_values"], atol=1e-5, rtol=0)

  model = load_reference(hf_dir, hf_cfg)
  expected = hf_answer(model, inputs, fast, N)
  assert expected.strip()
  assert_chat_answers(ckpt, paths, PROMPT, N, expected, capsys)
