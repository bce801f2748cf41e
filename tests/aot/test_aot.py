"""Ahead-of-time compilation for TPU topologies on this CPU host (libtpu from the test extra).

The full-size presets compile at full size for the topology their docstrings name and must fit
in the chip's HBM; the generate step, the out-of-memory exit and multi-slice meshes are checked
on the tiny config (the compiler's work, not the model size, is what they exercise).
"""

import concurrent.futures
import glob
import multiprocessing
import os
import re

import pytest

from mmjax import aot, topology as tpu
from mmjax.cli import main
from mmjax.train.cli import load_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "configs")
TINY = os.path.join(CONFIGS, "tiny", "shapes.py")
GIB = 1024**3


def test_topology_names():
  v5p = tpu.parse("v5p-64")
  assert (v5p.num_chips, v5p.shape, v5p.topology_name) == (32, (2, 4, 4), "v5:2x4x4")
  assert tpu.parse("v5p-256").shape == (4, 4, 8) and tpu.parse("v5p-256").wrap == (True,) * 3
  assert tpu.parse("v4-8").shape == (2, 2, 1)
  assert tpu.parse("v5e-256").topology_name == "v5e:16x16"
  assert tpu.parse("v6e-8").chips_per_host == (2, 4, 1)
  multi = tpu.parse("2xv5p-128")
  assert (multi.num_slices, multi.chips_per_slice, multi.num_chips) == (2, 64, 128)
  for bad in ("v5p-63", "v7-8", "tpu"):
    with pytest.raises(ValueError):
      tpu.parse(bad)


# (config, topology, parameters): the presets, the slice each one's docstring says it was checked
# on, and the size it must build at (the architecture comes from the config, no checkpoint).
PRESETS = [
    ("llava/llava15_7b_stage1.py", "v5p-64", "7.06 B"),
    ("llava/llava15_7b_stage2.py", "v5p-64", "7.06 B"),
    ("llava/llava15_13b_stage2.py", "v5p-64", "13.35 B"),
    ("llava/llava_70b_stage2.py", "v5p-256", "69.36 B"),
    ("qwen2_vl/qwen2_vl_7b_sft.py", "v5p-64", "8.29 B"),
    ("internvl/internvl2_8b_sft.py", "v5p-64", "8.08 B"),
]


def _compile_preset(path: str, topology: str) -> "aot.Report":
  return aot.compile_train(load_config(os.path.join(CONFIGS, path)), tpu.parse(topology))


@pytest.fixture(scope="module")
def preset_reports(request):
  """The selected presets' reports, compiled two at a time in worker processes: TPU compilation
  is mostly single-threaded and each preset takes minutes, so this halves the suite's wall time on
  two cores. Maps (path, topology) to a future."""
  wanted = sorted({(item.callspec.params["path"], item.callspec.params["topology"])
                   for item in request.session.items
                   if getattr(item, "originalname", "") == "test_preset_train_step_fits"})
  pool = concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
  futures = {key: pool.submit(_compile_preset, *key) for key in wanted}
  yield futures
  pool.shutdown(cancel_futures=True)


@pytest.mark.tpu_compile
@pytest.mark.parametrize("path,topology,parameters", PRESETS)
def test_preset_train_step_fits(path, topology, parameters, preset_reports):
  docstring = open(os.path.join(CONFIGS, path)).read()
  assert f"--topology {topology}" in docstring  # the preset states what it was checked on
  report = preset_reports[(path, topology)].result()
  print(report.format(0.4))
  assert report.fits, report.format(0.4)
  assert report.extra["parameters"].startswith(parameters)
  assert report.memory.total > report.memory.arguments > 0
  assert report.analytic_flops > 0 and report.compiled_flops > 0
  assert report.extra["attention"] == "splash"


def _stated_topology(path: str) -> str | None:
  """The topology a preset's docstring says it is checked on (`--topology NAME`)."""
  match = re.search(r"--topology (\S+?)`?\s", open(os.path.join(CONFIGS, path)).read())
  return match and match.group(1)


# Every other preset that states a topology: built, sharded and traced for it (seconds), which
# catches a broken config, sharding rule or abstract batch; the memory fit is each one's
# docstring figure from `mmjax aot` (a full compile takes minutes of the suite's two cores).
LOWERED = sorted(
    (path, _stated_topology(path))
    for path in (os.path.relpath(p, CONFIGS) for p in glob.glob(os.path.join(CONFIGS, "*", "*.py")))
    if not path.startswith("tiny" + os.sep) and _stated_topology(path)
    and path not in {p for p, _, _ in PRESETS})


def test_every_other_preset_lowers_for_its_topology():
  from mmjax.train.metrics import count_params
  from mmjax.train.state import merge

  assert LOWERED  # the glob found presets
  for path, topology in LOWERED:
    topo = tpu.parse(topology)
    cfg = aot.prepare_config(load_config(os.path.join(CONFIGS, path)), topo)
    trainer, batch, lowered = aot.lower_train(cfg, tpu.compile_only_devices(topo))
    state = trainer.abstract_state
    assert count_params(merge(state.params, state.frozen)) > 1e9, path  # at full size
    assert "input_ids" in batch and lowered.compiler_ir() is not None


@pytest.mark.tpu_compile
def test_generate_step_and_multislice(capsys):
  assert main(["aot", "--config", TINY, "--topology", "v5e-4", "--step", "generate", "--batch",
               "8", "--prompt-len", "64", "--max-new-tokens", "8"]) == 0
  out = capsys.readouterr().out
  assert "generate step on v5e-4" in out and "fits" in out
  assert "decode roofline: " in out and "tokens/s per chip" in out
  report = aot.compile_train(load_config(TINY), tpu.parse("2xv5e-8"))
  assert report.mesh == {"data": 16, "fsdp": 1, "tensor": 1} and report.fits
  assert report.topology.num_chips == 16 and report.compiled_flops > 0


@pytest.mark.tpu_compile
@pytest.mark.parametrize("family", ["qwen2_vl", "mllama"])
def test_generate_step_of_families_without_a_fixed_image_size(family, capsys):
  """Qwen-VL's vision config has no `image_size` (native resolution) and Llama 3.2 Vision's
  images enter through cross-attention: each family's example processor arrays drive the step."""
  config = os.path.join(CONFIGS, "tiny", f"{family}.py")
  assert main(["aot", "--config", config, "--topology", "v5e-4", "--step", "generate", "--batch",
               "4", "--prompt-len", "32", "--max-new-tokens", "4"]) == 0
  out = capsys.readouterr().out
  assert "generate step on v5e-4" in out and "fits" in out


@pytest.mark.tpu_compile
def test_out_of_memory_exits_1_with_the_compilers_message(capsys):
  code = main(["aot", "--config", TINY, "--topology", "v5e-1", "--config.data.batch_size=8",
               "--config.data.max_length=32768"])
  err = capsys.readouterr().err
  assert code == 1
  assert "does not fit on v5e-1" in err and "RESOURCE_EXHAUSTED" in err


@pytest.fixture(scope="module")
def tiny_train_report():
  """The tiny config's train step on v5e-4 (the optional keys filled in, as `mmjax train` does):
  the baseline of the offload and preference tests, compiled once (TPU compiles are not served
  by the compilation cache)."""
  from mmjax.train.cli import add_optional_keys

  cfg = load_config(TINY)
  add_optional_keys(cfg)
  return aot.compile_train(cfg, tpu.parse("v5e-4"))


@pytest.mark.tpu_compile
def test_offloaded_optimizer_state_lives_in_host_memory(tiny_train_report):
  on_device = tiny_train_report
  offloaded = aot.compile_train(load_config(TINY), tpu.parse("v5e-4"), offload_optimizer=True)
  assert on_device.memory.host_arguments == 0 < offloaded.memory.host_arguments
  # AdamW's two moments (float32, like the parameters) leave HBM for the host.
  moved = on_device.memory.arguments - offloaded.memory.arguments
  assert moved == offloaded.memory.host_arguments > 0


@pytest.mark.tpu_compile
def test_compiled_flops_count_every_layer():
  """The depth extrapolation gives the FLOPs of the whole step compiled unrolled (no loop for the
  cost analysis to count once), and several times the scanned step's count. Not exactly: XLA's
  count for one more layer moves by 1-2% with the depth (its fusion decisions differ), which
  leaves the extrapolation 0.6% short on this model."""
  from mmjax.nn.stack import unrolled_layers

  topology = tpu.parse("v5e-4")
  cfg = aot.prepare_config(load_config(TINY), topology)
  with cfg.unlocked():
    cfg.model.vision.num_layers, cfg.model.decoder.num_layers = 3, 4
    # The dense loss, which the extrapolation counts: the target-only loss is a loop over chunks
    # (the last layer and the LM head), whose body the cost analysis counts once whatever its
    # trip count.
    cfg.train.loss_chunk = 0
  devices = tpu.compile_only_devices(topology)
  extrapolated = aot.compiled_train_flops(cfg, devices)
  with unrolled_layers():
    unrolled = aot._flops(aot._build_and_compile_train(cfg, devices)[2], len(devices))
  scanned = aot._flops(aot._build_and_compile_train(cfg, devices)[2], len(devices))
  assert extrapolated == pytest.approx(unrolled, rel=1e-2)
  assert unrolled > 2 * scanned


@pytest.mark.tpu_compile
def test_preference_step_compiles_with_pair_batches_and_its_reference(tiny_train_report):
  """`train.objective=dpo`: the abstract batch holds pairs (an answer axis) and the arguments
  hold the reference model's frozen copy of what trains (here everything: float32)."""
  from mmjax.train.cli import add_optional_keys
  from mmjax.train.metrics import count_params

  cfg = load_config(TINY)
  add_optional_keys(cfg)
  cfg.train.objective = "dpo"
  topology = tpu.parse("v5e-4")
  lm, dpo = tiny_train_report, aot.compile_train(cfg, topology)
  assert dpo.fits and dpo.batch.startswith("global batch 128 x 16 tokens")  # 64 pairs
  assert dpo.extra["objective"].startswith("dpo, 64 pairs; reference: the frozen initial model")
  from mmjax.train.loop import Trainer

  trainer = Trainer.build(aot.prepare_config(cfg, topology),
                          tpu.compile_only_devices(topology))
  copied = 4 * count_params(trainer.abstract_state.reference)
  assert copied == 4 * count_params(trainer.abstract_state.params) > 0
  # At least the copy's share of every chip (more where a small parameter is replicated).
  assert dpo.memory.arguments - lm.memory.arguments >= copied / topology.num_chips
