"""A tiny BLIP-2 stage 2: stage 1's tower and Q-Former before a frozen tiny OPT, on the shapes set.

    mmjax train --config configs/tiny/blip2_stage1.py --workdir /tmp/blip2_stage1
    mmjax train --config configs/tiny/blip2_stage2.py --workdir /tmp/blip2_stage2 \
        --config.train.init_from="/tmp/blip2_stage1/model:$STAGE1;OPT_CKPT:decoder"

with `STAGE1` the selection this file exports (`STAGE1_SELECTION`):
`encoder,qformer=connector/qformer,-qformer/word_embed,-qformer/pos_embed,-qformer/*/ffn_text`.
It takes stage 1's `encoder` as is and its `qformer` (queries, layers) as the connector's
Q-Former, dropping by name what a stage-2 Q-Former does not have (stage 1's BERT text
embeddings and the text rows' feed-forwards); the heads (ITC / ITM / ITG) are not taken.
`OPT_CKPT` is a converted OPT (`mmjax convert`, a `causal_lm` checkpoint) whose `decoder` matches
`model.decoder`. The `vision` and `qformer` sections are stage 1's (less its text fields), so
the shapes fit.

Only the connector trains (`connector`: the Q-Former with its query tokens and the
`language_projection`, here `connector/projection`, fresh) on the language-modelling loss of the
shapes set's question-answer rows, whose `num_queries` image tokens the projected queries fill;
the tower and the OPT decoder stay frozen.
"""

import ml_collections

from mmjax.data import synthetic

# What stage 2 takes from stage 1's model: see the docstring.
STAGE1_SELECTION = ("encoder,qformer=connector/qformer,-qformer/word_embed,-qformer/pos_embed,"
                    "-qformer/*/ffn_text")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  words = synthetic.load_tokenizer().get_vocab_size()
  width = 64
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = dict(
      family="blip-2",
      # Stage 1's (configs/tiny/blip2_stage1.py), without the Q-Former's text fields.
      vision=dict(image_size=32, patch_size=16, hidden_size=width, intermediate_size=2 * width,
                  num_layers=2, num_heads=4),
      qformer=dict(hidden_size=width, num_layers=2, num_heads=4, intermediate_size=2 * width,
                   num_queries=4, cross_attention_frequency=2, dropout=0.1),
      # A tiny OPT: pre-LN LayerNorms, ReLU, biases, learned positions read at position + 2.
      decoder=dict(vocab_size=-(-words // 64) * 64, hidden_size=width,
                   intermediate_size=2 * width, num_layers=2, num_heads=4, num_kv_heads=4,
                   head_dim=width // 4, rms_norm_eps=1e-5, activation="relu", qkv_bias=True,
                   o_bias=True, mlp_bias=True, norm="layer", mlp="dense", tie_embeddings=True,
                   model_type="opt", learned_positions=16 + 2, position_offset=2),
      image_token_id=synthetic.IMAGE_ID,
      dtype="float32",
      param_dtype="float32",
      remat_policy="none",
  )
  # `<s>` + up to 7 question tokens + 4 image tokens + answer + `</s>`: 14 tokens at most.
  c.data = dict(source="shapes", batch_size=64, max_length=16, train_size=100_000,
                image_first=True, shapes=dict(size_range=0, jitter=0))
  c.optim = dict(lr=1e-3, warmup_steps=50, end_lr_ratio=0.05, b1=0.9, b2=0.98,
                 weight_decay=0.05, clip_norm=1.0, z_loss=0.0, lr_multipliers={})
  c.mesh = dict(data=-1, fsdp=1, tensor=1, rules="fsdp")
  c.train = dict(steps=600, trainable=("connector",), grad_accum=1, init_from="",
                 log_every=50)
  c.checkpoint = dict(every_steps=1000, keep=2, async_save=True)
  c.eval = dict(kind="")
  return c
