"""`mmjax eval`: score a checkpoint on a VQA-style set."""

import os

_DESCRIPTION = """\
Answer every question of a JSON / JSONL / Parquet set with greedy generation and score it.

Records: {image, question, answers} (answers: a list, e.g. VQAv2's ten, or one 'answer'), or
for multiple choice {image, question, options, answer} (options: a list, a {"A": ..} mapping or
MMBench's A/B/C/D columns; answer: a letter, an index or the option's text). 'image' is a path
(relative to --image-root, default the data file's folder), bytes, or a {bytes, path} struct as
Hugging Face datasets write to Parquet. Prompts go through the checkpoint's chat template and
image preprocessing, as `mmjax generate` builds them; several questions share one generate call
(rows padded on the left).

Metrics:
  vqa     VQAv2 accuracy: official answer normalisation, min(#matches / 3, 1) averaged over the
          ten leave-one-annotator-out subsets
  exact   exact match against any reference (case, spacing, final punctuation ignored)
  anls    DocVQA's average normalised Levenshtein similarity (threshold 0.5)
  choice  multiple-choice accuracy: --choice-mode letter generates an answer to the question
          with lettered options and reads the letter; loglik picks the option whose text is
          likeliest after the question (no generation)

Prints the score with a progress bar and writes one JSON line per question to --out."""


def add_subcommand(subparsers) -> None:
  import argparse

  p = subparsers.add_parser(
      "eval", help="score a checkpoint on VQA-style data (vqa, exact, anls, choice)",
      description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="example: mmjax eval --checkpoint run/model --data vqav2_val.jsonl --metric vqa "
      "--prompt '{question}\\nAnswer the question using a single word or phrase.'")
  p.add_argument("--checkpoint", required=True, metavar="DIR", help="mmjax checkpoint directory")
  p.add_argument("--data", required=True, metavar="FILE", help=".json, .jsonl or .parquet")
  p.add_argument("--metric", required=True, choices=["vqa", "exact", "anls", "choice"])
  p.add_argument("--choice-mode", default="letter", choices=["letter", "loglik"],
                 help="how --metric choice picks an option (default: %(default)s)")
  p.add_argument("--out", default=None, metavar="FILE.jsonl",
                 help="predictions, one JSON line per question (default: "
                 "DATA_STEM.METRIC.predictions.jsonl in the current directory)")
  p.add_argument("--image-root", default=None, metavar="DIR",
                 help="folder that relative image paths are under (default: the data file's)")
  p.add_argument("--prompt", default="{question}", metavar="TEMPLATE",
                 help="user message with {question} in it (default: the question as is)")
  p.add_argument("--batch-size", type=int, default=8, metavar="N",
                 help="questions per generate call (default: %(default)s)")
  p.add_argument("--max-new-tokens", type=int, default=16, metavar="N",
                 help="answer length limit (default: %(default)s)")
  p.add_argument("--limit", type=int, default=None, metavar="N", help="the first N questions only")
  p.set_defaults(func=run)


def run(args) -> int:
  from mmjax.eval.data import EvalSet
  from mmjax.eval.runner import EvalConfig, Evaluator, run_eval

  cfg = EvalConfig(args.metric, args.choice_mode, args.batch_size, args.max_new_tokens,
                   args.prompt)
  data = EvalSet(args.data, args.image_root, args.limit)
  out = args.out or (os.path.splitext(os.path.basename(args.data))[0]
                     + f".{args.metric}.predictions.jsonl")
  evaluator = Evaluator.from_checkpoint(args.checkpoint, cfg)
  result = run_eval(evaluator, data, out)
  mode = f" ({args.choice_mode})" if args.metric == "choice" else ""
  print(f"{args.metric}{mode}: {result['score']:.4f} on {result['count']} questions; "
        f"predictions in {out}")
  return 0
