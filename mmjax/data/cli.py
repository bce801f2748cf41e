"""``mmjax data pack`` and ``mmjax data check``.

Registered by ``mmjax/cli.py``::

  data_parser = sub.add_parser('data')
  add_subcommands(data_parser.add_subparsers(dest='data_command', required=True))
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from mmjax.data import sources as sources_lib
from mmjax.data.validation import SampleError, SkipCounter

log = logging.getLogger('mmjax.data')


def add_subcommands(subparsers) -> None:
  """Adds ``pack`` and ``check`` to an argparse subparsers object; each sets ``func``."""
  pack = subparsers.add_parser(
      'pack', help='turn LLaVA/OpenAI JSON + image files into ArrayRecord shards with embedded images',
      description='Reads a LLaVA-format (conversations/from/value) or OpenAI-style (messages) JSON or '
                  'JSONL file, embeds every referenced image file, and writes ArrayRecord shards that '
                  'ArrayRecordSource (data.sources = [dict(path="DIR")]) reads. Samples whose images '
                  'are missing or undecodable, or whose records are malformed, are skipped and counted.')
  pack.add_argument('file', help='dataset .json or .jsonl')
  pack.add_argument('--image-root', default=None, help='directory that relative image paths are resolved against')
  pack.add_argument('--output', '-o', required=True, help='output directory for the shards (created)')
  pack.add_argument('--num-shards', type=int, default=8, help='number of shards (default 8); samples go round-robin')
  pack.add_argument('--name', default=None, help='shard file prefix (default: the input file name)')
  pack.add_argument('--no-verify', action='store_true', help='embed image bytes without decoding them first')
  pack.set_defaults(func=run_pack)

  check = subparsers.add_parser(
      'check', help='validate a dataset without training: count usable and skipped samples per reason',
      description='Runs every sample through the checks the training pipeline applies and prints a '
                  'summary. Without --tokenizer it checks structure (roles, non-empty answers, '
                  '<image> placeholders vs images) and that every image exists and decodes; with '
                  '--tokenizer it also templates, tokenizes and preprocesses images, so over-length '
                  'samples are found too. Exit code 0 even when samples are skipped (1 if none is usable).')
  check.add_argument('file', help='.json / .jsonl, Parquet / WebDataset tar / ArrayRecord shards (dir, glob '
                     'or {00000..00099} range), or tfds:NAME[:SPLIT]')
  check.add_argument('--image-root', default=None, help='directory that relative image paths are resolved against')
  check.add_argument('--report', default=None, metavar='OUT.json',
                     help='write {"total": N, "usable": M, "skipped": {"<reason>": count}} to this file')
  check.add_argument('--tokenizer', default=None, help='tokenizer.json (or its directory) for the full check')
  check.add_argument('--template', default='vicuna_v1', help='chat template for the full check (default vicuna_v1)')
  check.add_argument('--image-preset', default='llava15', help='image preprocessing preset (default llava15)')
  check.add_argument('--image-token', default='<image>', help='vocabulary token of an image position')
  check.add_argument('--max-length', type=int, default=2048, help='sequence length for the full check')
  check.add_argument('--no-truncate', action='store_true', help='count over-length samples as too_long instead of truncating')
  check.add_argument('--limit', type=int, default=None, help='check only the first N samples')
  check.set_defaults(func=run_check)


# ---- pack -----------------------------------------------------------------------------------------

def _read_image_bytes(ref, sample_id: str, verify: bool) -> bytes:
  from mmjax.data.sample import load_image  # pylint: disable=g-import-not-at-top
  if not isinstance(ref, str):
    raise SampleError('bad_record', sample_id, f'image reference of type {type(ref).__name__}, expected a path')
  if not os.path.isfile(ref):
    raise SampleError('missing_image', sample_id, f'no image file at {ref}')
  try:
    with open(ref, 'rb') as f:
      data = f.read()
  except OSError as e:  # e.g. no permission
    raise SampleError('missing_image', sample_id, f'cannot read {ref}: {e}') from e
  if verify:
    load_image(data, sample_id)
  return data


def pack_dataset(file: str, output: str, image_root: str | None = None, num_shards: int = 8,
                 name: str | None = None, verify: bool = True) -> dict:
  """Writes shards; returns {'total', 'usable', 'skipped', 'shards'}."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  source = sources_lib.JsonSource(file, image_root)
  os.makedirs(output, exist_ok=True)
  name = name or os.path.splitext(os.path.basename(file))[0]
  paths = [os.path.join(output, f'{name}-{i:05d}-of-{num_shards:05d}.array_record') for i in range(num_shards)]
  writers = [ArrayRecordWriter(p, 'group_size:1') for p in paths]
  counter, usable, complete = SkipCounter(), 0, False
  try:
    for index in range(len(source)):
      raw = source[index]
      try:
        if 'error' in raw:
          raise SampleError(raw['error'][0], raw['id'], raw['error'][1])
        images = [_read_image_bytes(ref, raw['id'], verify) for ref in raw['images']]
      except SampleError as e:
        counter.add(e)
        continue
      writers[usable % num_shards].write(sources_lib.encode_record(
          raw['id'], raw.get('messages', []), images, raw.get('text')))
      usable += 1
    complete = True
  finally:
    failed = []
    for w in writers:
      try:
        w.close()  # flushes: may fail on a full disk
      except Exception as e:  # pylint: disable=broad-except
        failed.append(e)
    if failed or not complete:  # interrupted or out of disk: no truncated shards to train on
      for p in paths:
        if os.path.exists(p):
          os.remove(p)
    if failed and complete:
      raise failed[0]
  return {'total': len(source), 'usable': usable, 'skipped': counter.as_dict(), 'shards': paths}


def run_pack(args: argparse.Namespace) -> int:
  start = time.time()
  result = pack_dataset(args.file, args.output, args.image_root, args.num_shards, args.name, not args.no_verify)
  print(f'packed {result["usable"]} of {result["total"]} samples into {len(result["shards"])} shards '
        f'in {args.output} ({time.time() - start:.1f}s)')
  for reason, n in result['skipped'].items():
    print(f'  skipped {n}: {reason}')
  return 0 if result['usable'] else 1


# ---- check ----------------------------------------------------------------------------------------

def check_dataset(source, processor=None, limit: int | None = None) -> tuple[dict, SkipCounter]:
  """Runs every sample through ``processor`` (a SampleProcessor) or the structural + image checks."""
  from mmjax.data.sample import load_image  # pylint: disable=g-import-not-at-top
  from mmjax.data.sample import SampleProcessor  # pylint: disable=g-import-not-at-top
  from mmjax.data.media_sample import check_video  # pylint: disable=g-import-not-at-top
  counter, usable = SkipCounter(), 0
  total = len(source) if limit is None else min(limit, len(source))
  for index in range(total):
    raw = source[index]
    try:
      if processor is not None:
        processor(raw)
      else:
        SampleProcessor.check_structure(raw)
        for ref in raw['images']:
          load_image(ref, raw['id'])
        for ref in raw.get('videos', ()):  # decodes the frames a 2 fps sampling would keep
          check_video(ref, raw['id'])
      usable += 1
    except SampleError as e:
      counter.add(e)
  return {'total': total, 'usable': usable, 'skipped': counter.as_dict()}, counter


def run_check(args: argparse.Namespace) -> int:
  source = sources_lib.open_source(args.file, args.image_root)
  processor = None
  if args.tokenizer:
    from mmjax.data.pipeline import DataConfig  # pylint: disable=g-import-not-at-top
    from mmjax.data.preprocess import preset  # pylint: disable=g-import-not-at-top
    from mmjax.data.sample import SampleProcessor  # pylint: disable=g-import-not-at-top
    from mmjax.data.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
    image = preset(args.image_preset)
    # No budget per row here (rows are not packed); the tiles' is a multiple of the images'
    # for presets whose images own `image.max_tiles` slots each (mllama).
    cfg = DataConfig(image=image, template=args.template, tokenizer=args.tokenizer,
                     image_token=args.image_token, max_length=args.max_length,
                     truncate=not args.no_truncate, max_tiles=(1 << 20) * image.max_tiles,
                     max_images=1 << 20)
    processor = SampleProcessor(cfg, Tokenizer.load(args.tokenizer))
  start = time.time()
  report, counter = check_dataset(source, processor, args.limit)
  print(f'{args.file}: {report["usable"]} of {report["total"]} samples usable '
        f'({"full" if processor else "structure + images"} check, {time.time() - start:.1f}s)')
  for reason, n in report['skipped'].items():
    print(f'  {reason}: {n}  e.g. {", ".join(counter.examples[reason])}')
  if args.report:
    with open(args.report, 'w') as f:
      json.dump(report, f, indent=2)
      f.write('\n')
  return 0 if report['usable'] else 1


def main(argv=None) -> int:
  """Standalone entry point: ``python -m mmjax.data.cli check FILE ...``."""
  parser = argparse.ArgumentParser(prog='mmjax data')
  add_subcommands(parser.add_subparsers(dest='data_command', required=True))
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  return args.func(args)


if __name__ == '__main__':
  sys.exit(main())
