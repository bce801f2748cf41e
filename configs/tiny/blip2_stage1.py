"""A tiny BLIP-2 stage 1 (ITC + ITM + ITG) on the shapes set's image-caption pairs.

    mmjax train --config configs/tiny/blip2_stage1.py --workdir /tmp/blip2_stage1

The EVA tower is frozen at its random init (a pre-trained tower in a real run: `train.init_from`
a converted `Blip2ForImageTextRetrieval`); the Q-Former, its text embeddings and the heads train.
Captions start with the shapes tokenizer's `<s>` (the text feature's row, as BERT's [CLS]); ITG
replaces it with an id the tokenizer does not use, the decoder's BOS.
"""

import ml_collections

from mmjax.data import synthetic


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  words = synthetic.load_tokenizer().get_vocab_size()
  width, length = 64, 20  # the longest caption is 17 tokens
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(
      family="blip-2-retrieval",
      vision=dict(image_size=32, patch_size=16, hidden_size=width, intermediate_size=2 * width,
                  num_layers=2, num_heads=4),
      qformer=dict(hidden_size=width, num_layers=2, num_heads=4, intermediate_size=2 * width,
                   num_queries=4, cross_attention_frequency=2, dropout=0.1,
                   text_vocab_size=-(-(words + 1) // 64) * 64, text_max_positions=length),
      embed_dim=32,
      decoder_bos_token_id=words,  # the first id past the tokenizer's: [DEC]
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  c.data = dict(source="shapes", batch_size=64, max_length=length, train_size=100_000,
                shapes=dict(size_range=0, jitter=0))
  c.optim = dict(lr=1e-3, warmup_steps=50, end_lr_ratio=0.05, b1=0.9, b2=0.98,
                 weight_decay=0.05, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=600, trainable=("qformer", "head"), grad_accum=1, init_from="",
                 log_every=50, objective="blip2_stage1")
  c.checkpoint = dict(every_steps=1000, keep=2, async_save=True)
  c.eval = dict(kind="")
  return c
