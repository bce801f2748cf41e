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


def final_state(cfg, workdir):
  """`(trainer, state)`: a finished run's trainer (one device) and its last checkpoint's train
  state, as numpy arrays."""
  import jax

  from mmjax.train.checkpoints import Checkpoints, abstract_like
  from mmjax.train.loop import Trainer

  trainer = Trainer.build(cfg, jax.devices()[:1])
  ckpts = Checkpoints(workdir, 10, 2, False)
  try:
    _, state, _ = ckpts.restore_latest(abstract_like(trainer.abstract_state,
                                                     trainer.state_shardings))
  finally:
    ckpts.close()
  return trainer, jax.device_get(state)
