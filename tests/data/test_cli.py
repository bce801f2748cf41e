"""`mmjax data check`: summary and JSON report; `--help` texts."""

import argparse
import json

import pytest

from mmjax.data import cli


def _parser():
  parser = argparse.ArgumentParser(prog='mmjax data')
  cli.add_subcommands(parser.add_subparsers(dest='data_command', required=True))
  return parser


def _broken_dataset(path, root):
  records = json.loads(open(path).read())
  records[0]['image'] = 'missing.png'
  records[1]['conversations'] = []
  records[2]['conversations'][0]['value'] = 'no placeholder here'
  (root / 'corrupt.png').write_bytes(b'not an image')
  records[4]['image'] = 'corrupt.png'
  records.append({'id': 'weird', 'conversations': [{'from': 'martian', 'value': 'hi'}]})
  with open(path, 'w') as f:
    json.dump(records, f)


def test_check_structure_and_images(llava_dataset, tmp_path, capsys):
  path, root = llava_dataset
  _broken_dataset(path, tmp_path / 'images')
  report_path = tmp_path / 'report.json'
  args = _parser().parse_args(['check', path, '--image-root', root, '--report', str(report_path)])
  assert args.func(args) == 0
  report = json.loads(report_path.read_text())
  assert report == {'total': 9, 'usable': 4, 'skipped': {
      'bad_record': 1, 'empty_conversation': 1, 'missing_image': 1, 'corrupt_image': 1, 'image_count_mismatch': 1}}
  out = capsys.readouterr().out
  assert '4 of 9 samples usable' in out and 'missing_image: 1  e.g. s0' in out


def test_full_check_finds_over_length(llava_dataset, tokenizer_dir, tmp_path):
  path, root = llava_dataset
  report_path = tmp_path / 'r.json'
  args = _parser().parse_args(['check', path, '--image-root', root, '--tokenizer', tokenizer_dir,
                               '--max-length', '640', '--no-truncate', '--report', str(report_path)])
  args.func(args)
  report = json.loads(report_path.read_text())
  assert report['total'] == 8 and report['usable'] + report['skipped']['too_long'] == 8
  assert report['usable'] == 2  # the text-only samples; 576 image tokens push the others over


@pytest.mark.parametrize('command', ['pack', 'check'])
def test_help(command, capsys):
  with pytest.raises(SystemExit):
    _parser().parse_args([command, '--help'])
  assert 'usage' in capsys.readouterr().out
