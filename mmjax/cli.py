"""The `mmjax` command: convert, export, logits (and more as families and tools land)."""

import argparse
import contextlib
import json
import os
import sys

_EPILOG = "Run `mmjax COMMAND --help` for the options of one command."


def _convert(args) -> int:
  from mmjax.convert.importer import convert_hf

  report = convert_hf(args.hf, args.out, dtype=args.dtype, progress=not args.quiet)
  print(f"converted {args.hf} -> {args.out}: {json.dumps(report)}")
  if report.get("cast_from_integer"):
    print(f"warning: {len(report['cast_from_integer'])} float parameters were filled from integer "
          f"tensors (cast_from_integer above); check that {args.hf} holds the weights you expect",
          file=sys.stderr)
  return 0


def _export(args) -> int:
  import tempfile

  from mmjax.convert.exporter import export_hf

  source = args.checkpoint
  with contextlib.ExitStack() as scratch:
    if args.merge_lora:  # merged into a scratch checkpoint beside --out, then exported
      from mmjax.train.adapters import merge_into_checkpoint

      if os.path.exists(args.out) and os.listdir(args.out):
        raise FileExistsError(f"{args.out} exists and is not empty; choose a new output directory")
      parent = os.path.dirname(os.path.abspath(args.out))
      os.makedirs(parent, exist_ok=True)
      tmp = scratch.enter_context(tempfile.TemporaryDirectory(dir=parent, prefix=".merge-lora-"))
      source = merge_into_checkpoint(args.checkpoint, args.merge_lora, os.path.join(tmp, "model"))
    report = export_hf(source, args.out, dtype=args.dtype, layout=args.layout,
                       max_shard_bytes=int(args.max_shard_gb * 10**9), progress=not args.quiet)
  merged = f" + LoRA {args.merge_lora}" if args.merge_lora else ""
  print(f"exported {args.checkpoint}{merged} -> {args.out}: {json.dumps(report)}")
  return 0


def _logits(args) -> int:
  import numpy as np

  from mmjax import limits
  from mmjax.checkpoint import load_checkpoint, read_metadata
  from mmjax.models.registry import forward_from_hf_inputs

  if not os.path.exists(args.inputs):
    raise FileNotFoundError(f"{args.inputs}: no such file")
  with np.load(args.inputs) as data:
    inputs = {k: data[k] for k in data.files}
  family, config, _ = read_metadata(args.checkpoint)
  if "input_ids" in inputs and hasattr(limits.decoder_of(config), "vocab_size"):
    limits.check_prompt(inputs["input_ids"], config)  # before any weight is read
  family, config, params = load_checkpoint(args.checkpoint)
  logits = forward_from_hf_inputs(family, config, params, inputs)
  np.save(args.out, logits)
  print(f"wrote logits {tuple(logits.shape)} float32 to {args.out}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="mmjax", description="TPU-native vision-language models in JAX/Flax.", epilog=_EPILOG)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser(
      "convert", help="Hugging Face checkpoint -> mmjax (Orbax) checkpoint",
      description="Convert a Hugging Face checkpoint directory (config.json + safetensors, "
      "single or sharded; legacy pytorch_model.bin through torch weights_only) into an mmjax "
      "checkpoint. Tensors are streamed one at a time. The conversion is strict: every tensor "
      "must be used or be a known buffer, every parameter filled, every shape right; otherwise "
      "it exits non-zero naming the key and leaves nothing at --out.")
  p.add_argument("--hf", required=True, metavar="DIR", help="Hugging Face model directory")
  p.add_argument("--out", required=True, metavar="DIR", help="new checkpoint directory")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="parameter dtype to store (default: %(default)s)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=_convert)

  p = sub.add_parser(
      "export", help="mmjax checkpoint -> Hugging Face directory",
      description="Write safetensors + config.json (and the tokenizer/processor files kept at "
      "conversion) that transformers' from_pretrained loads. By default every tensor gets back "
      "its original dtype and key spelling, so HF -> mmjax -> HF is bit for bit.")
  p.add_argument("--checkpoint", required=True, metavar="DIR", help="mmjax checkpoint directory")
  p.add_argument("--out", required=True, metavar="DIR", help="new Hugging Face directory")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                 help="tensor dtype (default: as in the source checkpoint)")
  p.add_argument("--layout", default=None,
                 help="key spelling, e.g. v5 or v4 for LLaVA (default: as in the source)")
  p.add_argument("--max-shard-gb", type=float, default=5.0, help="shard size (default: 5 GB)")
  p.add_argument("--merge-lora", default=None, metavar="ADAPTER",
                 help="a LoRA adapter directory (a LoRA run's DIR/adapter) to merge into "
                 "--checkpoint's weights (W + alpha/r * A B) before export; --checkpoint is the "
                 "run's base model (its train.init_from)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=_export)

  p = sub.add_parser(
      "logits", help="forward pass on transformers-processor arrays -> logits .npy",
      description="Run the model on exactly the arrays a transformers processor makes, saved "
      "with numpy.savez: input_ids [B, T], attention_mask [B, T] (optional), position_ids "
      "(optional; else computed from the attention mask as transformers' generate does), "
      "pixel_values [I, C, H, W] (NCHW; LLaVA-NeXT: the processor's [I, tiles, C, H, W] with "
      "image_sizes [I, 2]; Pixtral / Mistral3: padded to the largest image, with image_sizes "
      "[I, 2]; IDEFICS: [B, N, C, H, W] with image_attention_mask [B, T, N]; Fuyu: "
      "FuyuProcessor's image_patches [P, F] or pixel_values; T5 and BLIP-2 / InstructBLIP with "
      "Flan-T5: decoder_input_ids [B, Td] (+ decoder_attention_mask), the logits being the "
      "decoder's [B, Td, V]). Writes float32 logits [B, T, V]; for "
      "CLIP / SigLIP dual encoders (input_ids [N, L], pixel_values [B, C, H, W]) "
      "logits_per_image [B, N].")
  p.add_argument("--checkpoint", required=True, metavar="DIR", help="mmjax checkpoint directory")
  p.add_argument("--inputs", required=True, metavar="FILE.npz", help="processor arrays")
  p.add_argument("--out", required=True, metavar="FILE.npy", help="where to write the logits")
  p.set_defaults(func=_logits)

  _add_optional_commands(sub)
  return parser


# Commands that live beside their subsystem; each module has `add_subcommand(subparsers)`.
_OPTIONAL_COMMAND_MODULES = ("mmjax.generate_cli", "mmjax.train.cli", "mmjax.aot",
                             "mmjax.convert.minigpt4",
                             "mmjax.eval.cli",
                             "mmjax.plot")


def _add_optional_commands(sub) -> None:
  import importlib
  import importlib.util

  def available(name: str) -> bool:
    try:
      return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
      return False

  for name in _OPTIONAL_COMMAND_MODULES:
    if available(name):
      importlib.import_module(name).add_subcommand(sub)
  if available("mmjax.data.cli"):
    data_cli = importlib.import_module("mmjax.data.cli")
    p = sub.add_parser("data", help="pack and check datasets",
                       description="Dataset tools: pack JSON + images into ArrayRecord shards, "
                       "check a dataset without training.")
    data_cli.add_subcommands(p.add_subparsers(dest="data_command", required=True))


def _avoid_absent_tpu() -> None:
  """With libtpu installed (the `tpu` / `test` extras) but no TPU attached, JAX would first try
  the TPU, print libtpu's initialisation errors and may wait on the metadata server: run on the
  CPU instead. TPU VMs expose the chips as /dev/accel* (v4, v5e) or /dev/vfio/N (v5p, v6e);
  JAX_PLATFORMS set by the user always wins, as does an installed CUDA plugin."""
  import glob
  import importlib.util

  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return
  if any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin")):
    return
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def main(argv: list[str] | None = None) -> int:
  from mmjax import errors

  _avoid_absent_tpu()
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  if extra and not getattr(args, "accepts_overrides", False):
    parser.error(f"unrecognized arguments: {' '.join(extra)}")
  command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
  errors.quiet_background_failures()
  try:
    if getattr(args, "accepts_overrides", False):
      return int(args.func(args, extra) or 0)
    return int(args.func(args) or 0)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # the one place where errors become exit codes (mmjax/errors.py)
    code = errors.report(command, e)
    if code is None:
      raise  # a bug: keep the traceback
    return code

if __name__ == "__main__":
  sys.exit(main())
