"""`mmjax plot`: loss (and eval metrics) against steps from runs' `metrics.jsonl`, as one PNG.

Each run directory's `metrics.jsonl` (one JSON object per logged step, see
`mmjax.train.metrics`) becomes one line per panel; several runs are overlaid in the same colour
order on every panel. Panels: the training loss (log scale when it spans more than a factor of
ten), and one per eval metric (`eval_*` keys; a run that evaluated once shows a marker).
matplotlib runs on its Agg backend: no display needed.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "plot.png"


def read_metrics(run_dir: str) -> list[dict]:
  """The records of `run_dir/metrics.jsonl`, in file order (a run resumed twice logs its resumed
  steps again: the last record of a step wins). A torn last line (a run killed while writing) is
  ignored."""
  path = run_dir if run_dir.endswith(".jsonl") else os.path.join(run_dir, METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file (is {run_dir} an `mmjax train --workdir`?)")
  records = []
  with open(path) as f:
    lines = f.read().splitlines()
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines):
        continue
      raise ValueError(f"{path}:{number}: not a JSON object: {e}") from e
    if isinstance(record, dict) and "step" in record:
      records.append(record)
  return records


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of one scalar key, sorted by step, the last record of a step kept."""
  by_step = {}
  for r in records:
    value = r.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      by_step[int(r["step"])] = float(value)
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def eval_groups(runs: Sequence[list[dict]]) -> dict[str, list[str]]:
  """`eval_*` scalar keys any run logged, grouped by the part before a `/`:
  {'eval_accuracy': ['eval_accuracy', 'eval_accuracy/color', ...]} (overall key first)."""
  keys = {k for records in runs for r in records for k, v in r.items()
          if k.startswith("eval_") and isinstance(v, (int, float)) and not isinstance(v, bool)}
  groups: dict[str, list[str]] = {}
  for key in sorted(keys, key=lambda k: ("/" in k, k)):
    groups.setdefault(key.split("/")[0], []).append(key)
  return groups


def _labels(run_dirs: Sequence[str]) -> list[str]:
  """Short distinct names: the directories' basenames, or their whole paths when two collide."""
  names = [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(d) for d in run_dirs]


def _loss_panel(ax, runs, labels, colours) -> None:
  low, high = math.inf, -math.inf
  for i, (records, label) in enumerate(zip(runs, labels)):
    steps, values = series(records, "loss")
    if steps:
      ax.plot(steps, values, linewidth=1.2, color=colours[i % len(colours)], label=label)
      low, high = min(low, min(values)), max(high, max(values))
  if low > 0 and high / low > 10:
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, 2, 4 rather than 5 x 10^-1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
  ax.set_title("loss")
  ax.set_xlabel("step")
  ax.set_xlim(left=0)


def _eval_panel(ax, group: str, keys: list[str], runs, labels, colours) -> None:
  """Evaluated at several steps: the overall metric against the step, one line per run.
  Evaluated once (the default run's final eval): bars per metric (overall and per kind), one
  colour per run, each labelled with its value."""
  evaluated = [series(records, group) for records in runs]
  if all(len(steps) <= 1 for steps, _ in evaluated):
    names = ["all" if k == group else k.split("/", 1)[1] for k in keys]
    width = 0.8 / len(runs)
    for i, (records, label) in enumerate(zip(runs, labels)):
      values = [(series(records, k)[1] or [math.nan])[-1] for k in keys]
      steps = series(records, group)[0]
      xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(keys))]
      bars = ax.bar(xs, values, width, color=colours[i % len(colours)],
                    label=f"{label} (step {steps[-1]})" if steps else label)
      ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
    ax.set_xticks(range(len(keys)), names, rotation=30 if len(keys) > 4 else 0)
    ax.set_title(f"{group} (final)")
  else:
    for i, ((steps, values), label) in enumerate(zip(evaluated, labels)):
      if steps:
        ax.plot(steps, values, "o-", markersize=4, color=colours[i % len(colours)], label=label)
    ax.set_title(group)
    ax.set_xlabel("step")
    ax.set_xlim(left=0)
  ax.margins(y=0.12)


def plot_runs(run_dirs: Sequence[str], out: str) -> str:
  """Writes the PNG to `out`; returns its path."""
  import matplotlib

  matplotlib.use("Agg")  # files only; never a GUI backend
  import matplotlib.pyplot as plt

  runs = [read_metrics(d) for d in run_dirs]
  if not any(series(records, "loss")[0] for records in runs):
    raise ValueError(f"no loss values in {', '.join(run_dirs)}: nothing to plot")
  labels = _labels(run_dirs)
  groups = eval_groups(runs)
  panels = 1 + len(groups)
  cols = min(panels, 3)
  rows = -(-panels // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.0 * rows), squeeze=False)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  _loss_panel(axes.flat[0], runs, labels, colours)
  for ax, (group, keys) in zip(list(axes.flat)[1:], groups.items()):
    _eval_panel(ax, group, keys, runs, labels, colours)
  for ax in list(axes.flat)[:panels]:
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  for ax in list(axes.flat)[panels:]:
    ax.axis("off")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + ".tmp.png"  # written whole, then renamed: a reader never sees half a PNG
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, out)
  return out


def _run(args) -> int:
  out = args.out or (os.path.join(args.dirs[0], PLOT_FILE) if len(args.dirs) == 1 else PLOT_FILE)
  path = plot_runs(args.dirs, out)
  print(f"wrote {path} ({len(args.dirs)} run{'s' if len(args.dirs) > 1 else ''})")
  return 0


def add_subcommand(subparsers) -> None:
  p = subparsers.add_parser(
      "plot", help="PNG of loss and eval metrics against steps, several runs overlaid",
      description="Reads DIR/metrics.jsonl of each run (what `mmjax train --workdir DIR` writes) "
      "and draws the training loss and every eval_* metric against the step, one line per run. "
      "`mmjax train` writes DIR/plot.png itself at the end of a run.",
      epilog="example: mmjax plot /tmp/run1 /tmp/run2 --out compare.png")
  p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (or metrics.jsonl files)")
  p.add_argument("--out", default=None, metavar="FILE.png",
                 help=f"where to write the PNG (default: DIR/{PLOT_FILE} for one run, "
                 f"./{PLOT_FILE} for several)")
  p.set_defaults(func=_run)

