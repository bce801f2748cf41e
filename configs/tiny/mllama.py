"""A tiny Llama 3.2 Vision (tiled vision tower, linear projector, Llama decoder with
cross-attention layers) trained on the procedural shapes set, for CPU runs and tests.

    mmjax train --config configs/tiny/mllama.py --workdir /tmp/tiny_mllama

Each 32x32 shapes image is one tile of four 16-px patches (and a class token); its `<|image|>`
token stands before the answer, so the answer's tokens see the image through the
cross-attention layers (1 and 3 of 4: one scanned group of a self- and a cross-attention
layer, twice). `get_config("recipe")` trains as Llama 3.2 Vision did: the language model
frozen; the vision tower, the projector and the cross-attention layers train.
"""

import ml_collections

from mmjax.data import synthetic

TRAINABLE = {
    "full": ("encoder", "connector", "decoder"),
    "recipe": ("encoder", "connector", "cross_attention"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  stage = arg or "full"
  if stage not in TRAINABLE:
    raise ValueError(f"unknown stage {stage!r}; known: {sorted(TRAINABLE)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  width, vit = 128, 64
  c.model = dict(
      family="mllama",
      vision=dict(image_size=32, patch_size=16, hidden_size=vit, intermediate_size=2 * vit,
                  num_layers=2, num_global_layers=1, num_heads=4, max_num_tiles=1,
                  intermediate_layers_indices=(0,), supported_aspect_ratios=((1, 1),)),
      decoder=dict(vocab_size=-(-synthetic.load_tokenizer().get_vocab_size() // 64) * 64,
                   hidden_size=width, intermediate_size=2 * width, num_layers=4, num_heads=4,
                   num_kv_heads=2, head_dim=width // 4, rms_norm_eps=1e-5,
                   rope=dict(theta=500000.0), cross_attention_layers=(1, 3)),
      image_token_id=synthetic.IMAGE_ID,
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  c.data = dict(source="shapes", batch_size=32, max_length=16, train_size=100_000,
                image_first=False, shapes=dict(size_range=0, jitter=0))
  c.optim = dict(lr=5e-4, warmup_steps=50, end_lr_ratio=0.05, b1=0.9, b2=0.98,
                 weight_decay=0.01, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=300, trainable=TRAINABLE[stage], grad_accum=1, init_from="",
                 log_every=10)
  c.checkpoint = dict(every_steps=100, keep=2, async_save=True)
  return c
