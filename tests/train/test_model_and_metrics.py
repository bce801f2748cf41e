"""Model configs from training configs (per-stack execution) and analytic model FLOPs."""

import jax
import numpy as np

from mmjax.train.cli import load_config
from mmjax.train.metrics import count_params, flops_per_step
from mmjax.train.model_config import build_model_config
from mmjax.models.registry import abstract_params


def test_flops_count_trained_and_frozen_parts():
  family, config = build_model_config(dict(load_config(None).model))
  params = abstract_params(family, config)
  rows, seq, images = 4, 16, 4
  d, v = config.decoder, config.vision
  dec = count_params({k: x for k, x in params["decoder"].items() if k != "embed"})
  dec_per_pass = dec * rows * seq + 2 * d.num_layers * d.num_heads * d.head_dim * seq * rows * seq
  patches = images * v.num_positions
  enc_per_pass = (count_params(params["encoder"]) * patches
                  + 2 * v.num_layers * v.hidden_size * v.num_positions * patches)
  conn_per_pass = count_params(params["connector"]) * images * config.tokens_per_image

  full = flops_per_step(config, params, rows, seq, images)
  np.testing.assert_allclose(full, 6 * (dec_per_pass + enc_per_pass + conn_per_pass))
  # Stage 1: the connector trains; the decoder still back-propagates to it, the encoder does not.
  stage1 = flops_per_step(config, params, rows, seq, images, ("connector",))
  np.testing.assert_allclose(stage1, 4 * dec_per_pass + 2 * enc_per_pass + 6 * conn_per_pass)


def test_remat_policy_per_stack():
  model = dict(load_config(None).model)
  model["remat_policy"] = {"encoder": "full", "decoder": "dots"}
  _, config = build_model_config(model)
  assert config.vision.remat_policy == "full" and config.decoder.remat_policy == "dots"
  model["remat_policy"] = "dots"
  _, config = build_model_config(model)
  assert config.vision.remat_policy == config.decoder.remat_policy == "dots"
