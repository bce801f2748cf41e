"""MiniGPT-4's released projection (`llama_proj`, a torch `.pth`) into mmjax parameters.

MiniGPT-4 puts BLIP-2's EVA tower and Q-Former before Vicuna through one Linear, `llama_proj`
(Q-Former width -> Vicuna width); its release ships only that layer's weights (`llama_proj.weight
[out, in]`, `llama_proj.bias [out]`, usually under a `model` key, beside nothing else or beside
other training state). In mmjax the composition is a `blip-2` model with a Llama decoder
(`configs/minigpt4/`), whose `connector/projection` kernel is `[out, in]` like torch's Linear:
the weights go in as they are.

    mmjax minigpt4-projection --pth pretrained_minigpt4_7b.pth --out $PROJ
        a parameters-only source for `train.init_from` ("...;$PROJ:connector/projection")
    mmjax minigpt4-projection --pth FILE --checkpoint $CKPT --out $OUT
        a copy of the converted MiniGPT-4 checkpoint $CKPT with that projection

The file is read with `torch.load(weights_only=True)` (no pickled code runs).
"""

import json
import os
from typing import Any, Mapping

import numpy as np

from mmjax.errors import UserError

KEYS = ("llama_proj.weight", "llama_proj.bias")
PART = ("connector", "projection")
PART_FILE = "part.json"  # marks a parameters-only directory (no mmjax.json: no model of its own)


def _state_dict(obj: Any, path: str) -> Mapping[str, Any]:
  """The mapping holding the keys: the file's top level or its `model` / `state_dict` entry."""
  if not isinstance(obj, Mapping):
    raise UserError(f"{path}: not a state dict (a {type(obj).__name__}); MiniGPT-4's release is "
                    f"a dict holding {list(KEYS)}, often under 'model'")
  for key in ("model", "state_dict"):
    if key in obj and isinstance(obj[key], Mapping) and not any(k in obj for k in KEYS):
      return obj[key]
  return obj


def read_projection(path: str) -> tuple[np.ndarray, np.ndarray]:
  """`(weight [out, in], bias [out])` float32 from a MiniGPT-4 `.pth` (strict)."""
  try:
    import torch  # only this importer reads torch files: not a dependency of mmjax
  except ModuleNotFoundError:
    raise UserError("reading a .pth needs torch: pip install torch (the CPU build does)") from None

  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  # not a torch file, or pickled code
    raise UserError(f"{path}: not a torch checkpoint that loads with weights_only=True "
                    f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
  state = _state_dict(obj, path)
  missing = [k for k in KEYS if k not in state]
  if missing:
    near = sorted(k for k in state if isinstance(k, str) and "proj" in k)[:10]
    raise UserError(f"{path}: {missing} missing; keys with 'proj': {near or 'none'} "
                    f"({len(state)} keys in all)")
  weight, bias = (state[k] for k in KEYS)
  if not all(isinstance(t, torch.Tensor) for t in (weight, bias)):
    raise UserError(f"{path}: {list(KEYS)} must be tensors")
  weight, bias = (t.detach().to(torch.float32).numpy() for t in (weight, bias))
  if weight.ndim != 2 or bias.shape != (weight.shape[0],):
    raise UserError(f"{path}: llama_proj.weight must be [out, in] and llama_proj.bias [out]; got "
                    f"{list(weight.shape)} and {list(bias.shape)}")
  return weight, bias


def write_part(weight: np.ndarray, bias: np.ndarray, out: str, source: str) -> str:
  """A parameters-only directory (`params/` holding `connector/projection`), which
  `train.init_from` takes as `OUT:connector/projection`."""
  import orbax.checkpoint.experimental.v1 as ocp

  from mmjax import checkpoint as converted, paths, staging

  out = paths.absolute(out)
  if os.path.exists(out):
    raise FileExistsError(f"{out} exists; choose a new directory")
  tmp = staging.create(out, "minigpt4")
  try:
    ocp.save(os.path.join(tmp, converted.PARAMS_DIR),
             {PART[0]: {PART[1]: {"kernel": weight, "bias": bias}}})
    with open(os.path.join(tmp, PART_FILE), "w") as f:
      json.dump({"parameters": "/".join(PART), "from": os.path.abspath(source),
                 "use": f"train.init_from='{out}:{'/'.join(PART)}'"}, f, indent=1)
    staging.publish(tmp, out)
  except BaseException:
    staging.remove(tmp)
    raise
  return out


def write_into(weight: np.ndarray, bias: np.ndarray, checkpoint: str, out: str) -> str:
  """A copy of the converted `checkpoint` with `connector/projection` replaced (same shapes and
  dtype as it had, else an error naming them)."""
  from mmjax import checkpoint as converted

  family, config, params = converted.load_checkpoint(checkpoint)
  old = params.get(PART[0], {}).get(PART[1]) if isinstance(params.get(PART[0]), dict) else None
  if old is None or set(old) != {"kernel", "bias"}:
    raise UserError(f"{checkpoint}: a {family.name!r} model without a Linear "
                    f"{'/'.join(PART)} (kernel, bias) to hold llama_proj")
  for name, new in (("kernel", weight), ("bias", bias)):
    if tuple(old[name].shape) != new.shape:
      raise UserError(f"{checkpoint}: {'/'.join(PART)}/{name} is {list(old[name].shape)}, the "
                      f"release's llama_proj.{'weight' if name == 'kernel' else 'bias'} "
                      f"{list(new.shape)}")
    old[name] = new.astype(old[name].dtype)
  hf_from = checkpoint if os.path.exists(os.path.join(checkpoint, converted.HF_CONFIG_FILE)) \
      else None
  extras = None
  if hf_from is None:  # a checkpoint without HF details keeps its (tokenizer) files all the same
    extras_dir = os.path.join(checkpoint, converted.HF_EXTRAS_DIR)
    extras = {n: open(os.path.join(extras_dir, n), encoding="utf-8").read()
              for n in sorted(os.listdir(extras_dir))} if os.path.isdir(extras_dir) else None
  converted.save_checkpoint(out, family, config, params, hf_from=hf_from, hf_extras=extras)
  return out


def _command(args) -> int:
  weight, bias = read_projection(args.pth)
  if args.checkpoint:
    out = write_into(weight, bias, args.checkpoint, args.out)
    print(f"{args.pth} llama_proj {list(weight.shape)} -> {out} (a copy of {args.checkpoint})")
  else:
    out = write_part(weight, bias, args.out, args.pth)
    print(f"{args.pth} llama_proj {list(weight.shape)} -> {out}; train with "
          f"train.init_from='...;{out}:{'/'.join(PART)}'")
  return 0


def add_subcommand(sub) -> None:
  p = sub.add_parser("minigpt4-projection", help="import MiniGPT-4's released llama_proj (.pth)",
                     description=__doc__.split("\n\n")[0])
  p.add_argument("--pth", required=True, help="MiniGPT-4's checkpoint (llama_proj.weight/bias)")
  p.add_argument("--out", required=True, help="the new directory")
  p.add_argument("--checkpoint", default="",
                 help="a converted MiniGPT-4 (blip-2 family) checkpoint to copy with the "
                 "projection replaced; without it, a parameters-only train.init_from source")
  p.set_defaults(func=_command)
