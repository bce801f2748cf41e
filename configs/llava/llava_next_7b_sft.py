"""LLaVA-NeXT-7B (LLaVA-1.6, Vicuna-7B) supervised fine-tuning with AnyRes up to 2x2 tiles: the
projector, the image newline and the language model train; the vision tower stays frozen.

    mmjax convert --hf llava-hf/llava-v1.6-vicuna-7b-hf --out $CKPT --dtype bfloat16
    mmjax train --config configs/llava/llava_next_7b_sft.py --workdir gs://BUCKET/run \
        --config.train.init_from=$CKPT --config.data.tokenizer=$CKPT/hf_extras \
        --config.data.sources='[{"path": "gs://BUCKET/sft/*.arrayrecord"}]'

An image becomes the 336-px base view and a grid of up to 2x2 tiles (the pinpoints below, the
square and the two 1x2 shapes of LLaVA-1.6's list): at most 576 + 48 x 48 unpadded features + 48
newlines = 2928 placeholders, so rows are 4096 tokens with one image each. Recipe as LLaVA-NeXT's
second stage: batch 128, lr 2e-5, 3% warmup, cosine, no weight decay.

Checked with `mmjax aot --topology v5p-64` (32 chips, mesh fsdp=32, global batch 128 x 4096
tokens, 640 tiles of 336 px, splash attention, `dots` remat): per chip arguments 2.44 GiB,
temporaries 46.62 GiB, total 49.22 of 95 GiB HBM; 7.06 B parameters, 6.76 B trained.
"""

import ml_collections

from llava15_7b_stage1 import CLIP_L_336, VICUNA_7B

# (height, width) grids of 336-px tiles: 1x2, 2x1, 2x2.
PINPOINTS = ((336, 672), (672, 336), (672, 672))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(family="llava_next", vision=CLIP_L_336,
                 projector=dict(kind="mlp2x", activation="gelu", use_bias=True),
                 decoder=dict(VICUNA_7B, vocab_size=32064), image_token_id=32000, feature_layers=(-2,),
                 feature_select="default", grid_pinpoints=PINPOINTS, dtype="bfloat16",
                 param_dtype="float32", remat_policy="dots", attention_backend="splash")
  # max_tiles: the base view and 2x2 tiles of one image a row.
  c.data = dict(image_preset="llava_next", image_overrides=dict(grid_pinpoints=PINPOINTS),
                template="vicuna_v1", tokenizer="", image_token="<image>", max_length=4096,
                max_tiles=5, max_images=1, batch_size=128, packing=True, num_workers=8,
                sources=())
  c.optim = dict(lr=2e-5, warmup_steps=30, end_lr_ratio=0.0, b1=0.9, b2=0.999, weight_decay=0.0,
                 clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=1, fsdp=-1, tensor=1, rules="fsdp")
  c.train = dict(steps=1000, trainable=("connector", "image_newline", "decoder"), grad_accum=1,
                 init_from="", log_every=10)
  c.checkpoint = dict(every_steps=250, keep=2, async_save=True)
  return c
