"""Summary tables and figures of one retrieval task across models.

Tables (CSV, Markdown, LaTeX through marseval.report.tables.write_table):
- paired: R@1, R@10, median rank and MRR in both directions, per model;
- landform: macro mAP, R-Precision, nDCG@10, Hit@10 per model, and AP per class;
- geolocalization: best F1 (precision, recall, K) and AUPRC per model, query mode and
  landform, for the lon/lat-degree radius and the geodesic-km radius, with the landform mean.

Figures (PDF and PNG): per-class AP bars (landform); precision and recall over K, and a Mars
map of ground-truth points with the retrieved tiles coloured by rank (geolocalization).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from marseval.atomic import atomic_directory
from marseval.errors import MarsevalError
from marseval.report.figures import model_colours, save_figure
from marseval.report.tables import write_table
from marseval.workflow import model_slug

PAIRED_COLUMNS = ("i2t_r1", "i2t_r10", "i2t_medr", "i2t_mrr",
                  "t2i_r1", "t2i_r10", "t2i_medr", "t2i_mrr")
LANDFORM_COLUMNS = ("map", "r_precision", "ndcg10", "hit10")
MAP_POINTS = 2000  # retrieved tiles drawn per map: the top ranks carry the picture


def _records(eval_dirs: list[Path]) -> list[tuple[Path, dict]]:
    found = []
    for folder in eval_dirs:
        path = Path(folder) / "metrics.json"
        try:
            found.append((Path(folder), json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            raise MarsevalError(f"{path}: unreadable evaluation record ({exc})") from None
    tasks = {r["task"] for _, r in found}
    if len(tasks) != 1:
        raise MarsevalError(f"one task per summary; the records hold {sorted(tasks)}")
    return found


def write_report(eval_dirs: list[Path], out: Path) -> pd.DataFrame:
    """Summary table(s) and figures of one task into the folder `out` (written atomically)."""
    records = _records(eval_dirs)
    task = records[0][1]["task"]
    colours = model_colours(sorted(r["model"] for _, r in records))
    with atomic_directory(out) as tmp:
        (tmp / "figures").mkdir()
        summary = {"paired": _paired, "landform": _landform,
                   "geolocalization": _geolocalization}[task](records, tmp, colours)
        write_table(summary, tmp / "summary", caption=f"MarsRetrieval {task} retrieval")
    return summary


def _not_applicable(record: dict) -> dict:
    return {"model": record["model"], "note": f"not applicable: {record['reason']}"}


def _paired(records: list[tuple[Path, dict]], tmp: Path, colours) -> pd.DataFrame:
    rows = [{"model": r["model"], **{c: r["metrics"][c] for c in PAIRED_COLUMNS},
             "n": r["metrics"]["n"]} if r["applicable"] else _not_applicable(r)
            for _, r in records]
    return pd.DataFrame(rows)


def _landform(records: list[tuple[Path, dict]], tmp: Path, colours) -> pd.DataFrame:
    rows, per_class = [], []
    for folder, r in records:
        if not r["applicable"]:
            rows.append(_not_applicable(r))
            continue
        rows.append({"model": r["model"], **{c: r["metrics"][c] for c in LANDFORM_COLUMNS}})
        per_class.append(pd.read_csv(folder / "per_class.csv").assign(model=r["model"]))
    if per_class:
        classes = pd.concat(per_class, ignore_index=True)
        write_table(classes.pivot(index="class", columns="model", values="ap"),
                    tmp / "per_class_ap", caption="Average precision per landform class")
        _class_ap_figure(classes, colours, tmp / "figures" / "per_class_ap")
    return pd.DataFrame(rows)


def _class_ap_figure(classes: pd.DataFrame, colours, stem: Path) -> None:
    models = sorted(classes["model"].unique())
    names = sorted(classes["class"].unique())
    fig = Figure(figsize=(max(5.0, 0.5 * len(names) * len(models)), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        ap = classes[classes["model"] == model].set_index("class")["ap"].reindex(names)
        ax.bar(np.arange(len(names)) + i * width, ap.to_numpy(), width, label=model,
               color=colours[model])
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
    ax.set_ylabel("average precision")
    ax.set_ylim(0, 1)
    ax.legend(frameon=False, fontsize=8)
    save_figure(fig, stem)


def _geolocalization(records: list[tuple[Path, dict]], tmp: Path, colours) -> pd.DataFrame:
    rows = []
    for folder, r in records:
        if not r["applicable"]:
            rows.append(_not_applicable(r))
            continue
        for mode, result in r["metrics"].items():
            entries = {**result["per_landform"], "mean": result["mean"]}
            for landform, entry in entries.items():
                row = {"model": r["model"], "mode": mode, "landform": landform}
                for metric in ("degrees", "km"):
                    row.update({f"{k}_{metric}": v for k, v in entry[metric].items()})
                rows.append(row)
        curves = pd.read_parquet(folder / "curves.parquet")
        retrieved = pd.read_parquet(folder / "retrieved.parquet")
        truth = pd.read_parquet(folder / "ground_truth.parquet")
        slug = model_slug(r["model"])
        _curves_figure(curves, tmp / "figures" / f"pr_over_k_{slug}")
        for mode in r["metrics"]:
            _map_figure(retrieved[retrieved["mode"] == mode], truth,
                        tmp / "figures" / f"map_{slug}_{mode}", r["radius_deg"])
    return pd.DataFrame(rows)


def _curves_figure(curves: pd.DataFrame, stem: Path) -> None:
    curves = curves[curves["metric"] == "degrees"]
    modes = list(dict.fromkeys(curves["mode"]))
    fig = Figure(figsize=(3.6 * len(modes), 3.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(modes), sharey=True))
    landforms = sorted(curves["landform"].unique())
    palette = model_colours(landforms)
    for ax, mode in zip(axes, modes, strict=True):
        for landform in landforms:
            line = curves[(curves["mode"] == mode) & (curves["landform"] == landform)]
            ax.plot(line["k"], line["precision"], color=palette[landform], label=landform)
            ax.plot(line["k"], line["recall"], color=palette[landform], linestyle="--")
        ax.set_title(f"{mode} queries", fontsize=10)
        ax.set_xlabel("K (tiles retrieved)")
    axes[0].set_ylabel("precision (solid), recall (dashed)")
    axes[-1].legend(frameon=False, fontsize=7, loc="upper right")
    save_figure(fig, stem)


def _map_figure(retrieved: pd.DataFrame, truth: pd.DataFrame, stem: Path,
                radius_deg: float) -> None:
    landforms = list(dict.fromkeys(retrieved["landform"]))
    fig = Figure(figsize=(6.0, 3.2 * len(landforms)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(len(landforms), 1))
    for ax, landform in zip(axes, landforms, strict=True):
        top = retrieved[retrieved["landform"] == landform].nsmallest(MAP_POINTS, "rank")
        points = ax.scatter(top["lon"], top["lat"], c=top["rank"], cmap="viridis_r", s=6,
                            marker="s", linewidths=0)
        gt = truth[truth["landform"] == landform]
        ax.scatter(gt["lon"], gt["lat"], s=14, facecolors="none", edgecolors="red",
                   linewidths=0.8, label=f"ground truth (radius {radius_deg} deg)")
        ax.legend(frameon=False, fontsize=7, loc="lower left")
        ax.set_xlim(-180, 180)
        ax.set_ylim(-90, 90)
        ax.set_aspect("equal")
        ax.set_title(landform, fontsize=10)
        ax.set_xlabel("longitude (deg)")
        ax.set_ylabel("latitude (deg)")
        fig.colorbar(points, ax=ax, label="rank", shrink=0.8)
    save_figure(fig, stem)
