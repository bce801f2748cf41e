"""A tiny Mistral3 for CPU runs: the Pixtral tower (2-D RoPE, every image at its own size in one
block-diagonal sequence per row) on 8-px patches, RMSNorm and the 2x2 patch merger before LLaVA's
MLP projector, a 2-layer Mistral-style decoder.

    mmjax train --config configs/tiny/mistral3.py --workdir /tmp/tiny_mistral3 \
        --config.data.tokenizer=TOKENIZER_DIR --config.data.sources='[{"path": "train.jsonl"}]' \
        --config.model.image_token_id=IMG_ID

`image_token_id` must be the tokenizer's `[IMG]` id (`mmjax train` checks it), which must also
hold `[IMG_BREAK]` and `[IMG_END]`, and fit `decoder.vocab_size`. An image is shrunk to fit
32x32 px, rounded up to whole 2x2 blocks of patches (up to 4x4 patches); each `[IMG]` takes one
merged block: `[IMG]` x block columns + `[IMG_BREAK]` per block row, the last `[IMG_END]`
(`mmjax.data.preprocess.pixtral`). The recipe trains the projector (norm, merger, MLP) and the
language model; the tower stays frozen.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  width, patch, merge = 32, 8, 2
  c.model = dict(
      family="mistral3",
      vision=dict(hidden_size=width, intermediate_size=2 * width, num_layers=1, num_heads=2,
                  patch_size=patch, image_size=32, activation="silu"),
      projector=dict(kind="mlp2x", activation="gelu", use_bias=False),
      decoder=dict(vocab_size=320, hidden_size=width, intermediate_size=2 * width, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=width // 4, rms_norm_eps=1e-5,
                   rope=dict(theta=1e6), model_type="mistral"),
      image_token_id=4,
      feature_layers=(-1,),
      spatial_merge_size=merge,
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  # max_tiles (patch slots a row): two images of the largest grid, 4x4 patches each = 32;
  # max_length: their 2 x 2 x (2 + 1) = 12 placeholders and the text.
  c.data = dict(image_preset="mistral3",
                image_overrides=dict(size=32, patch_size=patch, merge_size=merge),
                template="vicuna_v1", tokenizer="", image_token="[IMG]", max_length=128,
                max_tiles=32, max_images=2, batch_size=8, sources=())
  c.optim = dict(lr=1e-3, warmup_steps=20, end_lr_ratio=0.1, b1=0.9, b2=0.98, weight_decay=0.01,
                 clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=200, trainable=("connector", "decoder"), grad_accum=1, init_from="",
                 log_every=10)
  c.checkpoint = dict(every_steps=100, keep=2, async_save=True)
  return c
