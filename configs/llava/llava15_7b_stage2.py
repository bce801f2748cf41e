"""LLaVA-1.5-7B stage 2 (visual instruction tuning): connector and language model train.

    mmjax train --config configs/llava/llava15_7b_stage2.py --workdir $RUN2 \
        --config.train.init_from=$RUN1/model --config.data.tokenizer=$LLM/hf_extras \
        --config.data.sources='[{"path": "llava_v1_5_mix665k.arrayrecord"}]'

Starts from stage 1's model (`$RUN1/model`: tower, trained connector, LLM). Recipe as in the
LLaVA-1.5 paper: batch 128, lr 2e-5, 3% warmup, cosine, no weight decay, one epoch of the 665K
mixture (5200 steps); the vision tower stays frozen.

Checked with `mmjax aot --topology v5p-64` (32 chips, mesh fsdp=32, global batch 128 x 2048
tokens, 128 images, splash attention, `dots` remat): per chip arguments 2.41 GiB, temporaries
24.72 GiB, total 27.19 of 95 GiB HBM.
"""

import ml_collections

from llava15_7b_stage1 import data, get_config as stage1_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = stage1_config(arg)
  c.data = data(batch_size=128, image_preset="llava15")  # padded to square
  c.optim.update(lr=2e-5, warmup_steps=156)
  c.train.update(steps=5200, trainable=("connector", "decoder"))
  return c
