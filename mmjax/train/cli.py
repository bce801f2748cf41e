"""`mmjax train`: run or resume training from an ml_collections config file."""

import ast
import importlib.util
import os
import sys

import ml_collections

from mmjax.errors import ConfigError


def load_config(spec: str | None) -> ml_collections.ConfigDict:
  """`FILE[:ARG]` -> `get_config(ARG)` of that file; None -> the embedded default."""
  if spec is None:
    from mmjax.train.shapes_default import get_config

    return get_config()
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} not found")
  module_spec = importlib.util.spec_from_file_location("mmjax_user_config", path)
  if module_spec is None:
    raise ConfigError(f"config file {path} is not a Python file")
  module = importlib.util.module_from_spec(module_spec)
  # Configs may import their siblings (e.g. stage 2 extends stage 1), as in big_vision.
  sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
  try:
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"{path} has no get_config()")
    config = module.get_config(arg or None)
  except ConfigError:
    raise
  except Exception as e:  # the config file is user code: any error is its own, named with its line
    raise ConfigError(f"config file {path} failed{_where(e, path)}: {type(e).__name__}: {e}") from e
  finally:
    sys.path.pop(0)
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() returned a {type(config).__name__}, not an "
                      "ml_collections.ConfigDict")
  return config


def _where(error: BaseException, path: str) -> str:
  """` at line N` of the deepest frame of `error` in the config file `path`."""
  import traceback

  if isinstance(error, SyntaxError) and error.lineno:
    return f" at line {error.lineno}"
  lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
           if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f" at line {lines[-1]}" if lines else ""


def _parse_value(text: str, current):
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"expected true/false, got {text!r}")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    value = text  # a bare string
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, int) and isinstance(value, float) and value.is_integer():
    value = int(value)  # steps=1e4
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, tuple) and isinstance(value, str):  # one item: targets='decoder/.*'
    value = (value,)
  # A number keeps its type (`steps=abc` is an error here, not a TypeError deep in training).
  if isinstance(current, int) and (isinstance(value, bool) or not isinstance(value, int)):
    raise ValueError(f"expected an integer, got {text!r}")
  if isinstance(current, float) and not isinstance(value, float):
    raise ValueError(f"expected a number, got {text!r}")
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Applies `--config.a.b=value` (or `--config.a.b value`) overrides in place."""
  i = 0
  while i < len(overrides):
    item = overrides[i]
    if not item.startswith("--config."):
      raise ValueError(f"unrecognised argument {item!r} (overrides look like --config.a.b=v)")
    key, eq, text = item[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(overrides):
        raise ValueError(f"{item} needs a value")
      text = overrides[i + 1]
      i += 1
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      if p not in node:
        raise ValueError(f"--config.{key}: no section {p!r} in the config")
      node = node[p]
    if leaf not in node:
      raise ValueError(f"--config.{key}: no such key (known here: {sorted(node.keys())})")
    try:
      node[leaf] = _parse_value(text, node[leaf])
    except (ValueError, TypeError) as e:  # TypeError: ml_collections refuses a type change
      raise ConfigError(f"--config.{key}={text}: {e}") from None
    i += 1


# Keys every training config takes without declaring them (so `--config.train.stop_after=N`
# works on any config file).
OPTIONAL_KEYS = {"train": {
    "stop_after": 0,  # end after step N with a checkpoint; 0: no
    # LM head on target positions only, this many per row at a time; 0: on every position.
    # (Value: mmjax.train.loss.DEFAULT_CHUNK, not imported here to keep `--help` free of jax.)
    "loss_chunk": 64,
    # Trace the scanned layer stacks as straight-line layers (same parameters). On the CPU a
    # small model's step is ~5% faster without the scan's stacked residual buffers; keep the
    # scan for deep models and TPUs (compile time grows with depth).
    "unroll_layers": False,
    # How a sample's target tokens weigh in the loss: "token" (every target alike), "sample"
    # (every sample alike), "square" (InternVL3: a sample of n targets weighs sqrt(n)).
    "loss_weighting": "token",
    # "lm": next-token loss; "dpo" / "mpo": preference pairs (mmjax.train.preference).
    "objective": "lm",
    "dpo": {
        "beta": 0.1,  # reward scale (DPO's KL strength)
        "label_smoothing": 0.0,  # assumed fraction of flipped preferences (TRL's sigmoid loss)
        # "model": the frozen initial model, run in each step; "precomputed": the pairs'
        # ref_chosen_logps / ref_rejected_logps columns.
        "reference": "model",
    },
    "mpo": {  # InternVL3's weights of DPO, the BCO quality loss and the chosen answers' LM loss
        "preference_weight": 0.8,
        "quality_weight": 0.2,
        "generation_weight": 1.0,
    },
}, "lora": {  # low-rank adapters (mmjax.nn.lora); rank 0: off
    "rank": 0,
    "alpha": 16.0,  # the update is scaled by alpha / rank (peft's lora_alpha)
    "targets": (),  # regexes over linear-layer paths, e.g. 'decoder/layers/attn/(q|k|v|o)'
    "positions": "all",  # 'image': the update only at image-token positions (partial LoRA)
    "init": "kaiming",  # A's init as peft's: 'kaiming' (uniform) or 'gaussian' (std 1/rank)
}}


def add_optional_keys(config: ml_collections.ConfigDict, keys: dict = OPTIONAL_KEYS) -> None:
  """Fills in the `OPTIONAL_KEYS` a config file leaves out, so overrides can set them."""
  with config.unlocked():
    for key, default in keys.items():
      if isinstance(default, dict):
        if key not in config:
          config[key] = ml_collections.ConfigDict()
        add_optional_keys(config[key], default)
      elif key not in config:
        config[key] = default


def _run(args, overrides) -> int:
  config = load_config(args.config)
  add_optional_keys(config)
  apply_overrides(config, overrides)
  from mmjax import distributed, hostmem

  if hostmem.runs_on_cpu_only():
    hostmem.keep_freed_memory()  # before JAX starts its threads (mmjax/hostmem.py says why)

  distributed.initialize_from_env()  # multi-host: before anything touches the devices
  from mmjax.train.loop import check_counts, train

  check_counts(config)  # before anything is written to the workdir
  os.makedirs(args.workdir, exist_ok=True)
  if distributed.is_main_process():
    with open(os.path.join(args.workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  summary = train(config, args.workdir)
  skipped = summary.get("skipped_samples")
  print(f"done: step {summary['final_step']}"
        + "".join(f", {k} {summary[k]:.4f}" for k in ("eval_accuracy",
                                                         "eval_retrieval/image_to_text")
                  if k in summary)
        + ("" if skipped is None else "; skipped samples: " + (", ".join(
            f"{reason} {n}" for reason, n in skipped.items()) or "none"))
        + f"; metrics in {os.path.join(args.workdir, 'metrics.jsonl')}")
  return int(summary["exit_code"])


def add_subcommand(sub) -> None:
  p = sub.add_parser(
      "train", help="train or fine-tune from a config (default: the embedded shapes run)",
      description="Train (or resume: re-run the same command) from an ml_collections config "
      "file. With no --config, trains the embedded default: a tiny LLaVA-style model on the "
      "procedural shapes set, to >= 90% held-out answer accuracy in minutes on a CPU. "
      "Override any key with --config.section.key=value (e.g. --config.train.steps=500). "
      "Writes DIR/metrics.jsonl, DIR/tensorboard/, DIR/checkpoints/ (Orbax; kept on SIGTERM).",
      epilog="example: mmjax train --config configs/tiny/shapes.py --workdir /tmp/run "
      "--config.optim.lr=1e-3")
  p.add_argument("--config", default=None, metavar="FILE[:ARG]",
                 help="config file with get_config(ARG) (default: the embedded shapes run)")
  p.add_argument("--workdir", required=True, metavar="DIR", help="checkpoints, metrics, logs")
  p.set_defaults(func=_run, accepts_overrides=True)
