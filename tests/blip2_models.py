"""Tiny random BLIP-2 models and `Blip2Processor` inputs for tests, built offline.

The processor is transformers' own: `BlipImageProcessorPil` (resize to the tower's square,
normalise) and a tiny word-level tokenizer shaped like OPT's (`<pad>` 1, `</s>` 2 as BOS in front
of every prompt), to which `Blip2Processor` adds `<image>`; it puts `num_query_tokens` image
tokens in front of each (left-padded) prompt.
"""

import numpy as np
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from hf_models import save

WORDS = [f"w{i}" for i in range(50)]
VOCAB = 64  # the text model's rows: 4 specials, 50 words, `<image>` (54), unused rows
PAD, BOS = 1, 2
IMAGE = 4 + len(WORDS)  # the id Blip2Processor's added `<image>` takes


def tokenizer() -> transformers.PreTrainedTokenizerFast:
  vocab = {"<s>": 0, "<pad>": PAD, "</s>": BOS, "<unk>": 3, **{w: 4 + i for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.post_processor = processors.TemplateProcessing(single="</s> $A",
                                                     special_tokens=[("</s>", BOS)])
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
      unk_token="<unk>", padding_side="left")


def processor(hf_cfg) -> transformers.Blip2Processor:
  side = hf_cfg.vision_config.image_size
  images = BlipImageProcessorPil(size={"height": side, "width": side})
  out = transformers.Blip2Processor(images, tokenizer(), num_query_tokens=hf_cfg.num_query_tokens)
  assert out.tokenizer.convert_tokens_to_ids("<image>") == IMAGE
  return out


def blip2_config(depth=2, freq=1, text="opt", queries=3, vision_act="gelu"):
  """Hidden 32 text model (2 layers), a 24-wide two-layer EVA tower over 30 px images of 6 px
  patches, a 32-wide Q-Former of `depth` layers crossing every `freq`-th."""
  vision = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                image_size=30, patch_size=6, hidden_act=vision_act)
  qformer = dict(hidden_size=32, num_hidden_layers=depth, num_attention_heads=4,
                 intermediate_size=48, cross_attention_frequency=freq)
  if text == "opt":
    text_cfg = dict(model_type="opt", vocab_size=VOCAB, hidden_size=32, ffn_dim=48,
                    num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                    word_embed_proj_dim=32, pad_token_id=PAD, bos_token_id=BOS,
                    eos_token_id=BOS)
  else:
    text_cfg = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=64, rms_norm_eps=1e-5, pad_token_id=PAD,
                    bos_token_id=BOS, eos_token_id=BOS, tie_word_embeddings=False)
  return transformers.Blip2Config(vision_config=vision, qformer_config=qformer,
                                  text_config=text_cfg, num_query_tokens=queries,
                                  image_token_index=IMAGE)


def build(hf_cfg, seed: int = 0):
  torch.manual_seed(seed)  # the same model whatever ran before
  return transformers.Blip2ForConditionalGeneration(hf_cfg)


def tiny(path: str, hf_cfg, seed: int = 0) -> str:
  return save(build(hf_cfg, seed), path, seed=seed)


def load_reference(hf_dir: str):
  return transformers.Blip2ForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()


def make_inputs(hf_cfg, lengths=(6, 3, 1), seed: int = 0) -> dict[str, np.ndarray]:
  """`Blip2Processor`'s arrays for one random image and a prompt of `lengths[i]` random words a
  row, left-padded."""
  rng = np.random.default_rng(seed)
  prompts = [" ".join(rng.choice(WORDS, n)) for n in lengths]
  images = [Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 33, 3), dtype=np.uint8))
            for i in range(len(lengths))]
  out = processor(hf_cfg)(images=images, text=prompts, padding=True, return_tensors="np")
  return {"input_ids": out["input_ids"].astype(np.int64),
          "attention_mask": out["attention_mask"].astype(np.int64),
          "pixel_values": out["pixel_values"].astype(np.float32)}


def hf_greedy(model, inputs, n: int) -> np.ndarray:
  """transformers' `n` greedy ids after the prompt (no stop token)."""
  model.generation_config.eos_token_id = None
  model.language_model.generation_config.eos_token_id = None
  with torch.no_grad():
    out = model.generate(**{k: torch.tensor(v) for k, v in inputs.items()}, do_sample=False,
                         max_new_tokens=n, pad_token_id=PAD)
  return out[:, inputs["input_ids"].shape[1]:].numpy()


# InstructBLIP: the same tiny parts, a Q-Former with its own 64-word vocabulary and 20 positions.
def instructblip_config(depth=2, freq=2, queries=3):
  base = blip2_config(depth=depth, freq=freq, text="llama", queries=queries).to_dict()
  qformer = {**base["qformer_config"], "vocab_size": VOCAB, "max_position_embeddings": 20}
  for key in ("model_type", "use_qformer_text_input"):
    qformer.pop(key, None)
  vision = {k: v for k, v in base["vision_config"].items() if k != "model_type"}
  return transformers.InstructBlipConfig(vision_config=vision, qformer_config=qformer,
                                         text_config=base["text_config"],
                                         num_query_tokens=queries, image_token_index=IMAGE)


def instructblip_tiny(path: str, hf_cfg, seed: int = 0) -> str:
  torch.manual_seed(seed)
  return save(transformers.InstructBlipForConditionalGeneration(hf_cfg), path, seed=seed)


def instructblip_reference(hf_dir: str):
  return transformers.InstructBlipForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()


def instructblip_processor(hf_cfg) -> transformers.InstructBlipProcessor:
  side = hf_cfg.vision_config.image_size
  images = BlipImageProcessorPil(size={"height": side, "width": side})
  qformer_tokenizer = tokenizer()
  qformer_tokenizer.padding_side = "right"  # BERT's
  out = transformers.InstructBlipProcessor(images, tokenizer(), qformer_tokenizer,
                                           num_query_tokens=hf_cfg.num_query_tokens)
  assert out.tokenizer.convert_tokens_to_ids("<image>") == IMAGE
  return out


def make_instructblip_inputs(hf_cfg, lengths=(6, 3, 1), seed: int = 0) -> dict[str, np.ndarray]:
  """`InstructBlipProcessor`'s arrays: the prompt both as the language model's (image tokens,
  left padding) and as the Q-Former's instruction (right padding)."""
  rng = np.random.default_rng(seed)
  prompts = [" ".join(rng.choice(WORDS, n)) for n in lengths]
  images = [Image.fromarray(rng.integers(0, 256, (20 + 7 * i, 33, 3), dtype=np.uint8))
            for i in range(len(lengths))]
  out = instructblip_processor(hf_cfg)(images=images, text=prompts, padding=True,
                                       return_tensors="np")
  return {k: out[k].astype(np.float32 if k == "pixel_values" else np.int64)
          for k in ("input_ids", "attention_mask", "pixel_values", "qformer_input_ids",
                    "qformer_attention_mask")}
