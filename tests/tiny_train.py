"""The tiny training config of the trainer's tests: the default recipe, narrow and few steps."""

from mmjax.train.cli import load_config


def tiny_config(**train_kw):
  cfg = load_config(None)
  cfg.model.vision.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
  cfg.model.decoder.update(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                           num_kv_heads=2, head_dim=8)
  cfg.data.batch_size = 16
  cfg.optim.warmup_steps = 2
  cfg.train.update({"steps": 3, "log_every": 1, **train_kw})
  cfg.checkpoint.every_steps = 10
  cfg.eval.kind = ""
  return cfg
