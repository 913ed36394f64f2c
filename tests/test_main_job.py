"""Summary tables of the main job (per-class means over seeds, rarest class first)."""

from __future__ import annotations

import json

import pytest

from ganaug.main_job import _finished_run, summarise, to_markdown


def _run(seed, per_class, miou):
    return {"seed": seed, "per_class": per_class, "summary": {"mIoU": miou}, "train_seconds": 1}


def test_summarise_orders_by_rarity_and_averages_seeds():
    counts = {"Road": 100, "Bicyclist": 1, "Car": 10}
    results = {
        "baseline": [
            _run(0, {"Road": 90, "Bicyclist": 0, "Car": 20}, 36.7),
            _run(1, {"Road": 92, "Bicyclist": 2, "Car": 30}, 41.3),
        ],
        "adversarial": [
            _run(0, {"Road": 91, "Bicyclist": 4, "Car": 25}, 40.0),
            _run(1, {"Road": 93, "Bicyclist": 6, "Car": 35}, 44.7),
        ],
    }
    s = summarise(results, counts)
    assert [r["class"] for r in s["classes"]] == ["Bicyclist", "Car", "Road"]
    bike = s["classes"][0]
    assert bike["baseline"] == 1.0 and bike["adversarial"] == 5.0
    assert bike["baseline_std"] == 1.41  # sample std of (0, 2), rounded
    assert bike["pixel_share"] == pytest.approx(100 / 111, abs=1e-2)
    assert s["summary"]["adversarial"]["mIoU"] == pytest.approx(42.35)
    md = to_markdown(s, ["baseline", "adversarial"])
    assert md.splitlines()[2].startswith("| Bicyclist | 0.90 | 1.00 ± 1.41 | 5.00 ± 1.41 | +4.00")
    assert "Δ adversarial" in md.splitlines()[0]


def test_nan_class_is_skipped_in_the_mean():
    s = summarise({"a": [_run(0, {"x": float("nan")}, 1.0), _run(1, {"x": 4.0}, 1.0)]}, {"x": 5})
    assert s["classes"][0]["a"] == 4.0


def test_finished_run_is_reused_only_when_identical(tmp_path):
    res = {"config": "c.py", "seed": 0, "iters": 600, "class_counts": {}, "per_class": {}}
    (tmp_path / "per_class_metrics.json").write_text(json.dumps(res))
    assert _finished_run(str(tmp_path), "c.py", 0, None) == res
    assert _finished_run(str(tmp_path), "c.py", 0, 600) == res
    assert _finished_run(str(tmp_path), "c.py", 1, None) is None
    assert _finished_run(str(tmp_path), "c.py", 0, 300) is None
    assert _finished_run(str(tmp_path), "other.py", 0, None) is None
    (tmp_path / "per_class_metrics.json").write_text("{truncated")
    assert _finished_run(str(tmp_path), "c.py", 0, None) is None


def test_single_seed_has_no_spread_column():
    s = summarise({"a": [_run(0, {"x": 3.0}, 3.0)], "b": [_run(0, {"x": 4.0}, 4.0)]}, {"x": 5})
    md = to_markdown(s, ["a", "b"])
    assert "±" not in md
    assert md.splitlines()[2] == "| x | 100.00 | 3.00 | 4.00 | +1.00 |"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--iters", "0"], "positive integer"),
        (["--variants", "a=x.py", "a=y.py"], "duplicate variant names"),
        (["--variants", "a=x.py"], "at least two variants"),
        (["--variants", "a=/nonexistent/cfg.py", "b=/nonexistent/cfg.py"], "not found"),
        (["--data-root", "/nonexistent/root"], "--data-root"),
    ],
)
def test_seg_compare_rejects_bad_arguments_before_training(argv, message, capsys, tmp_path):
    from ganaug.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["seg-compare", "--out", str(tmp_path), *argv])
    text = str(exc.value.code) + capsys.readouterr().err
    assert message in text
    assert not any(tmp_path.iterdir())  # nothing trained
