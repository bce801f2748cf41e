"""One process of the multi-host check (run by tests/train/test_multihost.py, alone or under
launch/local_multihost.sh): trains the tiny shapes model on seeded random global batches, saves a
checkpoint at `--save-at`, or restores the latest one onto its own mesh and carries on.

Every process builds the same global batch and hands jax only its addressable shards, so the
batches do not depend on how many processes there are; process 0 writes the losses as JSON.
"""

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mmjax.distributed import initialize_from_env  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, required=True)
  p.add_argument("--save-at", type=int, default=None)
  p.add_argument("--restore", action="store_true")
  p.add_argument("--mesh", default="1,8,1", help="data,fsdp,tensor")
  p.add_argument("--out", required=True)
  args = p.parse_args()
  initialize_from_env()

  from mmjax.train.checkpoints import Checkpoints, abstract_like
  from mmjax.train.loop import Trainer
  from mmjax.train.shapes_default import get_config

  cfg = get_config()
  data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
  cfg.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  cfg.data.batch_size = 16
  cfg.optim.warmup_steps = 2
  cfg.train.steps = args.steps
  trainer = Trainer.build(cfg)
  sharding = jax.sharding.NamedSharding(trainer.mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  mc = trainer.model_config
  b, t, n = 16, int(cfg.data.max_length), mc.tokens_per_image
  size = mc.vision.image_size

  def global_batch(step):
    """Row: the image's placeholders, then random text; right padding in odd rows."""
    r = np.random.default_rng(step)
    ids = r.integers(0, mc.decoder.vocab_size, (b, t)).astype(np.int32)
    ids[ids == mc.image_token_id] = (mc.image_token_id + 1) % mc.decoder.vocab_size
    ids[:, :n] = mc.image_token_id
    real = np.ones((b, t), np.int32)
    real[1::2, t - 3:] = 0
    full = {"input_ids": ids * real, "labels": np.roll(ids, -1, axis=1),
            "loss_mask": (np.roll(real, -1, axis=1) * (np.arange(t) >= n)).astype(np.float32),
            "attention_mask": real, "segment_ids": real,
            "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
            "pixel_values": r.uniform(-1, 1, (b, size, size, 3)).astype(np.float32),
            "image_mask": np.ones((b,), bool)}
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in full.items()}

  ckpts = Checkpoints(args.workdir, every_steps=1, keep=2, async_save=False)
  start, state = 0, None
  if args.restore:
    start, state, _ = ckpts.restore_latest(abstract_like(trainer.abstract_state,
                                                         trainer.state_shardings))
  else:
    state = trainer.init()
  losses = {}
  for step in range(start, args.steps):
    with jax.set_mesh(trainer.mesh):
      state, metrics = trainer.step_fn(state, global_batch(step))
    losses[step + 1] = float(metrics["loss"])
    if step + 1 == args.save_at:
      ckpts.save(step + 1, state, {"step": step + 1}, force=True)
      ckpts.wait()
  ckpts.close()
  if jax.process_index() == 0:
    with open(args.out, "w") as f:
      json.dump({"processes": jax.process_count(), "devices": jax.device_count(),
                 "losses": losses}, f)


if __name__ == "__main__":
  main()
