"""``ganaug compare RUN_A RUN_B ...``: per-class metric deltas between runs, rarest first.

A run is a file or a folder holding one of:

- ``per_class_metrics.json`` (written by ganaug's evaluators: detection AP, mmseg IoU,
  classification recall), the project-wide shape
  ``{"task", "metric", "per_class", "class_counts"?, "summary", "run"}``;
- detectron2's ``metrics.json`` (one JSON object per line; COCOEvaluator results appear
  as ``"bbox/AP-<class>"`` keys, the last line carrying them is used);
- an mmengine work dir's ``<timestamp>/<timestamp>.log``, whose last per-class
  ``| Class | IoU | Acc |`` table is parsed (``vis_data/scalars.json`` has only mIoU).

A folder that holds none of these directly but several ``per_class_metrics.json`` below
it (the output folder of ``ganaug seg-compare``) expands into one run per file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ganaug.atomic import write_text_atomic

logger = logging.getLogger(__name__)

PER_CLASS_FILE = "per_class_metrics.json"
_D2_KEY = re.compile(r"^(bbox|segm)/AP-(.+)$")
_TABLE_SEP = re.compile(r"^\+[-+]+\+$")


class CompareError(ValueError):
    """An evaluation output could not be read or runs cannot be compared."""


@dataclass
class Run:
    """Per-class results of one run.

    ``per_class`` maps class name to the metric value (``None`` when undefined, e.g. a
    class absent from the evaluation set); ``class_counts`` is the training-set frequency.
    """

    name: str
    task: str | None
    metric: str
    per_class: dict[str, float | None]
    summary: dict[str, float | None] = field(default_factory=dict)
    class_counts: dict[str, int] | None = None
    source: str = ""


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CompareError(
            f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}); "
            f"the file may be truncated"
        ) from err
    except OSError as err:
        raise CompareError(f"{path}: cannot be read: {err}") from err


def read_per_class_metrics(path: str | Path) -> Run:
    """Read a ``per_class_metrics.json`` file."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("per_class"), dict):
        raise CompareError(
            f"{path}: expected an object with a 'per_class' mapping of class name to value "
            f"(got {type(data).__name__} with keys "
            f"{sorted(data)[:8] if isinstance(data, dict) else '-'})"
        )
    counts = data.get("class_counts")
    if counts is not None and not isinstance(counts, dict):
        raise CompareError(f"{path}: 'class_counts' must map class name to a count")
    return Run(
        name=str(data.get("run") or path.parent.name),
        task=data.get("task"),
        metric=str(data.get("metric", "value")),
        per_class={str(k): _number(v) for k, v in data["per_class"].items()},
        summary={str(k): _number(v) for k, v in (data.get("summary") or {}).items()},
        class_counts={str(k): int(v) for k, v in counts.items()} if counts else None,
        source=str(path),
    )


def read_detectron2_metrics(path: str | Path, *, iou_type: str = "bbox") -> Run:
    """Read per-class AP from detectron2's ``metrics.json`` (the last evaluation in it)."""
    path = Path(path)
    last = None
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise CompareError(f"{path}: cannot be read: {err}") from err
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                # A job killed mid-write leaves half a last line; earlier results still count.
                logger.warning("%s: ignoring the truncated last line", path)
                continue
            raise CompareError(f"{path}: line {i + 1} is not valid JSON ({err.msg})") from err
        if isinstance(row, dict) and any(
            (m := _D2_KEY.match(k)) and m.group(1) == iou_type for k in row
        ):
            last = row
    if last is None:
        raise CompareError(
            f"{path}: no '{iou_type}/AP-<class>' keys in any line; run the COCOEvaluator "
            f"(TEST.EVAL_PERIOD > 0 or tools/train_net.py --eval-only) to produce them"
        )
    per_class = {}
    for k, v in last.items():
        m = _D2_KEY.match(k)
        if m and m.group(1) == iou_type:
            per_class[m.group(2)] = _number(v)
    summary = {
        ("mAP" if k == f"{iou_type}/AP" else k.split("/", 1)[1]): _number(v)
        for k, v in last.items()
        if k.startswith(f"{iou_type}/AP") and not _D2_KEY.match(k)
    }
    return Run(
        name=path.parent.name,
        task="detection",
        metric="AP",
        per_class=per_class,
        summary=summary,
        source=str(path),
    )


def read_mmseg_log(path: str | Path) -> Run:
    """Read the last per-class IoU table from an mmengine/mmseg text log."""
    path = Path(path)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise CompareError(f"{path}: cannot be read: {err}") from err
    table, summary = None, {}
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        # mmengine prefixes log lines with a timestamp; the table rows have none.
        if text.startswith("|") and "Class" in text and "IoU" in text:
            header = [c.strip() for c in text.strip("|").split("|")]
            rows = {}
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith(("|", "+")):
                row = lines[j].strip()
                if not _TABLE_SEP.match(row):
                    cells = [c.strip() for c in row.strip("|").split("|")]
                    if len(cells) == len(header):
                        rows[cells[header.index("Class")]] = _number(cells[header.index("IoU")])
                j += 1
            table = rows
            i = j
            continue
        m = re.search(r"mIoU: ([0-9.]+|nan)", text)
        if m:
            summary = {"mIoU": _number(m.group(1))}
            for key in ("aAcc", "mAcc"):
                mk = re.search(rf"{key}: ([0-9.]+|nan)", text)
                if mk:
                    summary[key] = _number(mk.group(1))
        i += 1
    if not table:
        raise CompareError(
            f"{path}: no per-class '| Class | IoU |' table (mmseg IoUMetric prints it at each "
            f"evaluation); scalars.json holds only mIoU, so use the run's {PER_CLASS_FILE}"
        )
    name = path.parent.parent.name if path.parent.name == path.stem else path.parent.name
    return Run(
        name=name,
        task="segmentation",
        metric="IoU",
        per_class=table,
        summary=summary,
        source=str(path),
    )


def load_runs(path: str | Path, *, iou_type: str = "bbox") -> list[Run]:
    """Every run found at ``path`` (a file, a run folder, or a folder of run folders)."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: does not exist")
    if path.is_file():
        if path.suffix == ".log":
            return [read_mmseg_log(path)]
        if path.name == "metrics.json":
            return [read_detectron2_metrics(path, iou_type=iou_type)]
        return [read_per_class_metrics(path)]
    if (path / PER_CLASS_FILE).is_file():
        return [read_per_class_metrics(path / PER_CLASS_FILE)]
    if (path / "metrics.json").is_file():
        return [read_detectron2_metrics(path / "metrics.json", iou_type=iou_type)]
    logs = sorted(path.glob("*/*.log"), key=lambda p: p.name)
    logs = [p for p in logs if p.stem == p.parent.name]
    if logs:
        return [read_mmseg_log(logs[-1])]
    found = sorted(path.rglob(PER_CLASS_FILE))
    if found:
        runs = [read_per_class_metrics(p) for p in found]
        for run, p in zip(runs, found):
            if not run.name or run.name == p.parent.name:
                run.name = str(p.parent.relative_to(path))
        return runs
    raise CompareError(
        f"{path}: no evaluation output found (looked for {PER_CLASS_FILE}, detectron2 "
        f"metrics.json, mmengine <timestamp>/<timestamp>.log)"
    )


def _dedupe_names(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        if run.name in seen:
            seen[run.name] += 1
            run.name = f"{run.name}#{seen[run.name]}"
        else:
            seen[run.name] = 1


def compare_runs(
    runs: list[Run],
    *,
    class_counts: dict[str, int] | None = None,
    baseline: str | None = None,
) -> dict:
    """Per-class deltas of every run against the baseline, rarest class first.

    Args:
        runs: at least two runs.
        class_counts: training-set frequency per class; default: the first run that has one.
        baseline: name of the baseline run; default the first run.

    Returns:
        ``{"metric", "task", "runs": [names], "baseline", "order": "class_counts" |
        "baseline_metric", "classes": [{"class", "count", "values": {run: v},
        "delta": {run: v - baseline}}], "summary": {key: {"values", "delta"}}}``.
    """
    if len(runs) < 2:
        raise CompareError(f"need at least two runs to compare, got {len(runs)}")
    metrics = {r.metric for r in runs}
    if len(metrics) > 1:
        raise CompareError(
            "runs report different metrics: "
            + ", ".join(f"{r.name}: {r.metric} ({r.source})" for r in runs)
        )
    _dedupe_names(runs)
    if baseline is not None:
        chosen = [r for r in runs if r.name == baseline]
        if not chosen:
            raise CompareError(
                f"no run named {baseline!r} to use as baseline; runs: {[r.name for r in runs]}"
            )
        runs = chosen + [r for r in runs if r.name != baseline]
    base = runs[0]
    counts = class_counts or next((r.class_counts for r in runs if r.class_counts), None)
    names = list(base.per_class)
    for r in runs[1:]:
        names += [n for n in r.per_class if n not in names]
    for r in runs[1:]:
        missing = [n for n in base.per_class if n not in r.per_class]
        if missing:
            logger.warning("%s lacks classes %s that %s has", r.name, missing[:5], base.name)

    if counts:
        order = "class_counts"
        names.sort(key=lambda n: (counts.get(n) is None, counts.get(n, 0), n))
    else:
        order = "baseline_metric"
        names.sort(key=lambda n: (base.per_class.get(n) is None, base.per_class.get(n) or 0.0))

    def delta(a, b):
        return None if a is None or b is None else b - a

    rows = []
    for n in names:
        values = {r.name: r.per_class.get(n) for r in runs}
        rows.append(
            {
                "class": n,
                "count": counts.get(n) if counts else None,
                "values": values,
                "delta": {r.name: delta(values[base.name], values[r.name]) for r in runs[1:]},
            }
        )
    keys = [k for k in base.summary if all(k in r.summary for r in runs[1:])]
    summary = {
        k: {
            "values": {r.name: r.summary[k] for r in runs},
            "delta": {r.name: delta(base.summary[k], r.summary[k]) for r in runs[1:]},
        }
        for k in keys
    }
    return {
        "metric": base.metric,
        "task": base.task,
        "runs": [r.name for r in runs],
        "sources": {r.name: r.source for r in runs},
        "baseline": base.name,
        "order": order,
        "classes": rows,
        "summary": summary,
    }


def _decimals(result: dict) -> int:
    """Metrics on a 0-1 scale need a third decimal; percentages read well with two."""
    values = [v for row in result["classes"] for v in row["values"].values() if v is not None]
    return 3 if values and max(abs(v) for v in values) <= 1.0 else 2


def _cell(v, decimals: int, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    if round(v, decimals) == 0:
        v = 0.0  # no "-0.00"
    return f"{v:+.{decimals}f}" if signed else f"{v:.{decimals}f}"


def format_table(result: dict, *, markdown: bool = False) -> str:
    """The comparison as a text (or markdown) table."""
    runs, base = result["runs"], result["baseline"]
    others = runs[1:]
    d = _decimals(result)
    header = ["class", "train count", *runs, *(f"delta {r}" for r in others)]
    body = []
    for row in result["classes"]:
        body.append(
            [
                row["class"],
                "" if row["count"] is None else f"{row['count']:,}",
                *(_cell(row["values"][r], d) for r in runs),
                *(_cell(row["delta"][r], d, signed=True) for r in others),
            ]
        )
    for key, s in result["summary"].items():
        body.append(
            [
                f"[{key}]",
                "",
                *(_cell(s["values"][r], d) for r in runs),
                *(_cell(s["delta"][r], d, signed=True) for r in others),
            ]
        )
    order = (
        "rarest class first (training-set counts)"
        if result["order"] == "class_counts"
        else "lowest baseline value first (no class counts available)"
    )
    title = f"per-class {result['metric']}: deltas vs {base}, {order}"
    if markdown:
        lines = [
            f"**{title}**",
            "",
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([title, fmt.format(*header), *(fmt.format(*r) for r in body)])


def plot_deltas(result: dict, path: str | Path) -> Path:
    """Horizontal bars of each run's per-class delta, rarest class at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["classes"]
    others = result["runs"][1:]
    labels = [
        f"{r['class']} ({r['count']:,})" if r["count"] is not None else r["class"] for r in rows
    ]
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.3 * len(rows) * max(1, len(others)) ** 0.5 + 1)))
    height = 0.8 / len(others)
    for i, run in enumerate(others):
        ys = [len(rows) - 1 - k + (i - (len(others) - 1) / 2) * height for k in range(len(rows))]
        vals = [r["delta"][run] if r["delta"][run] is not None else 0.0 for r in rows]
        ax.barh(ys, vals, height=height, label=run)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels[::-1], fontsize=7)
    ax.set_xlabel(f"delta {result['metric']} vs {result['baseline']}")
    ax.set_title("per-class deltas (rarest at the top)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _counts_from(spec: str) -> dict[str, int]:
    """Class counts from a per_class_metrics.json, an inspect report.json or a dataset."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("class_counts"), dict):
            return {str(k): int(v) for k, v in data["class_counts"].items()}
    from ganaug.inspect import inspect_dataset

    return inspect_dataset(path, recommend=False, mask_overlap=False, check_images="none")[
        "class_counts"
    ]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compare",
        help="per-class metric deltas between evaluation runs, rarest class first",
        description="Per-class metric deltas between evaluation runs, rarest class first. A "
        "run is a per_class_metrics.json, a detectron2 metrics.json, an mmengine work dir "
        "(per-class table in its log), or a folder of runs; the first run is the baseline.",
    )
    p.add_argument("runs", nargs="+", help="run folders or result files; the first is the baseline")
    p.add_argument(
        "--counts",
        default=None,
        help="training-set class counts: a JSON with class_counts (inspect's "
        "report.json) or a dataset path to inspect",
    )
    p.add_argument(
        "--iou-type",
        choices=("bbox", "segm"),
        default="bbox",
        help="detectron2 metrics.json: which AP to read (default bbox)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="name of the baseline run (default: the first; useful with a folder of runs)",
    )
    p.add_argument("--out", default="outputs/compare", help="folder for compare.json/.md/.png")
    p.add_argument("--no-plot", action="store_true", help="write no PNG plot")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ganaug.inspect._common import InspectError

    try:
        runs = [r for path in args.runs for r in load_runs(path, iou_type=args.iou_type)]
        counts = _counts_from(args.counts) if args.counts else None
        result = compare_runs(runs, class_counts=counts, baseline=args.baseline)
    except (CompareError, InspectError) as err:
        sys.stderr.write(f"ganaug compare: {err}\n")
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "compare.json", json.dumps(result, indent=1) + "\n")
    write_text_atomic(out / "compare.md", format_table(result, markdown=True) + "\n")
    written = [out / "compare.json", out / "compare.md"]
    if not args.no_plot:
        written.append(plot_deltas(result, out / "compare.png"))
    sys.stdout.write(format_table(result) + "\n")
    sys.stdout.write("written: " + ", ".join(str(p) for p in written) + "\n")
    return 0
