"""`mmjax aot`: compile a config's train (or generate) step for a TPU topology on this host.

Nothing is allocated: the trainer is built abstractly (`Trainer.build` on libtpu's compile-only
devices), the step is lowered on `ShapeDtypeStruct`s with their shardings and compiled by the
TPU compiler, which is what decides whether it fits. Configs that start from a converted
checkpoint (`train.init_from`) compile from their `model.*` section alone.

Printed per chip: arguments (parameters, optimizer state, batch), temporaries, generated code,
and their total against the chip's HBM; compiled FLOPs (XLA's cost analysis, summed over chips)
against the analytic model FLOPs (`mmjax.train.metrics.flops_per_step`), and the step time the
analytic FLOPs would take at the stated MFU. Exit 0 when it fits, 1 (with the compiler's message)
when it does not.
"""

import copy
import dataclasses
import os
import sys
from typing import Any

from mmjax import topology as tpu

GIB = 1024**3


@dataclasses.dataclass
class Memory:
  """Per-chip bytes from `Compiled.memory_analysis()`."""

  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  code: int
  host_arguments: int = 0
  host_temporaries: int = 0

  @classmethod
  def of(cls, compiled) -> "Memory":
    m = compiled.memory_analysis()
    return cls(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
               m.temp_size_in_bytes, m.generated_code_size_in_bytes,
               getattr(m, "host_argument_size_in_bytes", 0), getattr(m, "host_temp_size_in_bytes", 0))

  @property
  def total(self) -> int:
    """Peak HBM the program needs: inputs, outputs not donated into inputs, scratch, code."""
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


@dataclasses.dataclass
class Report:
  step: str
  topology: tpu.Topology
  mesh: dict[str, int]
  batch: str
  memory: Memory
  compiled_flops: float  # whole step, all chips
  analytic_flops: float
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def fits(self) -> bool:
    return self.memory.total <= self.topology.spec.hbm_bytes

  def step_time(self, mfu: float) -> float:
    return self.analytic_flops / (self.topology.num_chips * self.topology.spec.peak_bf16_flops * mfu)

  def format(self, mfu: float) -> str:
    m, hbm = self.memory, self.topology.spec.hbm_bytes
    t = self.topology
    lines = [
        f"{self.step} step on {t.name}: {t.num_chips} chips ({t.num_slices} x "
        f"{t.topology_name}), mesh {self.mesh}, {self.batch}",
        f"  per-chip memory: arguments {m.arguments / GIB:.2f} GiB, outputs {m.outputs / GIB:.2f} "
        f"GiB (donated {m.aliased / GIB:.2f}), temporaries {m.temporaries / GIB:.2f} GiB, code "
        f"{m.code / GIB:.3f} GiB",
        f"  per-chip total {m.total / GIB:.2f} GiB of {hbm / GIB:.0f} GiB HBM "
        f"({100 * m.total / hbm:.0f}%): {'fits' if self.fits else 'DOES NOT FIT'}",
    ]
    if m.host_arguments or m.host_temporaries:
      lines.append(f"  host memory per chip: arguments {m.host_arguments / GIB:.2f} GiB, "
                   f"temporaries {m.host_temporaries / GIB:.2f} GiB")
    ratio = self.compiled_flops / self.analytic_flops if self.analytic_flops else float("nan")
    lines += [
        f"  FLOPs per step: compiled {self.compiled_flops:.4g} (XLA cost analysis), analytic "
        f"model {self.analytic_flops:.4g} (compiled / analytic {ratio:.3f})",
        f"  estimated step time at {100 * mfu:.0f}% MFU: {self.step_time(mfu):.3f} s "
        f"({t.spec.peak_bf16_flops / 1e12:.0f} bf16 TFLOP/s per chip)",
    ]
    lines += [f"  {k}: {v}" for k, v in self.extra.items()]
    return "\n".join(lines)


class OutOfMemory(Exception):
  """The TPU compiler refused the program for lack of HBM; the message is the compiler's."""


def _force_cpu_host() -> None:
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  if "JAX_PLATFORMS" not in os.environ:
    import jax

    jax.config.update("jax_platforms", "cpu")


def prepare_config(cfg, topology: tpu.Topology):
  """A copy that compiles without checkpoints: architecture from `model.*`, slices over DCN."""
  from mmjax.models.family import EXECUTION_KEYS

  cfg = copy.deepcopy(cfg)
  with cfg.unlocked():
    cfg.train.init_from = ""
    dcn = [a for a in ("data", "fsdp", "tensor") if int(cfg.mesh.get(f"dcn_{a}", 1)) > 1]
    if topology.num_slices > 1 and not dcn:
      cfg.mesh.dcn_data = topology.num_slices  # slices replicate the model, split the batch
  if not set(cfg.model.keys()) - set(EXECUTION_KEYS) - {"family"}:
    raise ValueError("the config's model section has no architecture (model.vision, "
                     "model.decoder, ...): ahead-of-time compilation builds the model from it")
  return cfg


def abstract_train_batch(cfg, family, model_config, mesh):
  """`ShapeDtypeStruct`s of one global batch (schema: `mmjax.data.pipeline`), sharded over the
  mesh's batch axes, as the family lays it out (`Family.abstract_train_batch`)."""
  import jax

  from mmjax import sharding as shd

  from mmjax.data import pairs
  from mmjax.train.preference import PreferenceConfig

  rows = shd.batch_sharding(mesh)
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
  batch = family.abstract_train_batch(model_config, dict(cfg.data), sds)
  preference = PreferenceConfig.from_train(cfg.train)
  if preference is None:
    return batch
  return pairs.pair_structs(batch, sds, not preference.needs_reference_model)


def analytic_train_flops(cfg, family, model_config, params, batch,
                         attention=("decoder", "encoder")) -> float:
  """Model FLOPs of one step (`Family.aot_train_flops`), attention products counted in the
  stacks named in `attention`."""
  return family.aot_train_flops(model_config, params, batch, tuple(cfg.train.trainable), attention)


def _compile(lowered, compiler_options: dict | None = None):
  try:
    return lowered.compile(compiler_options=compiler_options)
  except Exception as e:  # XlaRuntimeError; its class moves between jax versions
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "exceeds" in text:
      raise OutOfMemory(text) from e
    raise


def _flops(compiled, devices: int) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) * devices


# The TPU compiler splits an all-gather or reduce-scatter around a dot into a loop of partial dots
# overlapped with the transfers ("windowed einsum", collective matmul), and cost analysis counts
# that loop's body once: with fsdp over 32 chips a 7B step read 1/8 of its FLOPs. The FLOP-counting
# compiles turn it off; the arithmetic is the same, only its schedule differs.
_COUNTING_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                     "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def lower_train(cfg, devices, offload_optimizer: bool = False):
  """(trainer, abstract batch, lowered step) of a prepared config on compile-only devices: the
  model built, sharded and traced (seconds), not yet compiled (minutes at full size)."""
  import jax

  from mmjax.train.loop import Trainer

  trainer = Trainer.build(cfg, devices)
  batch = abstract_train_batch(cfg, trainer.family, trainer.model_config, trainer.mesh)
  step_fn = trainer.step_fn
  if offload_optimizer:
    from mmjax.train.offload import offload_optimizer_state

    step_fn = offload_optimizer_state(trainer)
  with jax.set_mesh(trainer.mesh):
    return trainer, batch, step_fn.lower(trainer.abstract_state, batch)


def _build_and_compile_train(cfg, devices, offload_optimizer: bool = False,
                             compiler_options: dict | None = None):
  """(trainer, abstract batch, compiled step) of a prepared config on compile-only devices."""
  import jax

  trainer, batch, lowered = lower_train(cfg, devices, offload_optimizer)
  with jax.set_mesh(trainer.mesh):
    return trainer, batch, _compile(lowered, compiler_options)


def _family(cfg):
  from mmjax.models.registry import family_named

  return family_named(cfg.model.get("family", "llava"))


def _with_depth(cfg, depths: dict[str, int]):
  """A copy with these stack depths (`Family.with_depths`), one micro-batch and the dense
  loss."""
  cfg = copy.deepcopy(cfg)
  with cfg.unlocked():
    cfg.train.grad_accum = 1  # the accumulation loop would be counted once too
    # So would the target-only loss's chunk loop; the dense head is what the analytic count
    # assumes (every position's logits).
    cfg.train.loss_chunk = 0
    _family(cfg).with_depths(cfg.model, depths)
  return cfg


def compiled_train_flops(cfg, devices) -> float:
  """Compiled FLOPs of the whole step, every layer counted.

  XLA's cost analysis counts a while loop's body once, so the scanned stacks (and the gradient
  accumulation loop) hide most of the work. The step's FLOPs are affine in each stack's depth:
  compile unrolled copies with 1 layer everywhere and 2 layers in one stack at a time (the full
  global batch in one micro-batch), and extrapolate to the real depths. An estimate: XLA's count
  for one more layer moves by 1-2% with the depth (fusion decisions), about 1% on the total.
  """
  from mmjax.nn.stack import unrolled_layers

  depths = _family(cfg).flop_depths(cfg.model)

  def flops(overrides: dict[str, int]) -> float:
    with unrolled_layers():
      _, _, compiled = _build_and_compile_train(
          _with_depth(cfg, {name: overrides.get(name, 1) for name in depths}), devices,
          compiler_options=_COUNTING_OPTIONS)
    return _flops(compiled, len(devices))

  base = flops({})
  _progress(f"1 layer per stack: {base:.4g} FLOPs")
  total = base
  for name, depth in depths.items():
    per_layer = flops({name: 2}) - base
    _progress(f"{name}: {per_layer:.4g} FLOPs per layer x {depth}")
    total += (depth - 1) * per_layer
  return total


def _progress(message: str) -> None:
  print(f"[aot] {message}", file=sys.stderr, flush=True)


def compile_train(cfg, topology: tpu.Topology, offload_optimizer: bool = False,
                  count_flops: bool = False) -> Report:
  """`count_flops=True` adds the shallow compiles of `compiled_train_flops` (minutes at full
  size); without it the report's compiled FLOPs are XLA's count, each loop body once."""
  from mmjax.train import metrics
  from mmjax.train.state import merge

  cfg = prepare_config(cfg, topology)
  devices = tpu.compile_only_devices(topology)
  trainer, batch, compiled = _build_and_compile_train(cfg, devices, offload_optimizer)
  state = trainer.abstract_state
  if count_flops:  # the counting compiles take as long again: say what is known already
    _progress(f"step compiled: {Memory.of(compiled).total / GIB:.2f} GiB per chip; "
              "counting FLOPs with shallow unrolled compiles")
  extra = {}
  if offload_optimizer:
    extra["optimizer state"] = "offloaded to pinned host memory"
  from mmjax.data.pairs import answer_rows

  rows, length = answer_rows(batch)["input_ids"].shape  # pairs: both answers are rows
  family, model_config = trainer.family, trainer.model_config
  analytic = analytic_train_flops(cfg, family, model_config, merge(state.params, state.frozen),
                                  answer_rows(batch))
  kernels = family.kernel_attention_stacks(model_config)
  if kernels:
    counted = tuple(s for s in ("decoder", "encoder") if s not in kernels)
    without = analytic_train_flops(cfg, family, model_config, merge(state.params, state.frozen),
                                   answer_rows(batch), attention=counted)
    extra["attention kernels"] = (
        f"{' and '.join(kernels)} attention runs in Pallas kernels, which XLA counts as 0 "
        f"FLOPs: analytic without their attention {without:.4g}")
  if count_flops:
    compiled_flops = compiled_train_flops(cfg, devices)
    extra["compiled FLOPs"] = "every layer counted (shallow unrolled compiles, extrapolated)"
    if kernels:
      extra["attention kernels"] += f" (compiled / that {compiled_flops / without:.3f})"
  else:
    compiled_flops = _flops(compiled, len(devices))
    extra["compiled FLOPs"] = ("XLA's count, each loop body once (layer stacks, accumulation, the "
                              "compiler's windowed matmuls): --count-flops counts them all")
  params = metrics.count_params(merge(state.params, state.frozen))
  trained = metrics.count_params(state.params)
  extra["parameters"] = f"{params / 1e9:.2f} B ({trained / 1e9:.2f} B trained)"
  if trainer.preference is not None:  # pair batches: `batch` counts both answers as rows
    copied = metrics.count_params(state.reference) / 1e9
    reference = (f"the frozen initial model ({copied:.2f} B parameters copied, the frozen "
                 "parts shared)" if trainer.preference.needs_reference_model
                 else "precomputed log-probabilities in the batch")
    extra["objective"] = (f"{trainer.preference.objective}, {rows // 2} pairs; reference: "
                          f"{reference}")
  decoder = family.decoder_config(model_config)
  extra["remat"] = decoder.remat_policy
  extra["attention"] = decoder.attention_backend
  images = ", ".join(f"{k} {tuple(v.shape)}" for k, v in batch.items() if k.startswith("pixel"))
  return Report("train", topology, {k: int(v) for k, v in trainer.mesh.shape.items()},
                f"global batch {rows} x {length} tokens{', ' + images if images else ''} "
                f"(grad_accum {int(cfg.train.get('grad_accum', 1))})",
                Memory.of(compiled), compiled_flops, analytic, extra)


def compile_generate(cfg, topology: tpu.Topology, batch: int, prompt_len: int,
                     max_new_tokens: int) -> Report:
  """Prefill + decode loop (`mmjax.generation`) with parameters sharded as in training."""
  import jax
  import jax.numpy as jnp

  import numpy as np

  from mmjax import sharding as shd
  from mmjax.generation.loop import GenerateConfig, Generator
  from mmjax.generation.sampling import Knobs, Sampling
  from mmjax.train import metrics
  from mmjax.train.loop import Trainer
  from mmjax.train.state import merge

  cfg = prepare_config(cfg, topology)
  with cfg.unlocked():
    cfg.data.batch_size = batch
    cfg.train.trainable = ()  # no optimizer state: parameters only
  devices = tpu.compile_only_devices(topology)
  trainer = Trainer.build(cfg, devices)
  mesh, family, model_config = trainer.mesh, trainer.family, trainer.model_config
  shardings = merge(trainer.state_shardings.params, trainer.state_shardings.frozen)
  abstract = trainer.abstract_state.all_params()
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, shardings)
  generator = Generator(family, model_config, params, mesh)
  gen = GenerateConfig(max_new_tokens).static
  # A prompt of the family's own processor arrays (one image per row), checked and turned into
  # the prefill's inputs on the host as a real call would, then described by shape only.
  example = family.example_processor_inputs(model_config, batch, prompt_len)
  ids = np.asarray(example["input_ids"], np.int32)
  pixels, positions = generator.model.prepare_inputs(
      ids, np.ones_like(ids), family.generation_pixels(model_config, example), None)
  rows = shd.batch_sharding(mesh)

  def described(x):  # leading axis over the batch shards when it divides, else replicated
    split = x.ndim and x.shape[0] % int(np.prod([mesh.shape[a] for a in shd.BATCH_AXES])) == 0
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rows if split else
                                shd.replicated(mesh))

  ids, pixels, positions = jax.tree.map(lambda x: described(np.asarray(x)),
                                        (ids, pixels, positions))
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=shd.replicated(mesh))
  knobs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                      sharding=shd.replicated(mesh)),
                       jax.eval_shape(lambda: Knobs.of(Sampling())))
  with jax.set_mesh(mesh):
    prefill = _compile(generator._prefill.lower(params, ids, ids, positions, pixels, rng, knobs,
                                                gen=gen))
    carry = jax.tree.map(lambda o, s: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=s),
                         jax.eval_shape(lambda *a: generator._prefill_fn(*a, gen=gen), params, ids,
                                        ids, positions, pixels, rng, knobs),
                         prefill.output_shardings)
    decode = _compile(generator._decode.lower(params, carry, gen=gen, on_token=None))
  pre, dec = Memory.of(prefill), Memory.of(decode)
  memory = pre if pre.total >= dec.total else dec
  all_params = abstract
  analytic = family.train_flops(model_config, all_params, example, ())  # the prefill's forward
  decoder_params = metrics.count_params(
      {k: v for k, v in all_params["decoder"].items() if k != "embed"})
  analytic += 2 * decoder_params * batch * (max_new_tokens - 1)  # decode: weights only
  compiled = _flops(prefill, len(devices)) + _flops(decode, len(devices))
  extra = {"prefill per chip": f"{pre.total / GIB:.2f} GiB (temporaries "
                               f"{pre.temporaries / GIB:.2f} GiB)",
           "decode per chip": f"{dec.total / GIB:.2f} GiB (temporaries "
                              f"{dec.temporaries / GIB:.2f} GiB; a while loop: its body is "
                              "counted once in the compiled FLOPs)",
           "parameters": f"{metrics.count_params(all_params) / 1e9:.2f} B"}
  from mmjax import serving_cost

  extra["decode roofline"] = serving_cost.decode_roofline(
      params, carry["state"]["cache"], batch, len(devices), topology.chip).describe()
  return Report("generate", topology, {k: int(v) for k, v in mesh.shape.items()},
                f"{batch} prompts x {prompt_len} tokens + {max_new_tokens} new tokens",
                memory, compiled, analytic, extra)


def _run(args, overrides) -> int:
  _force_cpu_host()
  from mmjax.train.cli import add_optional_keys, apply_overrides, load_config

  topology = tpu.parse(args.topology)
  cfg = load_config(args.config)
  add_optional_keys(cfg)
  apply_overrides(cfg, overrides)
  try:
    if args.step == "train":
      report = compile_train(cfg, topology, offload_optimizer=args.offload_optimizer,
                             count_flops=args.count_flops)
    else:
      report = compile_generate(cfg, topology, args.batch, args.prompt_len, args.max_new_tokens)
  except OutOfMemory as e:
    print(f"{args.step} step does not fit on {topology.name} "
          f"({topology.spec.hbm_bytes / GIB:.0f} GiB HBM per chip); the compiler says:\n{e}",
          file=sys.stderr)
    return 1
  print(report.format(args.mfu))
  return 0 if report.fits else 1


def add_subcommand(sub) -> None:
  p = sub.add_parser(
      "aot", help="compile a config for a TPU topology on this host (memory, FLOPs, fit)",
      description="Ahead-of-time compile the train step (or the generate step) of a config for "
      "a TPU slice, on a CPU-only host, through libtpu (`pip install -e .[tpu]`). Prints per-chip "
      "memory against HBM, compiled vs analytic FLOPs and an estimated step time. Exits 0 when "
      "it fits, 1 with the compiler's message when it does not. Override config keys with "
      "--config.section.key=value.",
      epilog="example: mmjax aot --config configs/llava/llava15_7b_stage2.py --topology v5p-64")
  p.add_argument("--config", required=True, metavar="FILE[:ARG]", help="training config file")
  p.add_argument("--topology", required=True, metavar="NAME",
                 help="v4-N, v5e-N, v5p-N, v6e-N, or multi-slice SxNAME (e.g. 2xv5p-128)")
  p.add_argument("--step", default="train", choices=["train", "generate"])
  p.add_argument("--mfu", type=float, default=0.4,
                 help="model FLOPs utilisation for the step-time estimate (default: %(default)s)")
  p.add_argument("--offload-optimizer", action="store_true",
                 help="keep the optimizer state in pinned host memory between steps")
  p.add_argument("--count-flops", action="store_true",
                 help="train: count every layer in the compiled FLOPs (extra compiles of shallow "
                 "unrolled copies, extrapolated in depth; XLA counts a loop body once)")
  p.add_argument("--batch", type=int, default=32, help="generate: prompts (default: %(default)s)")
  p.add_argument("--prompt-len", type=int, default=1024,
                 help="generate: prompt tokens, images included (default: %(default)s)")
  p.add_argument("--max-new-tokens", type=int, default=256,
                 help="generate: new tokens (default: %(default)s)")
  p.set_defaults(func=_run, accepts_overrides=True)
