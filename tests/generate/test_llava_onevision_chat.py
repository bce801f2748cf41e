"""Chat mode for LLaVA-OneVision: from a converted checkpoint with the processor's files, the
prompt's ids and arrays equal LlavaOnevisionProcessor's `apply_chat_template` (one image: AnyRes,
the grid shrunk by anyres_max; three images: a padded square each, `batch_num_images`), and
`mmjax generate --image --prompt` answers as transformers' generate."""

import numpy as np
import transformers
from PIL import Image

from gen_helpers import assert_chat_answers, hf_answer
from hf_models import text_config
from llava_onevision_models import image_processor, load_reference, onevision_config, tiny
from mmjax import cli
from mmjax.checkpoint import read_metadata
from mmjax.data.tokenizer import train_tiny_tokenizer

N = 8
PROMPT = "what shape is in the picture"
TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' }}"
            "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
            "{{ '<image>\\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")


def test_chat_mode_answers_like_llava_onevision_processor(tmp_path, capsys, monkeypatch):
  # No video processor here (transformers' needs torchvision): its class check is skipped.
  monkeypatch.setattr(transformers.LlavaOnevisionProcessor, "check_argument_for_proper_class",
                      lambda self, name, arg: None)
  corpus = ["what shape is in the picture", "a red square on a blue ground", "the cat sat"] * 30
  tok = train_tiny_tokenizer(corpus, special_tokens=("<unk>", "<s>", "</s>"), vocab_size=120)
  vocab = tok.get_vocab_size()
  tok.add_special_tokens(["<image>", "<video>"])  # ids `vocab`, `vocab + 1`
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<unk>")
  fast.chat_template = TEMPLATE
  hf_cfg = onevision_config(text=text_config("qwen2", vocab_size=vocab + 2),
                            image_token_index=vocab, video_token_index=vocab + 1,
                            vision_aspect_ratio="anyres_max_1")
  hf_dir = tiny(str(tmp_path / "hf"), hf_cfg, seed=4)
  processor_images = image_processor(hf_cfg)
  fast.save_pretrained(hf_dir)
  processor_images.save_pretrained(hf_dir)
  ckpt = str(tmp_path / "mm")
  assert cli.main(["convert", "--hf", hf_dir, "--out", ckpt, "--quiet"]) == 0

  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate([(90, 100), (20, 24), (5, 120)]):  # a grid anyres_max shrinks, ...
    paths.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(paths[-1])
  v = hf_cfg.vision_config
  processor = transformers.LlavaOnevisionProcessor(
      image_processor=processor_images, tokenizer=fast, video_processor=None,
      chat_template=TEMPLATE,
      num_image_tokens=(v.image_size // v.patch_size) ** 2,
      vision_feature_select_strategy=hf_cfg.vision_feature_select_strategy,
      vision_aspect_ratio=hf_cfg.vision_aspect_ratio)
  family, config, _ = read_metadata(ckpt)
  build = family.prompt_builder(ckpt, config)
  for images in (paths[:1], paths):
    conversation = [{"role": "user", "content": [{"type": "image", "path": p} for p in images]
                     + [{"type": "text", "text": PROMPT}]}]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="np")
    ids, arrays = build(PROMPT, images)
    np.testing.assert_array_equal(ids, inputs["input_ids"])
    for key in ("image_sizes", "batch_num_images"):
      np.testing.assert_array_equal(arrays[key], inputs[key])
    np.testing.assert_allclose(arrays["pixel_values"], inputs["pixel_values"], atol=1e-5, rtol=0)
  assert inputs["batch_num_images"].tolist() == [3]

  expected = hf_answer(load_reference(hf_dir), inputs, fast, N)
  assert expected.strip()
  assert_chat_answers(ckpt, paths, PROMPT, N, expected, capsys)
