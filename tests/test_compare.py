"""ganaug compare: readers for each evaluation output, deltas sorted by rarity, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ganaug.compare import (
    CompareError,
    compare_runs,
    format_table,
    load_runs,
    read_detectron2_metrics,
    read_mmseg_log,
)


def main(argv):
    """Run our subcommand through its own parser: ganaug.cli would also import every other
    subcommand (mmseg's main job among them), which costs seconds unrelated to this test."""
    import argparse
    import importlib

    from ganaug.cli import SUBCOMMANDS

    assert SUBCOMMANDS[argv[0]] == "ganaug.compare"
    parser = argparse.ArgumentParser()
    importlib.import_module("ganaug.compare").add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def _write_run(folder, run, per_class, summary, counts=None, metric="IoU"):
    folder.mkdir(parents=True)
    doc = {
        "task": "segmentation",
        "metric": metric,
        "per_class": per_class,
        "summary": summary,
        "run": run,
    }
    if counts is not None:
        doc["class_counts"] = counts
    # allow_nan: mmseg's evaluator writes NaN for classes absent from the val set.
    (folder / "per_class_metrics.json").write_text(json.dumps(doc, allow_nan=True))
    return folder


@pytest.fixture
def two_runs(tmp_path):
    a = _write_run(
        tmp_path / "base",
        "base",
        {"Road": 90.0, "Bicyclist": 10.0, "Pedestrian": float("nan"), "Car": 70.0},
        {"mIoU": 56.0},
        counts={"Road": 1000, "Bicyclist": 5, "Pedestrian": 20, "Car": 300},
    )
    b = _write_run(
        tmp_path / "adv",
        "adv",
        {"Road": 89.0, "Bicyclist": 15.5, "Pedestrian": 30.0, "Car": 71.0},
        {"mIoU": 58.0},
    )
    return a, b


def test_deltas_sorted_by_rarity(two_runs):
    runs = [r for p in two_runs for r in load_runs(p)]
    res = compare_runs(runs)
    assert res["order"] == "class_counts" and res["baseline"] == "base"
    assert [row["class"] for row in res["classes"]] == ["Bicyclist", "Pedestrian", "Car", "Road"]
    delta = {row["class"]: row["delta"]["adv"] for row in res["classes"]}
    assert delta["Bicyclist"] == pytest.approx(5.5) and delta["Road"] == pytest.approx(-1.0)
    assert delta["Pedestrian"] is None  # NaN in the baseline: no delta, not a number
    assert res["summary"]["mIoU"]["delta"]["adv"] == pytest.approx(2.0)
    text = format_table(res)
    lines = text.splitlines()
    assert "rarest class first" in lines[0]
    assert lines[2].split()[:2] == ["Bicyclist", "5"] and lines[2].split()[-1] == "+5.50"
    assert "n/a" in lines[3]


def test_without_counts_sorts_by_baseline_value(tmp_path):
    a = _write_run(tmp_path / "a", "a", {"x": 50.0, "y": 5.0}, {})
    b = _write_run(tmp_path / "b", "b", {"x": 40.0, "y": 9.0}, {})
    res = compare_runs(load_runs(a) + load_runs(b))
    assert res["order"] == "baseline_metric"
    assert [row["class"] for row in res["classes"]] == ["y", "x"]
    res = compare_runs(load_runs(a) + load_runs(b), class_counts={"x": 1, "y": 100})
    assert [row["class"] for row in res["classes"]] == ["x", "y"]


def test_folder_of_runs_expands(two_runs):
    runs = load_runs(two_runs[0].parent)
    assert [r.name for r in runs] == ["adv", "base"]  # sorted by path
    res = compare_runs(runs, baseline="base")
    assert res["runs"] == ["base", "adv"]
    delta = {row["class"]: row["delta"]["adv"] for row in res["classes"]}
    assert delta["Bicyclist"] == pytest.approx(5.5)
    with pytest.raises(CompareError, match="no run named 'nope'"):
        compare_runs(runs, baseline="nope")


def test_detectron2_metrics_json(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [
        {"iteration": 9, "total_loss": 1.2},
        {
            "bbox/AP": 20.0,
            "bbox/AP50": 40.0,
            "bbox/AP-person": 30.0,
            "bbox/AP-kite": 1.0,
            "segm/AP-person": 25.0,
            "iteration": 99,
        },
        {"bbox/AP": 22.0, "bbox/AP-person": 31.0, "bbox/AP-kite": "NaN", "iteration": 199},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"iteration": 2')
    run = read_detectron2_metrics(path)
    assert run.metric == "AP" and run.per_class == {"person": 31.0, "kite": None}
    assert run.summary == {"mAP": 22.0}
    assert read_detectron2_metrics(path, iou_type="segm").per_class == {"person": 25.0}
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "metrics.json").write_text(json.dumps({"iteration": 1}))
    with pytest.raises(CompareError, match="no 'bbox/AP-<class>' keys"):
        load_runs(tmp_path / "m2")


MMSEG_LOG = """2026/01/01 10:00:00 - mmengine - INFO - Iter(train) [100/200]  loss: 0.5
2026/01/01 10:00:05 - mmengine - INFO - per class results:
2026/01/01 10:00:05 - mmengine - INFO -
+-----------+-------+-------+
|   Class   |  IoU  |  Acc  |
+-----------+-------+-------+
|    Road   | 80.0  | 95.0  |
| Bicyclist |  1.0  |  2.0  |
+-----------+-------+-------+
2026/01/01 10:00:05 - mmengine - INFO - Iter(val) [10/10]  aAcc: 80.0  mIoU: 40.5  mAcc: 48.5
2026/01/01 10:10:05 - mmengine - INFO - per class results:
+-----------+-------+-------+
|   Class   |  IoU  |  Acc  |
+-----------+-------+-------+
|    Road   | 85.25 | 96.0  |
| Bicyclist |  nan  |  nan  |
+-----------+-------+-------+
2026/01/01 10:10:05 - mmengine - INFO - Iter(val) [10/10]  aAcc: 85.0  mIoU: 85.25  mAcc: 96.0
"""


def test_mmseg_log_last_table(tmp_path):
    ts = tmp_path / "work" / "20260101_100000"
    ts.mkdir(parents=True)
    (ts / "20260101_100000.log").write_text(MMSEG_LOG)
    (ts / "vis_data").mkdir()
    run = load_runs(tmp_path / "work")[0]
    assert run.name == "work" and run.metric == "IoU"
    assert run.per_class == {"Road": 85.25, "Bicyclist": None}
    assert run.summary == {"mIoU": 85.25, "aAcc": 85.0, "mAcc": 96.0}
    (ts / "20260101_100000.log").write_text("no table here\n")
    with pytest.raises(CompareError, match="20260101_100000.log: no per-class"):
        read_mmseg_log(ts / "20260101_100000.log")


def test_bad_inputs_are_named(tmp_path, two_runs):
    bad = tmp_path / "cut" / "per_class_metrics.json"
    bad.parent.mkdir()
    bad.write_text('{"task": "segmentation", "per_class": {"Road": 9')
    with pytest.raises(CompareError, match="cut/per_class_metrics.json: not valid JSON"):
        load_runs(bad.parent)
    ap = _write_run(tmp_path / "det", "det", {"Road": 1.0}, {}, metric="AP")
    with pytest.raises(CompareError, match="different metrics"):
        compare_runs(load_runs(two_runs[0]) + load_runs(ap))
    with pytest.raises(CompareError, match="at least two runs"):
        compare_runs(load_runs(two_runs[0]))


def test_cli_compare_prints_and_writes(tmp_path, two_runs, capsys):
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps({"class_counts": {"Road": 1, "Car": 2, "Bicyclist": 3, "Pedestrian": 4}})
    )
    out = tmp_path / "out"
    argv = [
        "compare",
        str(two_runs[0]),
        str(two_runs[1]),
        "--out",
        str(out),
        "--counts",
        str(report),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    rows = [line.split()[0] for line in text.splitlines()[2:6]]
    assert rows == ["Road", "Car", "Bicyclist", "Pedestrian"]
    assert {p.name for p in out.iterdir()} == {"compare.json", "compare.md", "compare.png"}
    assert main(["compare", str(two_runs[0]), str(tmp_path / "missing")]) == 1
    assert "missing: does not exist" in capsys.readouterr().err


def test_fraction_metrics_get_three_decimals(tmp_path):
    a = _write_run(tmp_path / "a", "a", {"x": 0.1234, "y": 0.5}, {}, metric="recall")
    b = _write_run(tmp_path / "b", "b", {"x": 0.1236, "y": 0.75}, {}, metric="recall")
    text = format_table(compare_runs(load_runs(a) + load_runs(b)))
    x_row = next(line.split() for line in text.splitlines() if line.startswith("x "))
    assert x_row[1:] == ["0.123", "0.124", "+0.000"]
    assert "+0.250" in text


def test_counts_from_a_dataset_path(tmp_path, two_runs):
    """--counts with a dataset folder inspects it: pixel counts of a 2-class label map."""
    from PIL import Image

    from ganaug.compare import _counts_from

    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "annotations").mkdir()
    lab = np.zeros((4, 4), np.uint8)
    lab[0, :3] = 1
    Image.fromarray(lab).save(tmp_path / "ds" / "annotations" / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "ds" / "images" / "a.png")
    assert _counts_from(str(tmp_path / "ds")) == {"class_0": 13, "class_1": 3}
