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
