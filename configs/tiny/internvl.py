"""A tiny InternVL (InternViT with layer scale, pixel shuffle + MLP, Qwen2-style decoder) for CPU
runs: 32-px tiles of 4-px patches, 16 tokens per tile, up to 6 tiles + thumbnail per image.

    mmjax train --config configs/tiny/internvl.py --workdir /tmp/tiny_internvl \
        --config.data.tokenizer=TOKENIZER_DIR --config.data.sources='[{"path": "train.jsonl"}]'

The tokenizer must know `<img>`, `</img>` and `<IMG_CONTEXT>` (id `model.image_token_id`). The
model section reads with `mmjax.models.internvl.config_from_dict`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  width, vit = 128, 64
  c.model = dict(
      family="internvl",
      vision=dict(image_size=32, patch_size=4, hidden_size=vit, intermediate_size=2 * vit,
                  num_layers=2, num_heads=4, norm_type="layer_norm", qkv_bias=True,
                  drop_path_rate=0.0),
      decoder=dict(vocab_size=512, hidden_size=width, intermediate_size=2 * width, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=width // 4, rms_norm_eps=1e-6,
                   qkv_bias=True, tie_embeddings=True, model_type="qwen2",
                   rope=dict(theta=10000.0)),
      image_token_id=500,
      downsample_ratio=0.5,
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  c.data = dict(image_preset="internvl", image_overrides=dict(size=32, patch_size=4, max_tiles=6),
                template="internvl", tokenizer="", image_token="<IMG_CONTEXT>",
                image_start="<img>", image_end="</img>", max_length=256, max_tiles=14,
                max_images=2, batch_size=8, sources=())
  c.optim = dict(lr=1e-3, warmup_steps=20, end_lr_ratio=0.1, b1=0.9, b2=0.98, weight_decay=0.01,
                 clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=200, trainable=("encoder", "connector", "decoder"), grad_accum=1,
                 init_from="", log_every=10)
  c.checkpoint = dict(every_steps=100, keep=2, async_save=True)
  return c
