"""Chat mode for Llama 3.2 Vision: from a converted checkpoint with the processor's files, the
prompt's ids, tiles, aspect ratios and cross-attention mask equal MllamaProcessor's, and
`mmjax generate --image --prompt` answers as transformers' processor + generate."""

import numpy as np
import pytest
import transformers
from PIL import Image

from gen_helpers import hf_answer
from hf_models import save
from mllama_models import build, mllama_config
from mmjax import cli
from mmjax.checkpoint import read_metadata
from mmjax.data.tokenizer import train_tiny_tokenizer

N = 12
# Without BOS at its start (MllamaProcessor then inserts it) and with it (Llama 3.2's own style).
TEMPLATES = {
    "no_bos": ("{% for message in messages %}{{ message['role'].upper() + ': ' }}"
               "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<|image|>' }}"
               "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ ' ' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"),
    "bos_first": ("{{ bos_token }}{% for message in messages %}{{ message['role'] + ': ' }}"
                  "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
                  "{{ '<|image|>' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                  "{% endfor %}{% if add_generation_prompt %}{{ ' assistant:' }}{% endif %}"),
}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_chat_mode_answers_like_mllama_processor(template, tmp_path, capsys):
  corpus = ["what shape is in the picture", "a red square on a blue ground", "the cat sat"] * 30
  tok = train_tiny_tokenizer(corpus, special_tokens=("<unk>", "<s>", "</s>"), vocab_size=120)
  vocab = tok.get_vocab_size()
  tok.add_special_tokens(["<|image|>"])  # id `vocab`: the first row past the vocabulary
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<unk>")
  hf_cfg = mllama_config(cross_layers=(1, 3), text_layers=4)
  hf_cfg.text_config.vocab_size = vocab
  hf_cfg.image_token_index = vocab
  image_processor = transformers.MllamaImageProcessorPil(size={"height": 28, "width": 28},
                                                         max_image_tiles=4)
  processor = transformers.MllamaProcessor(image_processor=image_processor, tokenizer=fast,
                                           chat_template=TEMPLATES[template])
  hf_dir = save(build(hf_cfg, seed=5), str(tmp_path / "hf"), seed=5)
  processor.save_pretrained(hf_dir)
  assert cli.main(["convert", "--hf", hf_dir, "--out", str(tmp_path / "mm"), "--quiet"]) == 0

  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate([(40, 90), (60, 33)]):  # a 1x3 and a 2x1 tile grid
    paths.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(paths[-1])
  prompt = "what shape is in the picture"
  conversation = [{"role": "user", "content": [{"type": "image", "path": p} for p in paths]
                   + [{"type": "text", "text": prompt}]}]
  inputs = processor.apply_chat_template(conversation, add_generation_prompt=True,
                                         tokenize=True, return_dict=True, return_tensors="np")

  family, config, _ = read_metadata(str(tmp_path / "mm"))
  ids, images = family.prompt_builder(str(tmp_path / "mm"), config)(prompt, paths)
  np.testing.assert_array_equal(ids, inputs["input_ids"])
  np.testing.assert_allclose(images["pixel_values"],
                             np.transpose(inputs["pixel_values"], (0, 1, 2, 4, 5, 3)), atol=1e-5)
  for key in ("aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"):
    np.testing.assert_array_equal(images[key], inputs[key], err_msg=key)

  model = transformers.MllamaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  expected = hf_answer(model, inputs, fast, N)
  assert expected.strip()
  capsys.readouterr()
  assert cli.main(["generate", "--checkpoint", str(tmp_path / "mm"), "--image", paths[0],
                   "--image", paths[1], "--prompt", prompt, "--max-new-tokens", str(N),
                   "--stop", "-1"]) == 0
  assert capsys.readouterr().out == expected + "\n"
