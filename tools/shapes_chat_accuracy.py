"""Exact-match accuracy of a trained shapes model through chat mode, as a user meets it.

  python tools/shapes_chat_accuracy.py --workdir RUN [--out DIR] [--size 200] [--hf]

Writes `--size` held-out shapes images (the run's `data.shapes` settings, eval split) as PNG files
with an `{image, question, answers}` JSONL beside them, then answers every question with
`mmjax generate --checkpoint RUN/model --image X --prompt Q`'s chat mode (the command for the
first, then its steps in this process so that loading and compiling are paid once) and with `mmjax eval --metric exact` (batched); with `--hf`, also with
transformers loading `mmjax export`'s directory (model and processor), greedy, and counts the
answers that agree with chat mode's.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile

from PIL import Image
from tqdm import tqdm

from mmjax.cli import main as mmjax_main
from mmjax.data import synthetic


def write_set(workdir: str, out: str, size: int) -> list[dict]:
  with open(os.path.join(workdir, "config.json")) as f:
    data = json.load(f)["data"]
  dataset = synthetic.ShapesDataset(synthetic.ShapesConfig(**data.get("shapes", {})),
                                    split="eval", size=size)
  items = []
  for i in range(size):
    sample = dataset[i]
    image = os.path.join(out, f"{i:04d}.png")
    Image.fromarray(sample["image"]).save(image)
    items.append({"image": image, "question": sample["question"], "answers": [sample["answer"]]})
  with open(os.path.join(out, "shapes.jsonl"), "w") as f:
    f.writelines(json.dumps(item) + "\n" for item in items)
  return items


def chat_answers(model: str, items: list[dict]) -> list[str]:
  """`mmjax generate`'s chat mode (`generate_cli._chat`), its checkpoint loaded once: the first
  answer through the command itself, then the same steps (prompt builder, Generator, decode)."""
  from mmjax.checkpoint import load_checkpoint, read_metadata
  from mmjax.generation import GenerateConfig, Generator

  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = mmjax_main(["generate", "--checkpoint", model, "--image", items[0]["image"],
                       "--prompt", items[0]["question"], "--max-new-tokens", "4"])
  if code:
    raise SystemExit(f"mmjax generate failed ({code}) on {items[0]['image']}")
  family, config, _ = read_metadata(model)
  builder = family.prompt_builder(model, config)
  family, config, params = load_checkpoint(model)
  generator = Generator(family, config, params)
  gen = GenerateConfig(4, stop_ids=tuple(builder.stop_ids), pad_id=builder.pad_id)
  answers = []
  for item in tqdm(items, desc="chat mode", file=sys.stderr):
    ids, pixels = builder(item["question"], [item["image"]])
    tokens = list(generator(ids, None, pixels, gen=gen)[0])
    stops = [i for i, t in enumerate(tokens) if t in gen.stop_ids]
    tokens = tokens[:stops[0]] if stops else tokens
    answers.append(builder.tokenizer.decode(tokens, skip_special_tokens=True).strip())
  if answers[0] != out.getvalue().strip():
    raise SystemExit(f"mmjax generate said {out.getvalue()!r}, the same steps {answers[0]!r}")
  return answers


def hf_answers(model: str, out: str, items: list[dict]) -> list[str]:
  import torch
  import transformers

  hf_dir = tempfile.mkdtemp(prefix="hf-", dir=out)
  with contextlib.redirect_stdout(sys.stderr):
    mmjax_main(["export", "--checkpoint", model, "--out", hf_dir])
  hf_model = transformers.AutoModelForImageTextToText.from_pretrained(hf_dir).eval()
  processor = transformers.AutoProcessor.from_pretrained(hf_dir)
  answers = []
  for item in tqdm(items, desc="transformers generate", file=sys.stderr):
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": item["question"]}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.open(item["image"]), text=text, return_tensors="pt")
    with torch.no_grad():
      ids = hf_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = ids[0, inputs["input_ids"].shape[1]:]
    answers.append(processor.decode(new, skip_special_tokens=True).strip())
  return answers


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True, help="a finished `mmjax train` run directory")
  p.add_argument("--size", type=int, default=200, help="held-out images (default: 200)")
  p.add_argument("--out", default=None,
                 help="where the images and shapes.jsonl go (default: a temporary folder)")
  p.add_argument("--hf", action="store_true", help="also compare transformers on the export")
  args = p.parse_args()
  model = os.path.join(args.workdir, "model")
  with tempfile.TemporaryDirectory() as tmp:
    out = args.out or tmp
    os.makedirs(out, exist_ok=True)
    items = write_set(args.workdir, out, args.size)
    chat = chat_answers(model, items)
    right = sum(synthetic.exact_match(a, item["answers"][0]) for a, item in zip(chat, items))
    print(f"chat mode: {right}/{len(items)} = {right / len(items):.3f} exact match")
    mmjax_main(["eval", "--checkpoint", model, "--data", os.path.join(out, "shapes.jsonl"),
                "--metric", "exact", "--max-new-tokens", "4", "--batch-size", "50",
                "--out", os.path.join(out, "predictions.jsonl")])
    if args.hf:
      hf = hf_answers(model, out, items)
      same = sum(a == b for a, b in zip(chat, hf))
      print(f"transformers on the export: {same}/{len(items)} answers equal to mmjax generate's")
  return 0


if __name__ == "__main__":
  sys.exit(main())
