"""A tiny IDEFICS (the open Flamingo) trained with Flamingo's recipe on interleaved documents: a
CLIP-style tower over 32-px shapes images (2x2 patches of 16 px and a class token), a Perceiver
resampler (4 latents an image), and a Llama decoder of 2 layers with a gated cross-attention
layer before each (`cross_layer_interval=1`: one scanned group of a gated and a text layer).

    python -m mmjax.data.synthetic_documents /tmp/shapes_docs
    mmjax train --config configs/tiny/idefics.py:/tmp/shapes_docs --workdir /tmp/tiny_idefics

`ARG` is the set's directory (`mmjax.data.synthetic_documents`: `documents.jsonl`, documents of
1-3 images each followed by its caption and `<|endofchunk|>`, mixed 1.0 / 0.2 with
`captions.jsonl`, one image a document; `tokenizer/`, the shapes words with
`<fake_token_around_image>` and `<|endofchunk|>` as the two additional rows), optionally followed
by `,full` to train every part. Without a directory the model trains on the shapes questions (one
image a row). The recipe (`TRAINABLE["recipe"]`, the default) freezes the tower and the language
model and trains the resampler, the gated layers (their tanh gates start at zero: the model
starts as its language model) and the additional embedding rows.
"""

import os

import ml_collections

from mmjax.data import synthetic

TRAINABLE = {
    "recipe": ("connector", "gated_cross", "additional_vocab"),
    "full": ("encoder", "connector", "decoder"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  directory, _, stage = (arg or "").partition(",")
  stage = stage or "recipe"
  if stage not in TRAINABLE:
    raise ValueError(f"unknown stage {stage!r}; known: {sorted(TRAINABLE)}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  width, vit = 32, 32
  c.model = dict(
      family="idefics",
      vision=dict(image_size=32, patch_size=16, hidden_size=vit, intermediate_size=2 * vit,
                  num_layers=2, num_heads=4),
      resampler=dict(num_latents=4, depth=1, num_heads=2, head_dim=16),
      # The shapes words (53); the documents' tokenizer adds its two tokens after them.
      decoder=dict(vocab_size=synthetic.load_tokenizer().get_vocab_size(), hidden_size=width,
                   intermediate_size=2 * width, num_layers=2, num_heads=4, rms_norm_eps=1e-6,
                   rope=dict(theta=10000.0)),
      cross_layer_interval=1,
      gate="float",
      additional_vocab_size=2,
      image_token_id=synthetic.IMAGE_ID,  # `<image>`, in both tokenizers
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  if directory:
    fake = "<fake_token_around_image>"
    c.data = dict(
        image_preset="idefics", image_overrides=dict(size=32), tokenizer=os.path.join(
            directory, "tokenizer"), image_token=synthetic.IMAGE, image_start=fake,
        image_end=fake, max_length=64, max_tiles=4, max_images=4, batch_size=16,
        sources=[dict(path=os.path.join(directory, "documents.jsonl"), weight=1.0),
                 dict(path=os.path.join(directory, "captions.jsonl"), weight=0.2)])
  else:
    c.data = dict(source="shapes", batch_size=32, max_length=16, train_size=100_000,
                  image_first=False, shapes=dict(size_range=0, jitter=0))
  c.optim = dict(lr=2e-3, warmup_steps=20, end_lr_ratio=0.05, b1=0.9, b2=0.98,
                 weight_decay=0.01, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=300, trainable=TRAINABLE[stage], grad_accum=1, init_from="",
                 log_every=10)
  c.checkpoint = dict(every_steps=100, keep=2, async_save=True)
  return c
