"""Flamingo's gated cross-attention layer (`gated_cross`) equals transformers' IDEFICS
`IdeficsGatedCrossAttentionLayer` ("float" and "vector" gates, q/k norms on and off, image states
of their own width, tokens that see no image, a padding image), its weights loaded through the
conversion rules with the converter's strict plan; a fresh layer adds nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.idefics.modeling_idefics import IdeficsGatedCrossAttentionLayer

from hf_models import TOLERANCE, add_noise, max_diff, record
from module_params import load_params
from mmjax.convert.tables.gated_cross import gated_cross_layer_rules
from mmjax.decoders.config import DecoderConfig
from mmjax.decoders.cross import CrossInputs
from mmjax.decoders.gated_cross import GatedCrossDecoderBlock
from mmjax.decoders.llama import LayerContext

D, DV, T, S = 64, 32, 7, 6  # text width, image width, text tokens, image states
CASES = {"float_gate": ("float", False), "vector_gate_qk_norm": ("vector", True)}


def _config(gate, qk_norm) -> DecoderConfig:
  return DecoderConfig(vocab_size=32, hidden_size=D, intermediate_size=96, num_layers=1,
                       num_heads=4, num_kv_heads=4, head_dim=16, rms_norm_eps=1e-6,
                       cross_attention_kind="gated_cross", cross_attention_gate=gate,
                       cross_attention_qk_norm=qk_norm)


def _inputs(seed=0):
  """Text `[B, T, D]`, image states `[B, S, DV]` (two images of three states each), which states
  each token sees `[B, T, S]`: row 0's first tokens see no image yet, row 1's second image is
  padding (seen by no token)."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, T, D)).astype(np.float32)
  states = rng.normal(size=(2, S, DV)).astype(np.float32)
  sees = np.zeros((2, T, S), bool)
  sees[0, 2:5, :3] = True  # tokens 2-4 follow image 0
  sees[0, 5:, 3:] = True  # tokens 5-6 follow image 1
  sees[1, :, :3] = True
  return x, states, sees


def _ours(cfg, state_dict, x, states, sees):
  row_mask = sees.any(-1)
  ctx = LayerContext(mask=None, rope=None, cross=CrossInputs(
      jnp.asarray(states), jnp.asarray(sees[:, None]), jnp.asarray(row_mask, jnp.float32)))
  block = GatedCrossDecoderBlock(cfg)
  args = (jnp.asarray(x), ctx, None)
  params = load_params(block, args, state_dict, gated_cross_layer_rules()) if state_dict else \
      block.init(jax.random.key(0), *args)["params"]
  out, _ = jax.jit(block.apply)({"params": params}, *args)
  return np.asarray(out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gated_cross_layer_matches_transformers(name):
  gate, qk_norm = CASES[name]
  hf_cfg = transformers.IdeficsConfig(
      hidden_size=D, intermediate_size=96, num_attention_heads=4, rms_norm_eps=1e-6,
      alpha_type=gate, qk_layer_norms=qk_norm, vision_config={"embed_dim": DV})
  hf_cfg._attn_implementation = "eager"
  torch.manual_seed(0)
  hf = add_noise(IdeficsGatedCrossAttentionLayer(hf_cfg), scale=0.3).eval()  # gates off zero
  x, states, sees = _inputs()
  ours = _ours(_config(gate, qk_norm), hf.state_dict(), x, states, sees)
  additive = np.where(sees, 0.0, np.finfo(np.float32).min)[:, None].astype(np.float32)
  with torch.no_grad():
    ref = hf(torch.tensor(x), image_hidden_states=torch.tensor(states),
             image_attention_mask=torch.tensor(additive),
             cross_attention_gate=torch.tensor(sees.any(-1).astype(np.float32))).numpy()
  diff = max_diff(ours, ref)
  record(f"gated_cross/{name}", diff)
  assert diff <= TOLERANCE, diff
  assert not np.allclose(ours, x, atol=1e-3)  # the gates are open: the layer adds something


def test_a_fresh_layer_adds_nothing():
  x, states, sees = _inputs(1)
  for gate in ("float", "vector"):
    np.testing.assert_array_equal(_ours(_config(gate, False), None, x, states, sees), x)
