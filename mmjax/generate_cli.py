"""`mmjax generate`: answer a prompt about images, or generate from processor arrays."""

import os
import sys

_DESCRIPTION = """\
Generate with a KV cache and a compiled decode loop.

Chat mode (--prompt, optional --image, repeatable: a path or an http(s) URL): applies the
checkpoint's chat template and tokenizer (kept at conversion under DIR/hf_extras/) and image
preprocessing (preprocessor_config.json or processor_config.json), then streams the answer to
stdout. It stops at the checkpoint's end tokens (generation_config.json / tokenizer eos) or after
--max-new-tokens. LLaVA-NeXT cuts each image into AnyRes tiles (base view + grid) as
LlavaNextImageProcessor does; Pixtral / Mistral3 see each image at its own size within the
longest edge. Qwen2-VL / Qwen2.5-VL / Qwen3-VL see each image at its own resolution within a
pixel budget: --min-pixels / --max-pixels override the checkpoint's. Fuyu, IDEFICS, BLIP-2 and
InstructBLIP (with Flan-T5 too) have no chat template: the prompt is used as their processors
take it.

Array mode (--inputs FILE.npz --out FILE.npy): takes the arrays a transformers processor makes,
saved with numpy.savez (input_ids [B, T], attention_mask [B, T] with rows padded on the left,
optional position_ids, pixel_values [I, C, H, W] NCHW; for LLaVA-NeXT LlavaNextProcessor's
pixel_values [I, tiles, C, H, W] and image_sizes [I, 2]; for Pixtral / Mistral3
PixtralProcessor's pixel_values [I, C, H, W] padded to the largest image and image_sizes [I, 2];
for Fuyu FuyuProcessor's image_patches [P, patch_size^2 * channels] (or pixel_values);
for Qwen2-VL / Qwen2.5-VL / Qwen3-VL the Qwen processor's pixel_values [N, C*T*P*P],
image_grid_thw, pixel_values_videos, video_grid_thw, mm_token_type_ids, second_per_grid_ts; for
T5 and BLIP-2 / InstructBLIP with Flan-T5 the prompt is the encoder's input, padded on either
side, and the ids are the decoder's after its start token), and writes the generated ids [B, N] int32: exactly N
tokens per row unless --stop ids are given, after which a row is padded with the pad id.

Greedy at --temperature 0 (the default), else sampled after temperature, --top-k and --top-p
(seeded by --seed)."""


def add_subcommand(subparsers) -> None:
  import argparse

  p = subparsers.add_parser(
      "generate", help="generate an answer (chat) or ids (processor arrays) with a KV cache",
      description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, metavar="DIR", help="mmjax checkpoint directory")
  chat = p.add_argument_group("chat mode")
  chat.add_argument("--prompt", metavar="TEXT", help="the user's message")
  chat.add_argument("--image", action="append", default=[], metavar="PATH|URL",
                    help="an image for the prompt (a file or an http(s) URL); repeat for "
                         "several, in order")
  chat.add_argument("--min-pixels", type=int, default=None, metavar="N",
                    help="native-resolution families (Qwen-VL): resize each image to at least N "
                         "pixels (default: the checkpoint's processor settings)")
  chat.add_argument("--max-pixels", type=int, default=None, metavar="N",
                    help="native-resolution families (Qwen-VL): at most N pixels per image")
  chat.add_argument("--no-chat-template", action="store_true",
                    help="use the prompt text as is (one image marker per image in front)")
  arrays = p.add_argument_group("array mode")
  arrays.add_argument("--inputs", metavar="FILE.npz", help="transformers-processor arrays")
  arrays.add_argument("--out", metavar="FILE.npy", help="where to write the generated ids [B, N]")
  p.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                 help="tokens to generate per row (default: %(default)s)")
  p.add_argument("--temperature", type=float, default=0.0, metavar="T",
                 help="0 = greedy (default: %(default)s)")
  p.add_argument("--top-k", type=int, default=0, metavar="K", help="0 = off (default)")
  p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="1 = off (default)")
  p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
  p.add_argument("--stop", type=int, nargs="+", default=None, metavar="ID",
                 help="stop token ids (chat mode default: the checkpoint's eos; array mode: none)")
  p.add_argument("--pad-id", type=int, default=None, metavar="ID",
                 help="id after a row stopped (default: the checkpoint's pad token, else 0)")
  p.set_defaults(func=run)


def _load_npz(path: str) -> dict:
  import numpy as np

  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file")
  with np.load(path) as data:
    inputs = {k: data[k] for k in data.files}
  if "input_ids" not in inputs:
    raise KeyError(f"{path} lacks 'input_ids' (has: {sorted(inputs)})")
  return inputs


def _checkpoint_pad_id(ckpt_dir: str) -> int:
  import json

  from mmjax.checkpoint import HF_CONFIG_FILE, HF_EXTRAS_DIR

  for path, keys in ((os.path.join(ckpt_dir, HF_EXTRAS_DIR, "generation_config.json"), ()),
                     (os.path.join(ckpt_dir, HF_CONFIG_FILE), ("text_config",))):
    if os.path.exists(path):
      with open(path) as f:
        cfg = json.load(f)
      for sub in (cfg, *(cfg.get(k) or {} for k in keys)):
        if sub.get("pad_token_id") is not None:
          return int(sub["pad_token_id"])
  return 0


def run(args) -> int:
  import jax
  import numpy as np

  from mmjax.checkpoint import load_checkpoint
  from mmjax.generation import GenerateConfig, Generator, Sampling, prompt_images

  if (args.inputs is None) == (args.prompt is None):
    raise ValueError("give either --prompt (chat mode) or --inputs (array mode)")
  if args.inputs is not None and (args.out is None or args.image):
    raise ValueError("array mode takes --inputs with --out and no --image")
  if args.inputs is not None and (args.min_pixels or args.max_pixels):
    raise ValueError("--min-pixels / --max-pixels are chat-mode options; array mode takes the "
                     "processor's arrays as they are")
  prompt_images.check(args.image)
  sampling = Sampling(args.temperature, args.top_k, args.top_p)
  rng = jax.random.PRNGKey(args.seed)
  if args.inputs is not None:
    inputs = _load_npz(args.inputs)
    family, config, params = load_checkpoint(args.checkpoint)
    pad = _checkpoint_pad_id(args.checkpoint) if args.pad_id is None else args.pad_id
    gen = GenerateConfig(args.max_new_tokens, sampling, tuple(args.stop or ()), pad)
    pixels = family.generation_pixels(config, inputs)
    ids = Generator(family, config, params)(
        inputs["input_ids"], inputs.get("attention_mask"), pixels, gen=gen,
        positions=inputs.get("position_ids"), rng=rng)
    np.save(args.out, ids.astype(np.int32))
    print(f"wrote generated ids {tuple(ids.shape)} int32 to {args.out}")
    return 0
  return _chat(args, sampling, rng)


def _chat(args, sampling, rng) -> int:
  from mmjax.checkpoint import load_checkpoint, read_metadata
  from mmjax.generation import GenerateConfig, Generator

  family, config, _ = read_metadata(args.checkpoint)
  options = {name: getattr(args, name) for name in ("min_pixels", "max_pixels")
             if getattr(args, name) is not None}
  unknown = sorted(set(options) - set(family.chat_image_options))
  if unknown:
    flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
    raise ValueError(f"{flags}: {family.name} checkpoints take no such image option "
                     f"(they take: {', '.join(family.chat_image_options) or 'none'})")
  builder = family.prompt_builder(args.checkpoint, config,
                                  chat_template=not args.no_chat_template, **options)
  input_ids, pixels = builder(args.prompt, args.image)
  family, config, params = load_checkpoint(args.checkpoint)
  stop = tuple(builder.stop_ids if args.stop is None else args.stop)
  gen = GenerateConfig(args.max_new_tokens, sampling, stop,
                       builder.pad_id if args.pad_id is None else args.pad_id)
  answer: list[int] = []
  printed, stopped = [""], [False]

  def stream(step, tokens, done):
    token = int(tokens[0])
    stopped[0] = stopped[0] or token in stop
    if stopped[0]:
      return
    answer.append(token)
    text = builder.tokenizer.decode(answer, skip_special_tokens=True)
    if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
      sys.stdout.write(text[len(printed[0]):])
      sys.stdout.flush()
      printed[0] = text

  Generator(family, config, params)(input_ids, None, pixels, gen=gen, rng=rng, on_token=stream)
  text = builder.tokenizer.decode(answer, skip_special_tokens=True)
  sys.stdout.write(text[len(printed[0]):] + "\n")  # what was held back, if anything
  return 0
