"""`mmjax plot`: one PNG of loss and eval metrics for several runs, from their metrics.jsonl."""

import json
import os

import numpy as np
from PIL import Image

from mmjax import cli, plot


def _write_run(path, losses, evals=(), torn=False):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for step, loss in enumerate(losses, 1):
      f.write(json.dumps({"step": step, "loss": loss, "lr": 1e-3}) + "\n")
    for step, values in evals:
      f.write(json.dumps({"step": step, **values}) + "\n")
    if torn:  # a run killed while writing its last line
      f.write('{"step": 99, "lo')


def test_series_keeps_the_last_record_of_a_step_and_skips_a_torn_line(tmp_path):
  _write_run(tmp_path / "a", [3.0, 2.0, 1.0], torn=True)
  records = plot.read_metrics(str(tmp_path / "a"))
  records.append({"step": 2, "loss": 1.5})  # a resumed run logs step 2 again
  assert plot.series(records, "loss") == ([1, 2, 3], [3.0, 1.5, 1.0])
  assert plot.series(records, "eval_accuracy") == ([], [])


def test_eval_groups_put_the_overall_metric_first():
  runs = [[{"step": 5, "eval_accuracy/shape": 0.5, "eval_accuracy": 0.7, "eval_loss": 1.0,
            "loss": 2.0}]]
  assert plot.eval_groups(runs) == {"eval_accuracy": ["eval_accuracy", "eval_accuracy/shape"],
                                    "eval_loss": ["eval_loss"]}


def test_cli_writes_one_png_for_several_runs(tmp_path, capsys):
  rng = np.random.default_rng(0)
  losses = 4 * np.exp(-np.arange(200) / 40) + 0.3 + 0.05 * rng.random(200)
  _write_run(tmp_path / "a", list(losses),
             evals=[(200, {"eval_accuracy": 0.9, "eval_accuracy/color": 0.8})])
  _write_run(tmp_path / "b", list(losses[:150] * 1.1),  # evaluated every 50 steps
             evals=[(s, {"eval_accuracy": s / 200}) for s in (50, 100, 150)])
  out = tmp_path / "cmp.png"
  assert cli.main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
  assert f"wrote {out} (2 runs)" in capsys.readouterr().out
  with Image.open(out) as image:
    assert image.format == "PNG" and image.width > 800 and image.height > 300
    pixels = np.asarray(image.convert("RGB"))
  assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # drawn, not blank
  assert not os.path.exists(str(out) + ".tmp.png")

  assert cli.main(["plot", str(tmp_path / "a")]) == 0  # one run: DIR/plot.png
  assert os.path.exists(tmp_path / "a" / "plot.png")


def test_errors_name_the_run(tmp_path, capsys):
  assert cli.main(["plot", str(tmp_path / "nothing")]) == 1
  assert "nothing/metrics.jsonl: no such file" in capsys.readouterr().err
  _write_run(tmp_path / "empty", [])
  assert cli.main(["plot", str(tmp_path / "empty")]) == 1
  assert "no loss values" in capsys.readouterr().err
  os.makedirs(tmp_path / "bad")
  with open(tmp_path / "bad" / "metrics.jsonl", "w") as f:
    f.write("{oops\n" + json.dumps({"step": 1, "loss": 1.0}) + "\n")
  assert cli.main(["plot", str(tmp_path / "bad")]) == 1
  assert "bad/metrics.jsonl:1: not a JSON object" in capsys.readouterr().err
