"""Generation with parameters split over a 'tensor' mesh axis (8 fake CPU devices) equals one
device, token for token."""

import jax
import numpy as np

from gen_helpers import PAD, hf_greedy, llava_prompts, nhwc
from mmjax.generation import GenerateConfig, Generator
from mmjax.generation.partition import shard_params, tensor_mesh


def test_tensor_parallel_generation_equals_one_device(tiny_llava):
  model, hf_cfg, family, config, params, _ = tiny_llava
  assert len(jax.devices()) == 8
  ids, mask, pixels = llava_prompts(hf_cfg, (1, 0, 2, 1), seed=3)
  gen = GenerateConfig(16, pad_id=PAD)
  single = Generator(family, config, params)(ids, mask, nhwc(pixels), gen=gen)

  mesh = tensor_mesh(tensor=2, data=4)
  sharded = shard_params(family, config, params, mesh)
  q = sharded["decoder"]["layers"]["attn"]["q"]["kernel"]  # [L, N, H, D]
  assert tuple(q.sharding.spec) == (None, "tensor", None, None), q.sharding.spec
  assert len(q.sharding.device_set) == 8
  assert sharded["decoder"]["embed"]["embedding"].sharding.spec[0] == "tensor"
  parallel = Generator(family, config, sharded, mesh)(ids, mask, nhwc(pixels), gen=gen)
  np.testing.assert_array_equal(parallel, single)
  np.testing.assert_array_equal(single, hf_greedy(model, ids, mask, pixels, n=16))
