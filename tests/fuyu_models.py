"""Tiny Fuyu models and FuyuProcessor-like inputs for tests: per row, one image laid out as the
processor does (`|SPEAKER|` x columns + `|NEWLINE|` per patch row, then `<s>`, the prompt and
`<boa>`), left padded, and the patches `[P, patch_size^2 * channels]` of every image in row
order."""

import numpy as np
import torch
import transformers

from hf_models import left_padded, save, text_config

SPEAKER, NEWLINE, BOS, BOA = 100, 101, 1, 4  # in the tiny vocab of 128
PATCH = 2  # pixels per patch side: 12 values per patch with 3 channels


def fuyu_config(text=None, **kw):
  text = text or text_config("persimmon")
  kw.setdefault("image_token_id", SPEAKER)
  kw.setdefault("patch_size", PATCH)
  kw.setdefault("tie_word_embeddings", text.tie_word_embeddings)
  return transformers.FuyuConfig(text_config=text.to_dict(), **kw)


def tiny(path: str, hf_cfg, seed: int = 0) -> str:
  torch.manual_seed(seed)  # the same model whatever ran before (HF init draws from the global RNG)
  return save(transformers.FuyuForCausalLM(hf_cfg), path, seed=seed)


def load_reference(hf_dir: str):
  return transformers.FuyuForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()


def make_inputs(hf_cfg, grids, seed: int = 0, prompt: int = 4) -> dict:
  """`grids`: per row, the image's (patch rows, patch columns), or None for a text-only row ->
  `input_ids`, `attention_mask` and `image_patches` as FuyuProcessor lays them out."""
  rng = np.random.default_rng(seed)
  features = hf_cfg.patch_size ** 2 * hf_cfg.num_channels
  rows, patches = [], []
  for r, grid in enumerate(grids):
    ids = []
    if grid is not None:
      h, w = grid
      ids = ([SPEAKER] * w + [NEWLINE]) * h
      patches.append(rng.uniform(-1, 1, (h * w, features)).astype(np.float32))
    text = rng.integers(5, SPEAKER, prompt + r).tolist()  # rows of different lengths
    rows.append(ids + [BOS] + text + [BOA])
  input_ids, mask = left_padded(rows)
  out = {"input_ids": input_ids, "attention_mask": mask}
  if patches:
    out["image_patches"] = np.concatenate(patches)
  return out


def sentencepiece_tokenizer(corpus, vocab_size: int = 100):
  """A tiny SentencePiece-like tokenizer as Fuyu-8B's behaves: Unigram pieces over text with `▁`
  prepended and for spaces, `|SPEAKER|`, `|NEWLINE|` and `<0x04>` ordinary pieces (so a run of
  placeholders starts with a lone `▁`, which FuyuProcessor drops), `<s>` `</s>` special and `<s>`
  in front with special tokens on -> `PreTrainedTokenizerFast`."""
  import json

  import tokenizers
  from tokenizers import decoders, models, normalizers, processors, trainers

  normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
  trained = tokenizers.Tokenizer(models.Unigram())
  trained.normalizer = normalizer
  trained.train_from_iterator(corpus, trainer=trainers.UnigramTrainer(
      vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>",
      show_progress=False))
  vocab = [tuple(p) for p in json.loads(trained.to_str())["model"]["vocab"]]
  vocab += [(p, 0.0) for p in ("|SPEAKER|", "|NEWLINE|", "<0x04>", "▁")
            if p not in {v for v, _ in vocab}]
  tok = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=0))
  tok.normalizer = normalizer
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
  tok.add_special_tokens(["<unk>", "<s>", "</s>"])
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                              eos_token="</s>", unk_token="<unk>")
