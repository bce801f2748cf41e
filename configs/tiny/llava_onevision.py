"""A tiny LLaVA-OneVision for CPU runs: a SigLIP-style tower on 32-px views of 2x2 patches,
LLaVA's MLP projector, `image_newline`, and a 2-layer Qwen2-style decoder (q/k/v bias).

    mmjax train --config configs/tiny/llava_onevision.py --workdir /tmp/tiny_onevision \
        --config.data.tokenizer=TOKENIZER_DIR --config.data.sources='[{"path": "train.jsonl"}]' \
        --config.model.image_token_id=IMAGE_ID --config.model.video_token_id=VIDEO_ID

`image_token_id` / `video_token_id` must be the tokenizer's `<image>` / `<video>` ids (`mmjax
train` checks them; a tokenizer without `<video>` takes no videos). An image alone in
its sample takes AnyRes views (a base view and up to 2x2 tiles on the pinpoints) and its
placeholders are the base view's 4 features, the unpadded grid (shrunk bilinearly past
`anyres_max_2`: two tiles' worth of features) and a newline per grid row; an image among several
takes one padded square, its 4 features and one newline (`mmjax.data.preprocess.onevision`). A
record's `video` takes `data.video`'s sampled frames (here 3 a clip) as tiles, each pooled to one
feature, and a newline: 4 `<video>` tokens (`mmjax.data.onevision_sample`). The
recipe trains the projector, the newline and the language model; the tower stays frozen.
"""

import ml_collections

# (height, width) tile grids an image may take: 1x2, 2x1 or 2x2 tiles of 32 px.
PINPOINTS = ((32, 64), (64, 32), (64, 64))
MAX_TILES = 2  # N of anyres_max_N


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  width = 32
  c.model = dict(
      family="llava_onevision",
      vision=dict(kind="siglip", image_size=32, patch_size=16, hidden_size=width,
                  intermediate_size=2 * width, num_layers=1, num_heads=2,
                  activation="gelu_pytorch_tanh", layer_norm_eps=1e-6),
      projector=dict(kind="mlp2x", activation="gelu", use_bias=True),
      decoder=dict(vocab_size=320, hidden_size=width, intermediate_size=2 * width, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=width // 4, rms_norm_eps=1e-6,
                   qkv_bias=True, rope=dict(theta=1e6), model_type="qwen2"),
      image_token_id=3,
      video_token_id=4,
      feature_layers=(-1,),
      feature_select="full",
      grid_pinpoints=PINPOINTS,
      vision_aspect_ratio=f"anyres_max_{MAX_TILES}",
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  # max_tiles: two images of the largest pinpoint a row (a base view + 2x2 tiles each = 10);
  # max_length: an image alone takes at most 4 + 16 + 4 = 24 placeholders, the text the rest.
  c.data = dict(image_preset="llava_onevision",
                image_overrides=dict(size=32, patch_size=16, grid_pinpoints=PINPOINTS,
                                     max_tiles=MAX_TILES),
                template="chatml", tokenizer="", image_token="<image>", max_length=128,
                max_tiles=10, max_images=2, batch_size=8, sources=(),
                video=dict(token="<video>", fps=2.0, min_frames=3, max_frames=3))
  c.optim = dict(lr=1e-3, warmup_steps=20, end_lr_ratio=0.1, b1=0.9, b2=0.98, weight_decay=0.01,
                 clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=200, trainable=("connector", "image_newline", "decoder"), grad_accum=1,
                 init_from="", log_every=10)
  c.checkpoint = dict(every_steps=100, keep=2, async_save=True)
  return c
