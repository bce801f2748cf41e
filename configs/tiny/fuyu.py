"""A tiny Fuyu for CPU runs: no vision encoder, a Linear over raw 8-px patches (the connector),
and a 2-layer Persimmon decoder (LayerNorm, q/k LayerNorm, partial RoPE, relu^2).

    mmjax train --config configs/tiny/fuyu.py --workdir /tmp/tiny_fuyu \
        --config.data.tokenizer=TOKENIZER_DIR --config.data.sources='[{"path": "train.jsonl"}]' \
        --config.model.image_token_id=SPEAKER_ID

`image_token_id` must be the tokenizer's `|SPEAKER|` id (`mmjax train` checks it), which must
also hold `|NEWLINE|`, and fit `decoder.vocab_size`. The decoder section takes transformers'
`PersimmonConfig` keys (`mmjax.models.fuyu.config_from_training`). An image is shrunk to fit
32x32 px and cut into up to 4x4 patches; its placeholders are `|SPEAKER|` x columns +
`|NEWLINE|` per patch row (`mmjax.data.preprocess.fuyu_pipeline`).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  width, patch = 32, 8
  c.model = dict(
      family="fuyu",
      decoder=dict(model_type="persimmon", vocab_size=320, hidden_size=width,
                   intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
                   hidden_act="relu2", layer_norm_eps=1e-5, qk_layernorm=True,
                   partial_rotary_factor=0.5, rope_theta=25000.0, max_position_embeddings=512,
                   tie_word_embeddings=False),
      image_token_id=7,
      patch_size=patch,
      num_channels=3,
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  # max_tiles (patch slots a row): two images of the largest grid, 4x4 patches each = 32;
  # max_length: their 2 x 4 x (4 + 1) = 40 placeholders and the text.
  c.data = dict(image_preset="fuyu", image_overrides=dict(size=(32, 32), patch_size=patch),
                template="vicuna_v1", tokenizer="", image_token="|SPEAKER|", max_length=128,
                max_tiles=32, max_images=2, batch_size=8, sources=())
  c.optim = dict(lr=1e-3, warmup_steps=20, end_lr_ratio=0.1, b1=0.9, b2=0.98, weight_decay=0.01,
                 clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=200, trainable=("connector", "decoder"), grad_accum=1, init_from="",
                 log_every=10)
  c.checkpoint = dict(every_steps=100, keep=2, async_save=True)
  return c
