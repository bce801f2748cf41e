"""The checks of BLIP-2's and InstructBLIP's chat tests (`test_blip2_chat.py`,
`test_instructblip_chat.py`, and with Flan-T5 `test_blip2_t5_chat.py`,
`test_instructblip_t5_chat.py`; one file each, as each compiles its own generation programs):
from a converted checkpoint with the processor's files (InstructBLIP's Q-Former tokenizer, a BERT
WordPiece one, in `qformer_tokenizer/`), the builder's `input_ids` (the image tokens before the
BOS; with T5's tokenizer, no BOS and `</s>` last), pixels (within 1e-5) and Q-Former instruction
equal `Blip2Processor` / `InstructBlipProcessor(images=, text=)`'s for one image (shrunk and
enlarged) and for a text-only prompt, and `mmjax generate --image --prompt` answers as
transformers' greedy `generate` on the processor's arrays."""

import numpy as np
import pytest
import transformers
from PIL import Image
from tokenizers.implementations import BertWordPieceTokenizer
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

import blip2_models
import t5_models
from gen_helpers import assert_chat_answers
from hf_models import sentencepiece_tokenizer
from mmjax import cli
from mmjax.checkpoint import read_metadata

N = 6
PROMPT = "what shape is in the picture"
CORPUS = [PROMPT, "a red square on a blue ground", "the cat sat"] * 20
IMAGES = [(20, 33), (45, 41)]  # shrunk on one side and enlarged on the other; shrunk
T5 = ("blip-2-t5", "instructblip-t5")
T5_PROMPT = "w4 w17 w8 w30 w2 w11"  # in the word-level T5 tokenizer's vocabulary (`t5_models`)


def prompt_of(name) -> str:
  return T5_PROMPT if name in T5 else PROMPT


def _qformer_tokenizer(corpus=CORPUS) -> transformers.PreTrainedTokenizerFast:
  """A tiny BERT tokenizer as InstructBLIP's Q-Former reads (lower case, `[CLS] ... [SEP]`)."""
  bert = BertWordPieceTokenizer(lowercase=True)
  bert.train_from_iterator(corpus, vocab_size=60, show_progress=False)
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=bert._tokenizer, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
      unk_token="[UNK]", mask_token="[MASK]", padding_side="right")


def _build(root, name):
  """(hf dir, checkpoint dir, processor, language model tokenizer) of a tiny `name` model whose
  vocabulary is the SentencePiece tokenizer's plus the processor's `<image>`."""
  fast = sentencepiece_tokenizer(CORPUS)
  side = 30
  images = BlipImageProcessorPil(size={"height": side, "width": side})
  if name == "blip-2":
    processor = transformers.Blip2Processor(images, fast, num_query_tokens=3)
    hf_cfg = blip2_models.blip2_config(text="opt")
  else:
    qformer = _qformer_tokenizer()
    processor = transformers.InstructBlipProcessor(images, fast, qformer, num_query_tokens=3)
    hf_cfg = blip2_models.instructblip_config()
    hf_cfg.qformer_config.vocab_size = len(qformer)
  image = fast.convert_tokens_to_ids("<image>")  # added by the processor
  assert image == len(fast) - 1 and hf_cfg.vision_config.image_size == side
  hf_cfg.image_token_index = image
  text = hf_cfg.text_config
  text.vocab_size, text.bos_token_id, text.eos_token_id, text.pad_token_id = len(fast), 1, 2, 0
  hf_dir = str(root / "hf")
  if name == "blip-2":
    blip2_models.tiny(hf_dir, hf_cfg, seed=5)
  else:
    blip2_models.instructblip_tiny(hf_dir, hf_cfg, seed=5)
  processor.save_pretrained(hf_dir)
  ckpt = str(root / "mm")
  assert cli.main(["convert", "--hf", hf_dir, "--out", ckpt, "--quiet"]) == 0
  return hf_dir, ckpt, processor, fast


def _build_t5(root, name):
  """`_build` with a Flan-T5 language model (`t5_models`' tiny one) and a T5-shaped tokenizer
  (`<pad>` 0, `</s>` 1 appended, no BOS; the processor adds `<image>`)."""
  fast = t5_models.t5_tokenizer()
  side = 30
  images = BlipImageProcessorPil(size={"height": side, "width": side})
  hf_cfg = t5_models.blip2_t5_config(instruct=name == "instructblip-t5")
  if name == "blip-2-t5":
    processor = transformers.Blip2Processor(images, fast, num_query_tokens=3)
  else:
    qformer = _qformer_tokenizer(CORPUS + [T5_PROMPT] * 20)
    processor = transformers.InstructBlipProcessor(images, fast, qformer, num_query_tokens=3)
    hf_cfg.qformer_config.vocab_size = len(qformer)
  assert fast.convert_tokens_to_ids("<image>") == hf_cfg.image_token_index
  assert hf_cfg.vision_config.image_size == side
  hf_dir = t5_models.tiny_blip2_t5(str(root / "hf"), hf_cfg, seed=5)
  processor.save_pretrained(hf_dir)
  ckpt = str(root / "mm")
  assert cli.main(["convert", "--hf", hf_dir, "--out", ckpt, "--quiet"]) == 0
  return hf_dir, ckpt, processor, fast


def chat_model(root, name):
  """(hf dir, checkpoint dir, processor, tokenizer, image paths) of a tiny converted `name`
  (`blip-2`, `instructblip`, `blip-2-t5` or `instructblip-t5`) under `root`."""
  rng = np.random.default_rng(0)
  paths = []
  for i, size in enumerate(IMAGES):
    paths.append(str(root / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
  return (*(_build_t5 if name in T5 else _build)(root, name), paths)


def _processor_arrays(processor, prompt, path=None):
  kw = {} if path is None else {"images": Image.open(path).convert("RGB")}
  out = processor(text=prompt, return_tensors="np", **kw)
  return {k: np.asarray(v) for k, v in out.items()}


def check_builder_arrays(model, name):
  """The builder's arrays equal the processor's for each image and without one."""
  _, ckpt, processor, _, paths = model
  family, config, _ = read_metadata(ckpt)
  assert family.name == name
  builder = family.prompt_builder(ckpt, config)
  prompt = prompt_of(name)
  for path in paths:
    expected = _processor_arrays(processor, prompt, path)
    np.testing.assert_array_equal(expected["attention_mask"], 1)
    ids, arrays = builder(prompt, [path])
    np.testing.assert_array_equal(ids, expected["input_ids"])
    assert np.all(ids[0, :3] == config.image_token_id)
    if name in T5:  # the images, the prompt, `</s>`
      assert ids[0, 3] != t5_models.EOS and ids[0, -1] == t5_models.EOS
    else:  # the images, then the BOS
      assert ids[0, 3] == 1
    if name == "blip-2":  # NHWC pixels, as the generic builder returns them
      arrays = {"pixel_values": np.transpose(arrays, (0, 3, 1, 2))}
    if name.startswith("instructblip"):
      for key in ("qformer_input_ids", "qformer_attention_mask"):
        np.testing.assert_array_equal(arrays[key], expected[key])
    np.testing.assert_allclose(arrays["pixel_values"], expected["pixel_values"], atol=1e-5,
                               rtol=0)
  ids, arrays = builder(prompt, [])
  assert arrays is None
  np.testing.assert_array_equal(ids, _processor_arrays(processor, prompt)["input_ids"])
  with pytest.raises(ValueError, match="one image per prompt"):
    builder(prompt, paths)
  with pytest.raises(ValueError, match="holds the image token"):
    builder("<image> " + prompt, paths[:1])


def check_export_keeps_the_qformer_tokenizer(model, tmp_path):
  """`mmjax export` writes `qformer_tokenizer/` back: the processor loads from the export and
  makes the same Q-Former instruction."""
  _, ckpt, processor, _, _ = model
  back = str(tmp_path / "back")
  assert cli.main(["export", "--checkpoint", ckpt, "--out", back, "--quiet"]) == 0
  reloaded = transformers.InstructBlipProcessor.from_pretrained(back)
  for key in ("qformer_input_ids", "qformer_attention_mask"):
    np.testing.assert_array_equal(_processor_arrays(reloaded, PROMPT)[key],
                                  _processor_arrays(processor, PROMPT)[key])


def check_chat_answer(model, name, capsys):
  """`mmjax generate --image --prompt` prints transformers' greedy answer (its tokens decoded)
  on the processor's arrays for the same prompt and image."""
  hf_dir, ckpt, processor, fast, paths = model
  prompt = prompt_of(name)
  inputs = _processor_arrays(processor, prompt, paths[0])
  if name in T5:  # the answer follows the decoder's start token
    ids = t5_models.hf_seq2seq_greedy(t5_models.load_blip2_t5(hf_dir), inputs, N)
  else:
    reference = (blip2_models.load_reference if name == "blip-2"
                 else blip2_models.instructblip_reference)(hf_dir)
    ids = blip2_models.hf_greedy(reference, inputs, N)
  expected = fast.decode(ids[0], skip_special_tokens=True)
  assert expected.strip()
  assert_chat_answers(ckpt, paths[:1], prompt, N, expected, capsys)
