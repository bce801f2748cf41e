"""Tiny CLIP / SigLIP dual encoders trained from scratch on the shapes set's image-caption pairs.

    mmjax train --config configs/tiny/contrastive.py:siglip --workdir /tmp/siglip
    mmjax train --config configs/tiny/contrastive.py:clip --workdir /tmp/clip

Each shapes image is paired with its scene's caption ("red circle top-left , blue square
bottom-right"); the eval retrieves, among 500 held-out images and their captions, each image's
caption and each caption's image (`eval_retrieval/*`).
"""

import ml_collections

from mmjax.data import synthetic

KINDS = ("clip", "siglip")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  kind = arg or "siglip"
  if kind not in KINDS:
    raise ValueError(f"configs/tiny/contrastive.py takes one of {KINDS}, got {kind!r}")
  clip = kind == "clip"
  width, length = 64, 20  # the longest caption: <s> + 4 objects x 3 words + 3 commas + </s> = 17
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(
      family="dual_encoder",
      kind=kind,
      # 32x32 images in 16 px patches: one patch per grid cell of the shapes set.
      vision=dict(kind=kind, image_size=32, patch_size=16, hidden_size=width,
                  intermediate_size=2 * width, num_layers=2, num_heads=4,
                  activation="quick_gelu" if clip else "gelu_pytorch_tanh",
                  layer_norm_eps=1e-5 if clip else 1e-6, pooling_head=not clip),
      text=dict(kind=kind, vocab_size=-(-synthetic.load_tokenizer().get_vocab_size() // 64) * 64,
                hidden_size=width, intermediate_size=2 * width, num_layers=2, num_heads=4,
                max_positions=length, activation="quick_gelu" if clip else "gelu_pytorch_tanh",
                layer_norm_eps=1e-5 if clip else 1e-6,
                # CLIP pools at the caption's `</s>` (id 2, which transformers would read as
                # the original CLIP's "largest id": no HF config for this one); SigLIP at the
                # last position, through its head into the image tower's width.
                eos_token_id=synthetic.EOS_ID if clip else None, pooling="eos",
                projection_size=None if clip else width),
      projection_dim=width if clip else None,
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  c.data = dict(source="shapes", batch_size=64, max_length=length, train_size=100_000,
                shapes=dict(size_range=0, jitter=0))
  c.optim = dict(lr=1e-3, warmup_steps=50, end_lr_ratio=0.05, b1=0.9, b2=0.98,
                 weight_decay=0.01, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=600, trainable=("encoder", "text_encoder", "head"), grad_accum=1,
                 init_from="", log_every=50, objective=kind)
  c.checkpoint = dict(every_steps=1000, keep=2, async_save=True)
  c.eval = dict(kind="shapes_retrieval", size=500)
  return c
