"""The training loop: mesh, state, resume, jit step, metrics, checkpoints, preemption, eval."""

import contextlib
import dataclasses
import logging
import os
import signal
import time
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import checkpoint as converted
from mmjax import distributed, limits, paths
from mmjax.data.validation import REASONS
from mmjax.errors import UserError
from mmjax import sharding as shd
from mmjax.nn.linear import flat_token_dots
from mmjax.nn.stack import unrolled_layers
from mmjax.train import data as train_data
from mmjax.nn import lora as lora_lib
from mmjax.train import adapters, init_from as init_lib, loss, parts
from mmjax.train.checkpoints import Checkpoints, abstract_like
from mmjax.train.contrastive import ContrastiveConfig
from mmjax.train.contrastive_step import make_contrastive_step
from mmjax.train.metrics import MetricsWriter, NullMetricsWriter
from mmjax.train.model_config import build_model_config
from mmjax.train.model_files import model_files
from mmjax.train.optimizer import make_optimizer
from mmjax.train.preference import PreferenceConfig
from mmjax.train.preference_step import make_preference_step
from mmjax.train.state import TrainState, init_state, with_reference
from mmjax.train.step import make_train_step

log = logging.getLogger("mmjax.train")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a preempted job


@dataclasses.dataclass
class Trainer:
  """Everything built from a config before the first step (also used by tests and `aot`)."""

  cfg: Any
  mesh: jax.sharding.Mesh
  family: Any
  model_config: Any
  module: nn.Module
  tx: Any
  schedule: Any
  state_shardings: Any
  abstract_state: Any
  step_fn: Any
  lora: lora_lib.LoraConfig | None = None
  trainable: tuple[str, ...] = ()  # train.trainable, plus 'lora' with LoRA
  parts: Any = None  # the family's parts, plus the LoRA factors' with LoRA
  preference: PreferenceConfig | None = None  # train.objective dpo / mpo; None: lm
  keep_reference: bool = False  # the state keeps initial copies of what trains fully
  contrastive: ContrastiveConfig | None = None  # train.objective clip / siglip

  @classmethod
  def build(cls, cfg, devices=None) -> "Trainer":
    mesh = shd.make_mesh(cfg.mesh, devices)
    shards = int(np.prod([mesh.shape[a] for a in shd.BATCH_AXES]))
    if int(cfg.data.batch_size) % shards:
      raise ValueError(f"data.batch_size {cfg.data.batch_size} does not split over the "
                       f"{shards} batch shards of the mesh ({dict(mesh.shape)}); use a multiple")
    rules = shd.rules_for(cfg.mesh.get("rules", "fsdp"))
    init_from = init_lib.parse_sources(cfg.train.get("init_from", ""))
    ckpt_config = None
    if len(init_from) == 1 and init_from[0].whole:  # the checkpoint describes the model
      family, config, _ = converted.read_metadata(init_from[0].path)
      ckpt_config = (family, config)
    family, model_config = build_model_config(dict(cfg.model), ckpt_config)
    module = family.build(model_config)
    lora = lora_lib.LoraConfig.from_section(cfg.get("lora"))
    layouts = adapters.layouts_of(family, model_config, lora) if lora else {}
    trainable, part_map = adapters.trainable_parts(family, tuple(cfg.train.trainable), lora,
                                                   layouts)
    example = family.example_inputs(model_config)
    with lora_lib.applied(lora):
      components = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *example))["params"]
    trained, _ = parts.split(components, trainable, part_map)
    tx, schedule = make_optimizer(dict(cfg.optim), int(cfg.train.steps), trained,
                                  parts.label_tree(trained, trainable, part_map))
    preference = PreferenceConfig.from_train(cfg.train)
    # The reference model is the initial policy: its own copy of what trains fully (with LoRA
    # alone, none: the frozen base without the factors is the reference).
    keep_reference = bool(preference and preference.needs_reference_model
                          and lora_lib.without_factors(trained))
    boxed = jax.eval_shape(
        lambda r: _initial_state(module, example, tx, trainable, r, part_map, lora, preference,
                                 keep_reference), jax.random.PRNGKey(0))
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
      specs = nn.get_partition_spec(boxed)
      state_shardings = nn.logical_to_mesh_sharding(specs, mesh, list(rules))
    abstract_state = nn.unbox(boxed)
    if lora:
      state_shardings = adapters.fit_shardings(state_shardings, abstract_state)
    step_options = dict(grad_accum=int(cfg.train.get("grad_accum", 1)),
                        loss_chunk=int(cfg.train.get("loss_chunk", loss.DEFAULT_CHUNK)),
                        loss_weighting=str(cfg.train.get("loss_weighting", "token")), lora=lora)
    z_loss = float(cfg.optim.get("z_loss", 0.0))
    contrastive = ContrastiveConfig.from_train(cfg.train)
    objective = preference or contrastive
    if objective and z_loss:
      raise ValueError(f"optim.z_loss applies to train.objective='lm', not "
                       f"{objective.objective!r}: set optim.z_loss=0")
    if contrastive is not None:
      if lora is not None:
        raise ValueError(f"train.objective={contrastive.objective!r} does not train LoRA "
                         "adapters yet: set lora.rank=0")
      step = make_contrastive_step(module, tx, schedule, contrastive,
                                   grad_accum=step_options["grad_accum"])
    elif preference is None:
      step = make_train_step(module, tx, schedule, z_loss=z_loss, **step_options)
    else:
      step = make_preference_step(module, tx, schedule, preference, **step_options)
    batch_sharding = shd.batch_sharding(mesh)

    unroll = bool(cfg.train.get("unroll_layers", False))
    on_cpu = all(d.platform == "cpu" for d in mesh.devices.flat)

    def sharded_step(state, batch):
      # The stacks and einsums read these contexts while the step is traced (its first call).
      with contextlib.ExitStack() as lowering:
        lowering.enter_context(nn.logical_axis_rules(list(rules)))
        if unroll:
          lowering.enter_context(unrolled_layers())
        if on_cpu:  # the weight-gradient dots XLA:CPU takes without a transpose
          lowering.enter_context(flat_token_dots())
        return step(state, batch)

    step_fn = jax.jit(sharded_step, in_shardings=(state_shardings, batch_sharding),
                      out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0)
    return cls(cfg, mesh, family, model_config, module, tx, schedule, state_shardings,
               abstract_state, step_fn, lora, trainable, part_map, preference, keep_reference,
               contrastive)

  def init(self) -> TrainState:
    """A fresh state (random init, then `train.init_from` components), sharded on the mesh."""
    example = self.family.example_inputs(self.model_config)
    seed = int(self.cfg.get("seed", 0))
    init = jax.jit(lambda r: nn.unbox(_initial_state(
        self.module, example, self.tx, self.trainable, r, self.parts, self.lora, self.preference,
        self.keep_reference)), out_shardings=self.state_shardings)
    key = jax.random.PRNGKey(seed)
    with jax.set_mesh(self.mesh):
      lowered = init.lower(key)
      # It runs once: on the CPU, LLVM's lighter optimisation level compiles it in a third of
      # the time (the shapes default: 9.7 -> 3.2 CPU-seconds), same values.
      on_cpu = all(d.platform == "cpu" for d in self.mesh.devices.flat)
      state = lowered.compile({"xla_backend_optimization_level": 1} if on_cpu else None)(key)
    sources = init_lib.parse_sources(self.cfg.train.get("init_from", ""))
    if sources:
      state = self._load_components(state, sources)
      if self.preference is not None:  # the reference is the loaded model
        # (Donated: only the reference's copy is new memory.)
        reference = jax.jit(lambda s: with_reference(s, self.keep_reference),
                            out_shardings=self.state_shardings, donate_argnums=0)
        with jax.set_mesh(self.mesh):
          state = reference(state)
    return state

  def _load_components(self, state: TrainState,
                       sources: list[init_lib.InitSource]) -> TrainState:
    """Replaces what the `sources` select (`mmjax.train.init_from`); the rest stays random
    (reported, as are the leaves a selection drops)."""
    params = state.all_params()
    stored = {s.path: converted.params_metadata(s.path) for s in sources}
    plan = init_lib.plan(sources, stored, lora_lib.without_factors(params))
    print(plan.report())
    log.info("%s", plan.report())
    shardings = parts.merge(self.state_shardings.params, self.state_shardings.frozen)
    for source in dict.fromkeys(t.source for t in plan.transfers):
      loaded = converted.load_params(source.path, init_lib.read_paths(plan.transfers, source))
      for t in (t for t in plan.transfers if t.source == source):
        target, subtree = init_lib.get(params, t.dst), hasattr(init_lib.get(params, t.dst), "items")
        base_of = lora_lib.without_factors if subtree else (lambda x: x)
        # Cast to the training param dtype (e.g. a bf16 checkpoint into float32 master weights).
        base = jax.tree.map(
            lambda x, s, p: jax.device_put(np.asarray(x).astype(p.dtype), s),
            init_lib.leaves_of(loaded, t) if subtree else init_lib.get(loaded, t.src),
            base_of(init_lib.get(shardings, t.dst)), base_of(target))
        # Fresh LoRA factors on the loaded kernels.
        params = init_lib.replaced(params, t.dst, parts.merge(lora_lib.adapter(target), base)
                                   if subtree else base)
    train, frozen = parts.split(params, self.trainable, self.parts)
    return state.replace(params=train, frozen=frozen)

  def model_params(self, state: TrainState) -> dict:
    """The parameters the model without LoRA reads: the factors merged into their kernels
    (full LoRA; partial LoRA cannot be merged)."""
    params = state.all_params()
    if self.lora is None:
      return params
    return adapters.merged(self.family, self.model_config, params, self.lora)


def _initial_state(module, example, tx, trainable, rng, part_map, lora, preference,
                   keep_reference: bool) -> TrainState:
  """`init_state`, with the reference model's parts for a preference objective."""
  state = init_state(module, example, tx, trainable, rng, part_map, lora)
  return state if preference is None else with_reference(state, keep_reference)


def _flops_per_step(trainer: Trainer, cfg, local: Mapping[str, np.ndarray]) -> float:
  """Model FLOPs of one step, from a host-local batch and the other hosts' image arrays (the
  family's `flops_batch_keys`)."""
  family = trainer.family
  rows = int(cfg.data.batch_size)
  if "input_ids" not in local:  # image-caption pairs: arrays of fixed shapes
    batch = {k: jax.ShapeDtypeStruct((rows, *v.shape[1:]), v.dtype) for k, v in local.items()}
    return family.train_flops(trainer.model_config, trainer.abstract_state.all_params(), batch,
                              tuple(cfg.train.trainable))
  batch = {k: distributed.concat_over_processes(local[k])
           for k in family.flops_batch_keys if k in local}
  # Pairs: both answers are decoder rows (`answer_rows`; the reference forward is not counted).
  shape = local["input_ids"].shape  # [B, T] or pairs [B, 2, T]
  batch["input_ids"] = jax.ShapeDtypeStruct(
      (rows * int(np.prod(shape[1:-1])), shape[-1]), np.int32)
  # LoRA factors aside (their FLOPs are a rank-r fraction of their layers').
  return family.train_flops(trainer.model_config,
                            lora_lib.without_factors(trainer.abstract_state.all_params()), batch,
                            tuple(cfg.train.trainable))


def _host_copy(tree: Any) -> Any:
  """Global (possibly sharded over several hosts) arrays -> numpy arrays on every host."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def _write_final_model(trainer: Trainer, state: TrainState, workdir: str) -> str | None:
  """The trained parameters as a converted-style checkpoint at `DIR/model`: the next stage's
  `train.init_from`, and what `generate`, `logits` and (given HF details) `export` read. With
  LoRA, the adapter alone goes to `DIR/adapter` and `DIR/model` holds the merged weights
  (partial LoRA: none, it cannot be merged)."""
  path = os.path.join(paths.absolute(workdir), "model")
  sources = init_lib.parse_sources(trainer.cfg.train.get("init_from", ""))
  if trainer.lora is not None:
    adapter_path = os.path.join(paths.absolute(workdir), adapters.ADAPTER_DIR)
    if not os.path.exists(adapter_path):
      adapters.save_adapter(adapter_path, trainer.lora, trainer.family, state.params,
                            ",".join(s.path for s in sources) or None)
      print(f"LoRA adapter written to {adapter_path}")
    if trainer.lora.positions != "all":
      print("partial LoRA is not a weight change: no merged model is written")
      return None
  if os.path.exists(path):  # a finished run re-launched: the model is already there
    return path
  # The HF details of the one checkpoint the model is (not of one it took parts of).
  hf_from = sources[0].path if len(sources) == 1 and sources[0].whole else None
  files = None
  if not (hf_from and os.path.exists(os.path.join(hf_from, converted.HF_CONFIG_FILE))):
    hf_from = None  # a checkpoint without HF details: the files training used instead
    files = model_files(trainer.family, trainer.model_config, trainer.cfg.data)
  converted.save_checkpoint(path, trainer.family, trainer.model_config,
                            trainer.model_params(state), hf_from=hf_from,
                            hf_config=files and files.hf_config, hf_extras=files and files.extras)
  print(f"model written to {path}")
  for what in files.missing if files else ():
    print(f"  without {what}")
  return path


def _write_plot(workdir: str) -> str | None:
  """`DIR/plot.png` of the finished run's metrics (what `mmjax plot DIR` draws, ~1 s)."""
  from mmjax import plot

  try:
    path = plot.plot_runs([workdir], os.path.join(workdir, plot.PLOT_FILE))
  except Exception as e:  # pylint: disable=broad-except  # a plot never fails a finished run
    log.warning("could not plot %s: %s", workdir, e)
    return None
  print(f"loss plot: {path}")
  return path


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def check_counts(cfg) -> None:
  """The config's counts, each an integer in range (`train.steps=-5` used to train nothing and
  write a random model with exit code 0)."""
  limits.require_int(cfg.train.steps, "train.steps")
  limits.require_int(cfg.train.get("log_every", 10), "train.log_every")
  limits.require_int(cfg.train.get("grad_accum", 1), "train.grad_accum")
  limits.require_int(cfg.train.get("stop_after", 0), "train.stop_after", minimum=0)
  limits.require_int(cfg.checkpoint.every_steps, "checkpoint.every_steps")
  limits.require_int(cfg.checkpoint.get("keep", 3), "checkpoint.keep")
  limits.require_int(cfg.data.batch_size, "data.batch_size")


def _skipped_samples(data_it) -> dict[str, int] | None:
  """Samples the data pipeline skipped so far, per reason, over every host (a collective); None
  for iterators that skip nothing (the shapes set)."""
  if not hasattr(data_it, "stats"):
    return None
  total: dict[str, int] = {}
  for host in distributed.gather_json(data_it.stats()["skipped"]):
    for reason, n in host.items():
      total[reason] = total.get(reason, 0) + int(n)
  return {r: total[r] for r in REASONS if total.get(r)}


def _skip_columns(skipped: dict[str, int] | None) -> dict[str, int]:
  if skipped is None:
    return {}
  return {"skipped_samples": sum(skipped.values()),
          **{f"skipped_samples/{r}": n for r, n in skipped.items()}}


def train(cfg, workdir: str, stop_after: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) training; returns a summary including the exit code.

  `stop_after` (or `train.stop_after`) ends the run after that step with a checkpoint, as a
  preemption would (the schedule still spans `train.steps`); re-running resumes from there.
  Every process of a multi-host job runs this; process 0 writes the metrics and the eval.

  Metrics rows are written every `train.log_every` steps and before every checkpoint, so the rows
  of the steps a checkpoint holds are on disk when it is; a resumed run drops the rows of later
  steps and logs them again (the same values: resume is exact). Rows of logged steps carry the
  samples the data pipeline skipped so far, per reason (`skipped_samples/<reason>`).
  """
  check_counts(cfg)
  kind = cfg.eval.get("kind", "") if cfg.get("eval") else ""
  if kind and kind not in EVALS:
    raise UserError(f"eval.kind must be one of {sorted(EVALS)} or '' (none), got {kind!r}")
  trainer = Trainer.build(cfg)
  if trainer.lora and trainer.lora.positions != "all" and cfg.get("eval") and \
      cfg.eval.get("kind") == "shapes_accuracy":
    raise UserError("eval.kind='shapes_accuracy' decodes with merged weights, which partial LoRA "
                    "(lora.positions='image') has not; set eval.kind=''")
  steps = int(cfg.train.steps)
  stop_after = stop_after or int(cfg.train.get("stop_after", 0)) or None
  ckpts = Checkpoints(workdir, int(cfg.checkpoint.every_steps), int(cfg.checkpoint.get("keep", 3)),
                      bool(cfg.checkpoint.get("async_save", True)))
  data_it = train_data.make_train_iterator(cfg.data, trainer.model_config,
                                           int(cfg.get("seed", 0)), trainer.preference,
                                           trainer.contrastive)
  restored = ckpts.restore_latest(abstract_like(trainer.abstract_state, trainer.state_shardings))
  if restored is not None:
    start, state, data_state = restored
    data_it.set_state(data_state)
    print(f"resumed from {ckpts.directory} at step {start}")
  else:
    start, state = 0, trainer.init()
  writer = (MetricsWriter(workdir, steps, start) if distributed.is_main_process()
            else NullMetricsWriter())
  preemption = _Preemption()
  log_every = int(cfg.train.get("log_every", 10))
  summary: dict[str, Any] = {"exit_code": 0, "start_step": start}
  step, last_time, pending = start, time.perf_counter(), []
  flops = None
  skipped = _skipped_samples(data_it)
  try:
    while step < steps:
      try:
        local = next(data_it)  # this host's rows
      except StopIteration:
        raise UserError(f"the training data ran out after {step} of {steps} steps "
                        f"(data.num_epochs={cfg.data.get('num_epochs')}); allow more epochs or "
                        "fewer steps") from None
      if flops is None:  # from the first batch, counted over every host's rows
        flops = _flops_per_step(trainer, cfg, local)
      batch = train_data.to_global(local, trainer.mesh)
      # Global text tokens; preference pairs: both answers; image-caption pairs: the captions.
      tokens = int(np.prod(batch["input_ids" if "input_ids" in batch else "text_ids"].shape))
      with jax.set_mesh(trainer.mesh):
        state, metrics = trainer.step_fn(state, batch)
      step += 1
      pending.append(metrics)
      stopping = preemption.requested or step == stop_after
      logged = step % log_every == 0 or step == steps
      if logged:
        skipped = _skipped_samples(data_it)
      if logged or stopping or ckpts.due(step):  # rows on disk before their checkpoint
        fetched = jax.device_get(pending)
        now = time.perf_counter()
        per_step = (now - last_time) / len(pending)
        for k, m in enumerate(fetched):
          record = dict(m)
          record["tokens_per_s"] = tokens / per_step
          record["tflops_per_s"] = flops / per_step / 1e12
          record["step_time_s"] = per_step
          if logged and k == len(fetched) - 1:
            record.update(_skip_columns(skipped))
          writer.write(step - len(fetched) + k + 1, record)
        writer.advance(len(pending))
        pending, last_time = [], time.perf_counter()
      ckpts.save(step, state, data_it.get_state())
      if stopping:
        ckpts.save(step, state, data_it.get_state(), force=True)
        ckpts.wait()
        if preemption.requested:
          print(f"preempted (SIGTERM) at step {step}: checkpoint saved to {ckpts.directory}")
          summary["exit_code"] = PREEMPTED_EXIT_CODE
        break
    else:
      ckpts.save(step, state, data_it.get_state(), force=True)
      ckpts.wait()
      summary["model_dir"] = _write_final_model(trainer, state, workdir)
      if cfg.get("eval") and cfg.eval.get("kind") in EVALS:
        summary["exit_code"] = _evaluate(trainer, cfg, state, step, writer, summary, preemption)
      if distributed.is_main_process():
        summary["plot"] = _write_plot(workdir)
  finally:
    preemption.restore()
    writer.close()
    try:
      ckpts.wait()  # raises what failed in an async save (e.g. a full disk)
    finally:
      ckpts.close()
  summary.update(final_step=step, skipped=int(jax.device_get(state.skipped)))
  if skipped is not None:
    summary["skipped_samples"] = skipped
  return summary


# eval.kind -> the metric whose value the summary line prints.
EVALS = {"shapes_accuracy": "eval_accuracy",
         "shapes_retrieval": "eval_retrieval/image_to_text"}


def _evaluate(trainer: Trainer, cfg, state, step: int, writer, summary: dict,
              preemption: _Preemption) -> int:
  """The held-out evaluation (`eval.kind`), once: a finished run re-launched reports the one it
  logged. SIGTERM stops the eval (exit 143; re-running evaluates again)."""
  from mmjax.train import evaluate

  kind = str(cfg.eval.kind)
  headline = EVALS[kind]
  prefix = headline.split("/")[0]
  logged = {k: v for k, v in getattr(writer, "logged_at_start", {}).items()
            if k.startswith(prefix)}
  if distributed.sum_over_processes(int(bool(logged))):  # process 0 decides for all
    if logged:
      summary.update(logged)
      print(f"{headline} {logged[headline]:.4f} (evaluated before; in {writer.path})")
    return 0
  params = _host_copy(trainer.model_params(state))  # a collective: every process takes part
  if not distributed.is_main_process():
    return 0
  size = int(cfg.eval.get("size", 500))
  stop = lambda: preemption.requested
  with jax.set_mesh(trainer.mesh):  # on this host's first device
    if kind == "shapes_accuracy":  # greedy decoding
      result = evaluate.shapes_accuracy(trainer.module, params, trainer.model_config, cfg.data,
                                        size=size, should_stop=stop)
    else:
      result = evaluate.shapes_retrieval(trainer.module, params, cfg.data, size=size,
                                         should_stop=stop)
  if result is None:
    print(f"preempted (SIGTERM) during the eval at step {step}: the model is saved; re-run the "
          "command to evaluate")
    return PREEMPTED_EXIT_CODE
  writer.write(step, result)
  summary.update(result)
  print(f"{headline} {result[headline]:.4f} on {size} held-out images")
  return 0
