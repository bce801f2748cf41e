"""Writes the word-level tokenizer that ships with mmjax for the synthetic shapes set.

  PYTHONPATH=. python tools/make_shapes_tokenizer.py [--out DIR]   # from the repo root

The vocabulary is `mmjax.data.synthetic.vocabulary()`: the special tokens <pad>=0, <s>=1, </s>=2,
<image>=3, <unk>=4, then every word the shapes set can produce, sorted. Re-run this after changing
that vocabulary; tests/data/test_synthetic.py checks the shipped file still matches.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from mmjax.data import synthetic

_DEFAULT_OUT = pathlib.Path(__file__).resolve().parents[1] / "mmjax" / "assets" / "shapes_tokenizer"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, default=_DEFAULT_OUT)
  args = parser.parse_args(argv)

  args.out.mkdir(parents=True, exist_ok=True)
  tokenizer = synthetic.build_tokenizer()
  tokenizer.save(str(args.out / "tokenizer.json"), pretty=True)
  # Lets transformers' AutoTokenizer / PreTrainedTokenizerFast load the same directory.
  config = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "pad_token": synthetic.PAD,
    "bos_token": synthetic.BOS,
    "eos_token": synthetic.EOS,
    "unk_token": synthetic.UNK,
    "additional_special_tokens": [synthetic.IMAGE],
    "model_max_length": 64,
  }
  (args.out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
  print(f"wrote {tokenizer.get_vocab_size()} tokens to {args.out}")


if __name__ == "__main__":
  main()
