"""T5's relative position buckets equal transformers' at every distance up to well past
`max_distance`, both directions, for the release's setting and the tiny tests' ones."""

import numpy as np
import pytest
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from mmjax.nn.relative_position import relative_position_bucket


@pytest.mark.parametrize("buckets,distance", [(32, 128), (8, 16), (10, 20)])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_equal_transformers(buckets, distance, bidirectional):
  relative = np.arange(-600, 601)
  ref = T5Attention._relative_position_bucket(torch.tensor(relative), bidirectional, buckets,
                                              distance).numpy()
  ours = np.asarray(relative_position_bucket(relative.astype(np.int32), bidirectional, buckets,
                                             distance))
  np.testing.assert_array_equal(ours, ref)
  assert ours.min() >= 0 and ours.max() < buckets
