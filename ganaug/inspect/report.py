"""Outputs of an inspection: terminal summary, markdown, JSON and PNG plots."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ganaug.atomic import write_text_atomic

logger = logging.getLogger(__name__)

_UNIT_LABEL = {"instances": "instances", "pixels": "pixels", "images": "images"}


def _fmt_ratio(r) -> str:
    return f"{r:.1f}:1" if r else "n/a"


def _sorted_classes(report: dict) -> list[tuple[str, int]]:
    return sorted(report["class_counts"].items(), key=lambda t: -t[1])


def _problem_lines(report: dict) -> list[str]:
    lines = []
    for name, value in (report.get("problems") or {}).items():
        if isinstance(value, dict):
            count = value.get("count", 0)
            if not count:
                continue
            detail = ""
            by_value = value.get("values") or value.get("files_per_value") or value.get("folders")
            if by_value:
                detail += f"; {json.dumps(by_value)[:200]}"
            ex = value.get("examples")
            if ex:
                first = [
                    e["file"] + ": " + e["error"]
                    if isinstance(e, dict) and "error" in e
                    else str(e)
                    for e in ex[:3]
                ]
                detail += "; e.g. " + "; ".join(first)
            lines.append(f"{name.replace('_', ' ')}: {count}{detail}")
        elif isinstance(value, list) and value:
            lines.append(f"{name.replace('_', ' ')}: {', '.join(map(str, value[:10]))}")
        elif isinstance(value, int) and value:
            lines.append(f"{name.replace('_', ' ')}: {value}")
    return lines


def format_summary(report: dict, *, max_classes: int = 12) -> str:
    """A short plain-text summary for the terminal."""
    unit = _UNIT_LABEL.get(report["count_unit"], report["count_unit"])
    lines = [
        f"ganaug inspect: {report.get('name', '')} ({report['format']}, {report['task']})",
        f"  source: {report['source']}",
        (
            f"  images: {report['num_images']}   classes: {len(report['classes'])}   "
            f"imbalance ratio ({unit}): {_fmt_ratio(report['imbalance_ratio'])}"
        ),
    ]
    ranked = [(n, c) for n, c in _sorted_classes(report) if c > 0]
    if ranked:
        lines.append(f"  per class ({unit}, share; most to least frequent):")
        shown = (
            ranked
            if len(ranked) <= max_classes
            else ranked[: max_classes // 2] + [("...", None)] + ranked[-max_classes // 2 :]
        )
        for name, count in shown:
            if count is None:
                lines.append("    ...")
                continue
            e = report["per_class"][name]
            extra = []
            if "image_share" in e and report["task"] == "segmentation":
                extra.append(f"in {100 * e['image_share']:.0f}% of maps")
            if e.get("small_share") is not None:
                extra.append(f"small {100 * e['small_share']:.0f}%")
                if report["task"] == "segmentation":
                    extra[-1] = (
                        f"small regions {100 * e['small_share']:.0f}% "
                        f"({100 * e['small_area_share']:.0f}% of its px)"
                    )
            if e.get("occluded_share") is not None:
                extra.append(f"occluded {100 * e['occluded_share']:.0f}%")
            lines.append(
                f"    {name[:24]:<24} {count:>12,} {100 * e['share']:6.2f}%  {'  '.join(extra)}"
            )
    scale = report.get("scale")
    if scale and scale.get("objects"):
        what = {"detection": "objects", "segmentation": "regions", "classification": "mask regions"}
        lines.append(
            f"  scale ({what[report['task']]}): small {100 * scale['small_share']:.1f}%  "
            f"medium {100 * scale['medium_share']:.1f}%  large {100 * scale['large_share']:.1f}%  "
            f"CV of sqrt(area) {scale['scale_cv']:.2f}"
            if scale.get("scale_cv") is not None
            else f"  scale: {scale['objects']} objects"
        )
    occ = report.get("occlusion")
    if occ:
        lines.append(
            f"  occlusion proxy: {100 * occ['occluded_share']:.1f}% of instances have box IoU "
            f">= {occ['iou_threshold']} with another; mean max IoU {occ['mean_max_iou']:.3f}"
        )
    if report.get("absent_classes"):
        lines.append(f"  absent classes: {', '.join(report['absent_classes'][:10])}")
    problems = _problem_lines(report)
    lines.append("  problems:" + (" none found" if not problems else ""))
    lines += [f"    - {p}" for p in problems]
    recs = report.get("recommendations")
    if recs is not None:
        lines.append("  recommendations:" + (" none triggered" if not recs else ""))
        for r in recs:
            where = r["config"] or r["module"] or ""
            lines.append(f"    - {r['title']} [{r['status']}]" + (f": {where}" if where else ""))
            lines.append(f"      because {r['reason']}")
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    """The report as markdown: overview, per-class table, problems, recommendations."""
    unit = report["count_unit"]
    out = [
        f"# Dataset inspection: {report.get('name', '')}",
        "",
        f"- format: `{report['format']}` ({report['task']})",
        f"- source: `{report['source']}`",
        f"- images: {report['num_images']}",
        f"- classes: {len(report['classes'])}",
        (
            f"- imbalance ratio ({unit}, most / least frequent present class): "
            f"{_fmt_ratio(report['imbalance_ratio'])}"
        ),
    ]
    scale = report.get("scale")
    if scale and scale.get("objects"):
        out.append(
            f"- scale: {scale['objects']} objects/regions; small {100 * scale['small_share']:.1f}%,"
            f" medium {100 * scale['medium_share']:.1f}%, large {100 * scale['large_share']:.1f}%"
            f" (COCO area rule); CV of sqrt(area): {scale.get('scale_cv') or 0:.2f}"
        )
    occ = report.get("occlusion")
    if occ:
        out.append(
            f"- occlusion proxy: {100 * occ['occluded_share']:.1f}% of instances with box IoU >= "
            f"{occ['iou_threshold']} against another instance; mean max IoU "
            f"{occ['mean_max_iou']:.3f}; {occ['mask_pairs_checked']} mask pairs checked"
        )
    cols = ["count" if unit != "pixels" else "pixels", "share"]
    for c in (
        "images",
        "image_share",
        "regions",
        "small",
        "medium",
        "large",
        "small_share",
        "small_area_share",
        "scale_cv",
        "occluded_share",
        "mean_max_iou",
        "mask_overlap_mean",
        "mask_pixel_share",
        "width_mean",
        "height_mean",
    ):
        if any(c in e for e in report["per_class"].values()):
            cols.append(c)
    out += [
        "",
        "## Per class",
        "",
        "| class | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name, _ in _sorted_classes(report):
        e = report["per_class"][name]
        cells = []
        for c in cols:
            v = e.get(c)
            if v is None:
                cells.append("")
            elif c.endswith("share"):
                cells.append(f"{100 * v:.2f}%")
            elif isinstance(v, float):
                cells.append(f"{v:.3f}")
            else:
                cells.append(f"{v:,}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "## Problems", ""]
    problems = _problem_lines(report)
    out += [f"- {p}" for p in problems] or ["- none found"]
    if report.get("absent_classes"):
        out.append(f"- absent classes: {', '.join(report['absent_classes'])}")
    recs = report.get("recommendations")
    if recs is not None:
        out += ["", "## Recommendations", ""]
        if not recs:
            out.append("None triggered by these figures.")
        for r in recs:
            where = (
                f"`{r['config']}`" if r["config"] else (f"`{r['module']}`" if r["module"] else "")
            )
            out.append(
                f"- **{r['title']}** ({r['status']}){': start from ' + where if where else ''}"
            )
            out.append(f"  - why: {r['reason']}")
    return "\n".join(out) + "\n"


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """PNG plots of the distributions; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ranked = _sorted_classes(report)
    names = [n for n, _ in ranked]
    height = max(3.0, 0.22 * len(names) + 1.2)

    fig, ax = plt.subplots(figsize=(7, height))
    ax.barh(names[::-1], [max(c, 0) for _, c in ranked][::-1], color="#4c72b0")
    if ranked and ranked[0][1] > 0 and (report["imbalance_ratio"] or 1) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(report["count_unit"])
    ax.set_title(
        f"{report.get('name', '')}: {report['count_unit']} per class "
        f"(ratio {_fmt_ratio(report['imbalance_ratio'])})"
    )
    ax.tick_params(axis="y", labelsize=7)
    written.append(_save(fig, out_dir / "class_counts.png"))

    pc = report["per_class"]
    if any("small" in pc[n] and (pc[n]["small"] + pc[n]["medium"] + pc[n]["large"]) for n in names):
        fig, ax = plt.subplots(figsize=(7, height))
        left = [0.0] * len(names)
        for key, color in (("small", "#dd8452"), ("medium", "#55a868"), ("large", "#4c72b0")):
            vals = []
            for n in names:
                tot = pc[n].get("small", 0) + pc[n].get("medium", 0) + pc[n].get("large", 0)
                vals.append(pc[n].get(key, 0) / tot if tot else 0.0)
            ax.barh(names[::-1], vals[::-1], left=left[::-1], color=color, label=key)
            left = [a + b for a, b in zip(left, vals)]
        ax.set_xlabel("share of objects/regions (COCO area buckets)")
        ax.legend(loc="lower right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title("object scale per class")
        written.append(_save(fig, out_dir / "scale_buckets.png"))

    if report["task"] == "segmentation":
        fig, ax = plt.subplots(figsize=(7, height))
        ax.barh(names[::-1], [100 * pc[n]["image_share"] for n in names][::-1], color="#8172b3")
        ax.set_xlabel("% of label maps containing the class")
        ax.set_title("per-image presence")
        written.append(_save(fig, out_dir / "presence.png"))
    if report.get("occlusion"):
        fig, ax = plt.subplots(figsize=(7, height))
        ax.barh(
            names[::-1],
            [100 * pc[n].get("occluded_share", 0.0) for n in names][::-1],
            color="#c44e52",
        )
        ax.set_xlabel(
            f"% of instances with box IoU >= {report['occlusion']['iou_threshold']} against another"
        )
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title("occlusion proxy per class")
        written.append(_save(fig, out_dir / "occlusion.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the plots into ``out_dir`` (created).

    Files are written to temporary names and renamed, so a reader never sees half a file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    write_text_atomic(paths["json"], json.dumps(report, indent=1, allow_nan=False) + "\n")
    write_text_atomic(paths["markdown"], format_markdown(report))
    if plots:
        for p in write_plots(report, out_dir):
            paths[p.stem] = p
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
