"""The shapes eval decodes with one compiled function for every step (fixed shapes)."""

import jax

from mmjax.train.cli import load_config
from mmjax.train.evaluate import shapes_accuracy
from mmjax.train.loop import Trainer

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def test_eval_compiles_once_for_all_decode_steps():
  cfg = load_config(None)
  cfg.model.vision.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
  cfg.model.decoder.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                           num_kv_heads=1, head_dim=16)
  trainer = Trainer.build(cfg, jax.devices()[:1])
  params = jax.device_get(trainer.init().all_params())
  compiles = []
  listener = lambda name, *args, **kwargs: compiles.append(name)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    result = shapes_accuracy(trainer.module, params, trainer.model_config, cfg.data, size=8,
                             max_new_tokens=3, batch_size=8)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert 0 <= result["eval_accuracy"] <= 1
  assert compiles.count(COMPILE_EVENT) == 1
