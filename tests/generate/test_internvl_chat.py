"""Chat mode for InternVL: from a converted checkpoint with the processor's files, the prompt's
ids (`<img><IMG_CONTEXT>*N</img>` per image) and tiles (a grid + thumbnail, a single tile) equal
InternVLProcessor's, and `mmjax generate --image --prompt` answers as transformers' processor +
generate."""

import numpy as np
import transformers
from PIL import Image
from transformers import processing_utils
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from internvl_models import internvl_config, tiny, tokens_per_tile
from gen_helpers import hf_answer
from hf_models import text_config
from mmjax import cli
from mmjax.checkpoint import read_metadata
from mmjax.data.tokenizer import train_tiny_tokenizer

N = 10
PROMPT = "what shape is in the picture"
TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' }}"
            "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
            "{{ '<IMG_CONTEXT>\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def test_chat_mode_answers_like_internvl_processor(tmp_path, monkeypatch, capsys):
  corpus = ["what shape is in the picture", "a red square on a blue ground", "the cat sat"] * 30
  tok = train_tiny_tokenizer(corpus, special_tokens=("<unk>", "<s>", "</s>"), vocab_size=120)
  vocab = tok.get_vocab_size()
  tok.add_special_tokens(["<IMG_CONTEXT>", "<img>", "</img>", "<video>"])  # vocab .. vocab + 3
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<unk>", extra_special_tokens={"start_image_token": "<img>",
                                               "end_image_token": "</img>",
                                               "context_image_token": "<IMG_CONTEXT>",
                                               "video_token": "<video>"})
  fast.chat_template = TEMPLATE
  image_processor = GotOcr2ImageProcessorPil(
      size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=6,
      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
  hf_cfg = internvl_config(text=text_config("qwen2", vocab_size=vocab + 4), image_token_id=vocab)
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=4)
  fast.save_pretrained(hf_dir)
  image_processor.save_pretrained(hf_dir)
  ckpt = str(tmp_path / "mm")
  assert cli.main(["convert", "--hf", hf_dir, "--out", ckpt, "--quiet"]) == 0

  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate([(30, 100), (20, 24)]):  # a grid of tiles + thumbnail; one tile
    paths.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(paths[-1])
  # InternVLProcessor without its video processor (that needs torchvision; images never reach it).
  check = processing_utils.ProcessorMixin.check_argument_for_proper_class
  monkeypatch.setattr(processing_utils.ProcessorMixin, "check_argument_for_proper_class",
                      lambda self, name, arg: None if arg is None else check(self, name, arg))
  processor = transformers.InternVLProcessor(image_processor=image_processor, tokenizer=fast,
                                             image_seq_length=tokens_per_tile(hf_cfg),
                                             chat_template=TEMPLATE)
  conversation = [{"role": "user", "content": [{"type": "image", "path": p} for p in paths]
                   + [{"type": "text", "text": PROMPT}]}]
  inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                         return_dict=True, return_tensors="np")
  assert inputs["pixel_values"].shape[0] > 3  # the wide image's tiles and thumbnail, one tile

  family, config, _ = read_metadata(ckpt)
  ids, pixels = family.prompt_builder(ckpt, config)(PROMPT, paths)
  np.testing.assert_array_equal(ids, inputs["input_ids"])
  np.testing.assert_allclose(pixels, np.transpose(inputs["pixel_values"], (0, 2, 3, 1)), atol=1e-5)

  model = transformers.InternVLForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  expected = hf_answer(model, inputs, fast, N)
  assert expected.strip()
  capsys.readouterr()
  assert cli.main(["generate", "--checkpoint", ckpt, "--image", paths[0], "--image", paths[1],
                   "--prompt", PROMPT, "--max-new-tokens", str(N), "--stop", "-1"]) == 0
  assert capsys.readouterr().out == expected + "\n"
