"""The Perceiver Resampler equals transformers' IDEFICS (`IdeficsPerceiverResampler`: LayerNorm,
ReLU MLP, q/k LayerNorms on and off) and Idefics2 (`Idefics2PerceiverResampler`: RMSNorm,
grouped-query heads, gated MLP, a context mask) resamplers, its weights loaded through the
conversion rules with the converter's strict plan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.idefics.perceiver import IdeficsPerceiverResampler
from transformers.models.idefics2.modeling_idefics2 import Idefics2PerceiverResampler

from hf_models import TOLERANCE, add_noise, max_diff, record
from module_params import load_params
from mmjax.connectors.perceiver import PerceiverResampler, ResamplerConfig
from mmjax.convert.tables.perceiver import idefics2_perceiver_rules, idefics_perceiver_rules

D = 32
# name -> (depth, heads, head_dim, latents, IDEFICS q/k LayerNorms)
IDEFICS = {"depth2_heads4": (2, 4, 8, 6, False), "depth3_heads2_qk_norm": (3, 2, 16, 4, True)}
# name -> (depth, heads, kv heads, head_dim, latents)
IDEFICS2 = {"depth2_gqa": (2, 4, 2, 8, 6), "depth1_mha": (1, 4, 4, 8, 3)}


def _context(batch, length, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, length, D)).astype(np.float32)


def _ours(cfg, state_dict, rules, context, mask=None):
  model = PerceiverResampler(cfg)
  args = (jnp.asarray(context),) + (() if mask is None else (jnp.asarray(mask, bool),))
  params = load_params(model, args, state_dict, rules)
  return np.asarray(jax.jit(model.apply)({"params": params}, *args))


@pytest.mark.parametrize("name", sorted(IDEFICS))
def test_idefics_resampler_matches_transformers(name):
  depth, heads, head_dim, latents, qk_norm = IDEFICS[name]
  hf_cfg = transformers.IdeficsConfig(
      vision_config={"embed_dim": D}, perceiver_config={"qk_layer_norms_perceiver": qk_norm})
  torch.manual_seed(0)
  hf = add_noise(IdeficsPerceiverResampler(hf_cfg, D, depth, heads, head_dim, latents),
                 scale=0.2).eval()
  cfg = ResamplerConfig(features=D, num_latents=latents, depth=depth, num_heads=heads,
                        head_dim=head_dim, norm="layer", mlp="relu", qk_norm=qk_norm)
  context = _context(3, 10)
  ours = _ours(cfg, hf.state_dict(), idefics_perceiver_rules(), context)
  with torch.no_grad():
    ref = hf(torch.tensor(context)).numpy()
  assert ours.shape == (3, latents, D)
  diff = max_diff(ours, ref)
  record(f"perceiver/idefics_{name}", diff)
  assert diff <= TOLERANCE, diff


@pytest.mark.parametrize("name", sorted(IDEFICS2))
def test_idefics2_resampler_matches_transformers(name):
  depth, heads, kv_heads, head_dim, latents = IDEFICS2[name]
  hf_cfg = transformers.Idefics2PerceiverConfig(
      hidden_size=D, resampler_n_latents=latents, resampler_depth=depth,
      resampler_n_heads=heads, resampler_head_dim=head_dim, num_key_value_heads=kv_heads,
      hidden_act="silu", rms_norm_eps=1e-6)
  hf_cfg._attn_implementation = "eager"
  torch.manual_seed(0)
  hf = add_noise(Idefics2PerceiverResampler(hf_cfg), scale=0.2).eval()
  cfg = ResamplerConfig(features=D, num_latents=latents, depth=depth, num_heads=heads,
                        num_kv_heads=kv_heads, head_dim=head_dim, norm="rms", norm_eps=1e-6,
                        mlp="gated", activation="silu")
  context = _context(2, 12, seed=1)
  mask = np.ones((2, 12), np.int64)
  mask[1, 7:] = 0  # the second image's padding patches
  ours = _ours(cfg, hf.state_dict(), idefics2_perceiver_rules(), context, mask)
  with torch.no_grad():
    ref = hf(context=torch.tensor(context), attention_mask=torch.tensor(mask)).numpy()
  diff = max_diff(ours, ref)
  record(f"perceiver/idefics2_{name}", diff)
  assert diff <= TOLERANCE, diff
  # The mask matters: attending to the padding patches gives other latents.
  unmasked = _ours(cfg, hf.state_dict(), idefics2_perceiver_rules(), context)
  assert max_diff(unmasked[1], ref[1]) > 1e-3


def test_bad_configs_are_refused():
  with pytest.raises(ValueError, match="do not divide"):
    ResamplerConfig(features=D, num_latents=2, depth=1, num_heads=4, num_kv_heads=3, head_dim=8)
  with pytest.raises(ValueError, match="qk_norm"):
    ResamplerConfig(features=D, num_latents=2, depth=1, num_heads=4, head_dim=8, norm="rms",
                    qk_norm=True)
