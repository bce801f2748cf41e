"""Analytic model FLOPs, counted as MaxText does (XLA's cost analysis counts a scanned layer stack
once): per parameter, 2 FLOPs forward, 2 for activation gradients and 2 for weight gradients (6 for
a trained part; 4 or 2 for a frozen one, see `per_param`), counted per token for the decoder, per
patch for a vision encoder and per image token for a connector, plus attention (2 * layers * width
* context per token and pass, causal masking not discounted). Families combine these pieces in
their `train_flops`.
"""

from typing import Any, Sequence

import numpy as np


def count_params(tree: Any) -> int:
  import jax

  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def per_param(name: str, trainable: Sequence[str], chain: Sequence[str]) -> int:
  """FLOPs per parameter and position of the part `name` in the data-flow `chain`: forward 2,
  activation gradients 2 when a part before it trains, weight gradients 2 when it trains."""
  if name in trainable:
    return 6
  upstream = chain[:list(chain).index(name)] if name in chain else ()
  return 4 if any(p in trainable for p in upstream) else 2


def decoder_flops(decoder, params: dict, rows: int, length: int, per: int,
                  attention: bool = True) -> float:
  """A decoder's FLOPs on `rows x length` tokens: its parameters (the embedding table is a
  gather) per token, and QK^T, AV over the whole row per token when `attention`."""
  weights = count_params({k: v for k, v in params.items() if k != "embed"})
  tokens = rows * length
  context = 2 * decoder.num_layers * decoder.num_heads * decoder.head_dim * length * tokens
  return float(per * (weights * tokens + context * attention))


def encoder_flops(params: dict, patches: int, attention_products: float, per: int) -> float:
  """A vision encoder's FLOPs: its parameters per patch, plus `attention_products` (QK^T and AV
  of one forward pass, summed over its layers)."""
  return float(per * (count_params(params) * patches + attention_products))
