"""Parquet and WebDataset tar shards: the columns / members datasets ship, brace patterns, bad
rows counted, host sharding by block, exact resumption, `mmjax data check`."""

import concurrent.futures
import dataclasses
import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmjax import cli
from mmjax.data.blocks import block_dataset
from mmjax.data.pipeline import DataConfig, DataIterator, SourceConfig, build_dataset
from mmjax.data.preprocess import preset
from mmjax.data.shards import expand_braces
from mmjax.data.sources import open_source
from mmjax.data.sources_parquet import ParquetSource
from mmjax.data.sources_tar import WebDatasetSource


def _png(seed, size=(20, 28), fmt="PNG"):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, fmt)
  return buf.getvalue()


def _conversation(i):
  return [{"from": "human", "value": "<image>\nWhat is this?"},
          {"from": "gpt", "value": f"answer number {i}"}]


@pytest.fixture
def parquet_shards(tmp_path):
  """3 files x 6 rows in row groups of 2, each file with other column kinds; 3 bad rows:
  row 3 (corrupt image bytes), row 8 (messages that are not JSON), row 17 (no text)."""
  root = tmp_path / "images"
  root.mkdir()
  shards = tmp_path / "shards"
  shards.mkdir()
  # 0: image {bytes, path} struct + conversations as a list of structs
  rows = [{"id": f"a{i}", "image": {"bytes": b"garbage" if i == 3 else _png(i), "path": None},
           "conversations": _conversation(i)} for i in range(6)]
  pq.write_table(pa.Table.from_pylist(rows), shards / "part-00000.parquet", row_group_size=2)
  # 1: image as raw bytes + OpenAI messages stored as JSON text
  rows = []
  for i in range(6, 12):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": f"answer number {i}"}]
    rows.append({"image": _png(i), "messages": "[{broken" if i == 8 else json.dumps(messages)})
  pq.write_table(pa.Table.from_pylist(rows), shards / "part-00001.parquet", row_group_size=2)
  # 2: image struct pointing at a file (bytes null) + caption
  rows = []
  for i in range(12, 18):
    (root / f"{i}.png").write_bytes(_png(i))
    rows.append({"image": {"bytes": None, "path": f"{i}.png"},
                 "caption": None if i == 17 else f"answer number {i}"})
  pq.write_table(pa.Table.from_pylist(rows), shards / "part-00002.parquet", row_group_size=2)
  return str(shards / "part-*.parquet"), str(root)


def _tar(path, members):
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def tar_shards(tmp_path):
  """3 WebDataset shards of 4 samples (12); 2 bad: 000005 (no image), 000010 (broken JSON)."""
  for s in range(3):
    members = []
    for i in range(4 * s, 4 * s + 4):
      key = f"{i:06d}"
      if i % 3 == 0:  # img2dataset: jpg + txt caption + json metadata
        members += [(f"{key}.jpg", _png(i, fmt="JPEG")), (f"{key}.txt", f"answer number {i}".encode()),
                    (f"{key}.json", json.dumps({"url": "http://x", "key": key}).encode())]
      elif i % 3 == 1:  # LLaVA-style: png + json conversations
        data = b"{broken" if i == 10 else json.dumps({"conversations": _conversation(i)}).encode()
        members += [(f"{key}.png", _png(i)), (f"{key}.json", data)]
      else:  # caption inside the json only
        if i != 5:
          members.append((f"{key}.jpg", _png(i, fmt="JPEG")))
        members.append((f"{key}.json", json.dumps({"caption": f"answer number {i}"}).encode()))
    _tar(tmp_path / f"shard-{s:04d}.tar", members)
  return str(tmp_path / "shard-{0000..0002}.tar")


def test_expand_braces():
  assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
  assert expand_braces("{a,b}-{8..10}") == ["a-8", "a-9", "a-10", "b-8", "b-9", "b-10"]
  assert expand_braces("x{}.tar") == ["x{}.tar"]
  assert expand_braces("plain.tar") == ["plain.tar"]


def test_parquet_columns_become_samples(parquet_shards):
  pattern, root = parquet_shards
  source = open_source(pattern, root)
  assert isinstance(source, ParquetSource) and len(source) == 18
  assert source.blocks == [(2 * k, 2) for k in range(9)]  # 3 files x 3 row groups
  first = source[0]
  assert first["id"] == "a0" and first["images"] == [_png(0)]
  assert first["messages"] == [{"role": "user", "content": "<image>\nWhat is this?"},
                               {"role": "assistant", "content": "answer number 0"}]
  assert source[7]["messages"][0]["content"] == "<image>Hi" and source[7]["images"] == [_png(7)]
  assert source[12]["images"] == [os.path.join(root, "12.png")]
  assert source[12]["messages"][1] == {"role": "assistant", "content": "answer number 12"}
  assert source[8]["error"][0] == "bad_record" and "not valid JSON" in source[8]["error"][1]
  assert source[17]["error"][0] == "bad_record" and "part-00002.parquet row 5" in source[17]["id"]


def test_rows_read_from_many_threads_at_once_are_the_rows(tmp_path):
  # pyarrow's ParquetFile is not safe to read from two threads: the pipeline's read-ahead threads
  # once turned good row groups into "bad_record" skips (or crashed), so resumption drifted.
  rows = [{"image": _png(i % 5, size=(4, 4)), "caption": f"caption {i}"} for i in range(240)]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "one.parquet", row_group_size=2)
  for trial in range(4):
    source = ParquetSource(str(tmp_path / "one.parquet"), cached_row_groups=4)
    order = np.random.default_rng(trial).permutation(len(rows))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
      samples = list(pool.map(lambda i: source[int(i)], order))
    assert [s.get("error") for s in samples] == [None] * len(rows)
    assert [s["messages"][-1]["content"] for s in samples] == [f"caption {i}" for i in order]


def test_data_check_reports_bad_rows(parquet_shards, tar_shards, tmp_path, capsys):
  for spec, root, expected in ((parquet_shards[0], parquet_shards[1],
                                {"total": 18, "usable": 15,
                                 "skipped": {"bad_record": 2, "corrupt_image": 1}}),
                               (tar_shards, None,
                                {"total": 12, "usable": 10, "skipped": {"bad_record": 2}})):
    report = tmp_path / "report.json"
    argv = ["data", "check", spec, "--report", str(report)] + (["--image-root", root] if root else [])
    assert cli.main(argv) == 0
    assert json.loads(report.read_text()) == expected
    assert f"{expected['usable']} of {expected['total']} samples usable" in capsys.readouterr().out


def _cfg(spec, root, **kw):
  base = dict(image=preset("llava15", shortest_edge=28, crop_size=28), max_length=128,
              batch_size=2, max_tiles=3, max_images=3, sources=(SourceConfig(spec, root),),
              seed=3, read_threads=2, read_buffer=4, packing=False)
  return DataConfig(**{**base, **kw})


def _answers(tokenizer, batches):
  return [tokenizer.decode(b["labels"][r][b["loss_mask"][r] > 0]).strip()
          for b in batches for r in range(len(b["labels"])) if b["loss_mask"][r].any()]


@pytest.mark.parametrize("which", ["parquet", "tar"])
def test_hosts_split_by_block_and_every_good_sample_is_seen_once(which, parquet_shards,
                                                                 tar_shards, tokenizer):
  spec, root = parquet_shards if which == "parquet" else (tar_shards, None)
  good = ({i for i in range(18)} - {3, 8, 17} if which == "parquet"
          else {i for i in range(12)} - {5, 10})
  cfg = _cfg(spec, root, num_epochs=1, drop_remainder=False)
  seen, skipped = [], 0
  for index in range(2):
    it = DataIterator(build_dataset(cfg, tokenizer, process_index=index, process_count=2))
    batches = list(it)
    seen.append(_answers(tokenizer, batches))
    skipped += sum(it.stats()["skipped"].values())
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == sorted(f"answer number {i}</s>" for i in good)
  assert skipped == (3 if which == "parquet" else 2)


def test_block_shuffle_mixes_within_windows_and_reshuffles_each_epoch(parquet_shards):
  source = ParquetSource(parquet_shards[0], parquet_shards[1])
  ds = block_dataset(source, process_index=0, process_count=1, seed=0, shuffle=True, window=3)
  rows = [ds._row(i) for i in range(36)]  # two epochs
  assert sorted(rows[:18]) == sorted(rows[18:]) == list(range(18)) and rows[:18] != rows[18:]
  for w in range(3):  # each window of 6 rows holds exactly 3 whole row groups
    assert len({r // 2 for r in rows[6 * w:6 * w + 6]}) == 3


def test_state_resumes_at_the_exact_sample(parquet_shards, tokenizer):
  cfg = _cfg(*parquet_shards, packing=True)
  take = lambda it, n: [next(it) for _ in range(n)]
  reference = take(DataIterator(build_dataset(cfg, tokenizer, process_index=0,
                                              process_count=1)), 12)  # > one epoch
  it = DataIterator(build_dataset(cfg, tokenizer, process_index=0, process_count=1))
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  resumed = DataIterator(build_dataset(cfg, tokenizer, process_index=0, process_count=1))
  resumed.set_state(state)
  for expected in reference[5:]:
    got = next(resumed)
    for k in expected:
      np.testing.assert_array_equal(got[k], expected[k])


def test_webdataset_members_and_a_truncated_shard(tar_shards, tmp_path, caplog):
  source = WebDatasetSource(tar_shards)
  assert len(source) == 12 and source.blocks == [(0, 4), (4, 4), (8, 4)]
  assert source[0]["messages"][1]["content"] == "answer number 0"  # txt caption
  assert source[1]["messages"][1]["content"] == "answer number 1"  # json conversations
  assert source[2]["messages"][1]["content"] == "answer number 2"  # json caption
  assert source[5]["error"][0] == "bad_record" and "0 images" in source[5]["error"][1]
  assert source[10]["error"][0] == "bad_record"
  # A shard cut in the middle of its last sample's image: earlier samples stay readable.
  last = tar_shards.replace("{0000..0002}", "0002")
  data = open(last, "rb").read()
  members = WebDatasetSource(last)._members
  cut = members[3]["jpg"][0] + 100  # 100 bytes into sample 000011's jpg
  with open(tmp_path / "cut.tar", "wb") as f:
    f.write(data[:cut])
  cut_source = WebDatasetSource(str(tmp_path / "cut.tar"))
  assert len(cut_source) == 4
  assert cut_source[0]["messages"][1]["content"] == "answer number 8"
  assert cut_source[3]["error"][0] == "bad_record" and "cut off" in cut_source[3]["error"][1]
  with pytest.raises(FileNotFoundError, match="missing, e.g."):
    WebDatasetSource(str(tmp_path / "shard-{0000..0009}.tar"))


def test_worker_processes_give_the_same_batches(tar_shards, tokenizer):
  cfg = _cfg(tar_shards, None)
  in_process = DataIterator(build_dataset(cfg, tokenizer, process_index=0, process_count=1))
  reference = [next(in_process) for _ in range(3)]
  it = DataIterator(build_dataset(dataclasses.replace(cfg, num_workers=1), tokenizer,
                                  process_index=0, process_count=1))
  try:
    for expected in reference:
      got = next(it)
      for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
  finally:
    it.close()
