"""Tiny random transformers T5 models and their inputs for tests, built offline.

transformers 5 ties every T5's LM head to the shared embedding when it builds one; an untied
model (Flan-T5's shape) is made by giving `lm_head` its own weight before saving, which the
saved file then holds and the loader keeps apart.
"""

import numpy as np
import torch
import transformers

from hf_models import save

PAD, EOS = 0, 1


def t5_text_config(feed_forward_proj="gated-gelu", tie=False, **kw) -> dict:
  """Hidden 32, 2 + 2 layers, 4 heads; `tie` False: Flan-T5 (untied head, no output scaling)."""
  base = dict(model_type="t5", vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2,
              num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
              feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie, pad_token_id=PAD,
              eos_token_id=EOS, decoder_start_token_id=PAD, dropout_rate=0.0)
  return {**base, **kw}


def untie(lm) -> None:
  """Gives a built `T5ForConditionalGeneration`'s LM head a weight of its own."""
  lm.lm_head.weight = torch.nn.Parameter(torch.randn_like(lm.shared.weight) * lm.config.d_model ** -0.5)


def tiny_t5(path: str, text: dict, seed: int = 0) -> str:
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**text))
  if text.get("tie_word_embeddings") is False:
    untie(model)
  return save(model, path, seed=seed)


def load_t5(hf_dir: str):
  return transformers.T5ForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()


def padded_rows(vocab: int, lengths, side: str = "right", seed: int = 0, low: int = 2):
  """`input_ids`, `attention_mask` of random token rows of `lengths`, padded on `side`."""
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids = np.full((len(lengths), t), PAD, np.int64)
  mask = np.zeros_like(ids)
  for row, n in enumerate(lengths):
    cols = slice(0, n) if side == "right" else slice(t - n, t)
    ids[row, cols] = rng.integers(low, vocab, n)
    mask[row, cols] = 1
  return ids, mask


def decoder_rows(vocab: int, batch: int, length: int, seed: int = 1) -> np.ndarray:
  """Decoder inputs as teacher forcing makes them: the start token, then random tokens."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, vocab, (batch, length)).astype(np.int64)
  ids[:, 0] = PAD
  return ids


def hf_seq2seq_greedy(model, inputs: dict, n: int) -> np.ndarray:
  """transformers' `n` greedy ids after the decoder's start token (no stop token)."""
  model.generation_config.eos_token_id = None
  lm = getattr(model, "language_model", model)
  lm.generation_config.eos_token_id = None
  with torch.no_grad():
    out = model.generate(**{k: torch.tensor(v) for k, v in inputs.items()}, do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, pad_token_id=PAD)
  out = out.numpy()
  assert (out[:, 0] == PAD).all()  # the decoder start token comes first
  return out[:, 1:]


# BLIP-2 / InstructBLIP with a Flan-T5 language model: BLIP-2's tiny bridge (`blip2_models`), a
# T5 text model, and processors with a T5-like tokenizer (`</s>` appended, padding on the right).
WORDS = [f"w{i}" for i in range(50)]
IMAGE = 3 + len(WORDS)  # the id the processors' added `<image>` takes (53)


def t5_tokenizer(padding_side: str = "right") -> transformers.PreTrainedTokenizerFast:
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {"<pad>": PAD, "</s>": EOS, "<unk>": 2, **{w: 3 + i for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                     special_tokens=[("</s>", EOS)])
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
      padding_side=padding_side)


def blip2_t5_config(depth=2, freq=1, queries=3, instruct=False, **text):
  """`blip2_models`' tiny bridge (Q-Former of `depth` layers crossing every `freq`-th) with a
  Flan-T5-shaped text model."""
  from blip2_models import blip2_config, instructblip_config

  base = (instructblip_config(depth, freq, queries) if instruct
          else blip2_config(depth, freq, queries=queries)).to_dict()
  cls = transformers.InstructBlipConfig if instruct else transformers.Blip2Config
  strip = lambda d: {k: v for k, v in d.items() if k != "model_type"}
  return cls(vision_config=strip(base["vision_config"]), qformer_config=strip(base["qformer_config"]),
             text_config=t5_text_config(**text), num_query_tokens=queries,
             image_token_index=IMAGE)


def tiny_blip2_t5(path: str, hf_cfg, seed: int = 0) -> str:
  torch.manual_seed(seed)
  cls = (transformers.InstructBlipForConditionalGeneration
         if isinstance(hf_cfg, transformers.InstructBlipConfig)
         else transformers.Blip2ForConditionalGeneration)
  model = cls(hf_cfg)
  if hf_cfg.text_config.to_dict().get("scale_decoder_outputs") is False:  # Flan-T5: untied
    untie(model.language_model)
  return save(model, path, seed=seed)


def load_blip2_t5(hf_dir: str):
  import json
  import os

  with open(os.path.join(hf_dir, "config.json")) as f:
    instruct = json.load(f)["model_type"] == "instructblip"
  cls = (transformers.InstructBlipForConditionalGeneration if instruct
         else transformers.Blip2ForConditionalGeneration)
  return cls.from_pretrained(hf_dir, attn_implementation="eager").eval()


def blip2_t5_inputs(hf_cfg, lengths=(6, 3, 1), seed: int = 0) -> dict[str, np.ndarray]:
  """The processor's arrays for one random image and `lengths[i]` random words a row (image
  tokens, then the prompt and `</s>`, right-padded); InstructBLIP's add the Q-Former's
  instruction."""
  from PIL import Image
  from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

  rng = np.random.default_rng(seed)
  prompts = [" ".join(rng.choice(WORDS, n)) for n in lengths]
  images = [Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 33, 3), dtype=np.uint8))
            for i in range(len(lengths))]
  side = hf_cfg.vision_config.image_size
  image_processor = BlipImageProcessorPil(size={"height": side, "width": side})
  n = hf_cfg.num_query_tokens
  if isinstance(hf_cfg, transformers.InstructBlipConfig):
    processor = transformers.InstructBlipProcessor(image_processor, t5_tokenizer(),
                                                   t5_tokenizer(), num_query_tokens=n)
    keys = ("input_ids", "attention_mask", "pixel_values", "qformer_input_ids",
            "qformer_attention_mask")
  else:
    processor = transformers.Blip2Processor(image_processor, t5_tokenizer(), num_query_tokens=n)
    keys = ("input_ids", "attention_mask", "pixel_values")
  assert processor.tokenizer.convert_tokens_to_ids("<image>") == IMAGE
  out = processor(images=images, text=prompts, padding=True, return_tensors="np")
  return {k: out[k].astype(np.float32 if k == "pixel_values" else np.int64) for k in keys}
