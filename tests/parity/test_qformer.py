"""The Q-Former equals transformers' `Blip2QFormerModel` (queries alone, and queries with text rows
under the all-see-all mask, as InstructBLIP's instruction rows run), its weights loaded through
the conversion rules with the converter's strict plan; the three masks' structure.

Depths and cross-attention frequencies: 2 / 1 (every layer crosses), 3 / 2 (a group and a
remainder), 4 / 3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_models import TOLERANCE, add_noise, max_diff, record
from module_params import load_params
from mmjax.connectors.qformer import QFormer, QFormerConfig, self_attention_mask
from mmjax.convert.rules import Rule
from mmjax.convert.tables.common import prefixed
from mmjax.convert.tables.qformer import QUERY_TOKENS, qformer_rules

D, E, Q = 32, 24, 3  # Q-Former width, image feature width, queries
CASES = {"depth2_freq1": (2, 1), "depth3_freq2": (3, 2), "depth4_freq3": (4, 3)}


class _WithQueries(torch.nn.Module):
  """transformers' Q-Former with BLIP-2's query tokens beside it (keys `qformer.*`)."""

  def __init__(self, hf_cfg):
    super().__init__()
    self.query_tokens = torch.nn.Parameter(torch.zeros(1, Q, D))
    self.qformer = transformers.Blip2QFormerModel(hf_cfg)


def _build(depth, freq, text_input, seed=0):
  hf_cfg = transformers.Blip2QFormerConfig(
      hidden_size=D, num_hidden_layers=depth, num_attention_heads=4, intermediate_size=48,
      cross_attention_frequency=freq, encoder_hidden_size=E, use_qformer_text_input=text_input)
  torch.manual_seed(seed)
  hf = add_noise(_WithQueries(hf_cfg), seed=seed, scale=0.2).eval()
  cfg = QFormerConfig(hidden_size=D, num_layers=depth, num_heads=4, intermediate_size=48,
                      encoder_hidden_size=E, num_queries=Q, cross_attention_frequency=freq,
                      text_input=text_input)
  rules = prefixed(qformer_rules(cfg), "qformer.", "") + [QUERY_TOKENS]
  return hf, cfg, rules


def _images(batch=2, length=7, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, length, E)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(CASES))
def test_query_rows_match_transformers(name):
  hf, cfg, rules = _build(*CASES[name], text_input=False)
  images = _images()
  model = QFormer(cfg)
  params = load_params(model, (jnp.asarray(images),), hf.state_dict(), rules)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(images)).queries)
  with torch.no_grad():
    ref = hf.qformer(query_embeds=hf.query_tokens.expand(2, -1, -1),
                     encoder_hidden_states=torch.tensor(images)).last_hidden_state.numpy()
  diff = max_diff(ours, ref)
  record(f"qformer/{name}", diff)
  assert ours.shape == (2, Q, D) and diff <= TOLERANCE, diff


@pytest.mark.parametrize("name", ["depth2_freq1", "depth3_freq2"])
def test_text_rows_all_see_all_match_transformers(name):
  """Queries and right-padded text rows together (`mask='itm'`); both outputs compared on the
  real rows."""
  hf, cfg, rules = _build(*CASES[name], text_input=True)
  images = _images(seed=1)
  rng = np.random.default_rng(2)
  text = rng.normal(size=(2, 5, D)).astype(np.float32)
  text_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
  model = QFormer(cfg)
  args = (jnp.asarray(images), jnp.asarray(text), jnp.asarray(text_mask))
  params = load_params(model, args, hf.state_dict(), rules)
  out = jax.jit(model.apply)({"params": params}, *args)
  with torch.no_grad():
    embeds = torch.cat([hf.query_tokens.expand(2, -1, -1), torch.tensor(text)], dim=1)
    mask = torch.cat([torch.ones(2, Q, dtype=torch.long), torch.tensor(text_mask).long()], 1)
    ref = hf.qformer(query_embeds=embeds, query_length=Q, attention_mask=mask,
                     encoder_hidden_states=torch.tensor(images)).last_hidden_state.numpy()
  diff = max(max_diff(out.queries, ref[:, :Q]), max_diff(out.text, ref[:, Q:], text_mask))
  record(f"qformer/{name}_text_itm", diff)
  assert diff <= TOLERANCE, diff


def test_masks():
  """ITM: all see all; ITC: queries and text apart; ITG: queries see queries, text sees queries
  and earlier text; padding text is never a key."""
  text_mask = jnp.array([[1, 1, 0]])
  m = {k: np.asarray(self_attention_mask(2, text_mask, k, 1))[0, 0] for k in ("itm", "itc", "itg")}
  keys = np.array([1, 1, 1, 1, 0], bool)
  np.testing.assert_array_equal(m["itm"], np.broadcast_to(keys, (5, 5)))
  itc = np.zeros((5, 5), bool)
  itc[:2, :2] = True
  itc[2:, 2:4] = True
  np.testing.assert_array_equal(m["itc"], itc)
  itg = np.zeros((5, 5), bool)
  itg[:, :2] = True
  for i in range(2, 5):
    itg[i, 2:min(i, 3) + 1] = True
  np.testing.assert_array_equal(m["itg"], itg)
  assert self_attention_mask(2, None, "itg", 1) is None
  with pytest.raises(ValueError, match="unknown Q-Former mask 'x'"):
    self_attention_mask(2, text_mask, "x", 1)


def test_text_rows_need_the_text_feed_forward():
  cfg = QFormerConfig(hidden_size=D, num_layers=1, num_heads=4, intermediate_size=48,
                      encoder_hidden_size=E, num_queries=Q)
  model = QFormer(cfg)
  images = jnp.zeros((1, 4, E))
  params = jax.eval_shape(model.init, jax.random.key(0), images)
  assert "ffn_text" not in str(jax.tree_util.tree_structure(params))
  with pytest.raises(ValueError, match="no text feed-forward"):
    jax.eval_shape(model.apply, params, images, jnp.zeros((1, 2, D)))
