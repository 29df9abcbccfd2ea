"""Tables of the report: CSV to read back, Markdown for READMEs, LaTeX (booktabs) for papers.

`results_table` and `iqm_table` put one dataset per row and one model per column; they remember
the best model of each dataset (in `frame.attrs["bold_cells"]`, plain (dataset, model) pairs),
and `write_table` sets those cells in bold in the LaTeX output only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from marseval.atomic import atomic_write_text
from marseval.errors import MarsevalError

MISSING = "--"  # a model without runs on a dataset
BOLD = "bold_cells"  # key in DataFrame.attrs
_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def write_table(frame: pd.DataFrame, stem: Path, caption: str = "", *,
                bold: pd.DataFrame | None = None, label: str | None = None,
                decimals: int = 4) -> list[Path]:
    """Write `frame` as `<stem>.csv`, `<stem>.md` and `<stem>.tex`, each atomically.

    A named (or non-range) index becomes the first column. `caption` (plain text, escaped for
    LaTeX) captions the LaTeX table. `bold` is a boolean frame over `frame`'s index and columns
    (absent cells are not bold); by default the cells in `frame.attrs["bold_cells"]`. Floats
    show `decimals` digits in Markdown and LaTeX; the CSV keeps full precision.
    """
    stem = Path(stem)
    table = _flat(frame)
    mask = _bold_mask(frame, table, bold)
    texts = {
        "csv": table.to_csv(index=False),
        "md": table.to_markdown(index=False, floatfmt=f".{decimals}f", missingval=MISSING)
        + "\n",
        "tex": _latex(table, mask, caption, label, decimals),
    }
    return [atomic_write_text(stem.with_name(f"{stem.name}.{ext}"), text)
            for ext, text in texts.items()]


def results_table(per_dataset: pd.DataFrame, decimals: int = 3, *,
                  order: Sequence[str] | None = None) -> pd.DataFrame:
    """"mean ± std" of each dataset (rows) and model (columns); the best mean is bold."""
    def cell(row: pd.Series) -> str:
        if pd.isna(row["std"]):  # one run: no spread
            return f"{row['mean']:.{decimals}f}"
        return f"{row['mean']:.{decimals}f} ± {row['std']:.{decimals}f}"

    return _cells(per_dataset, ("mean", "std"), cell, "mean", decimals, order)


def iqm_table(per_dataset: pd.DataFrame, decimals: int = 3, *,
              order: Sequence[str] | None = None) -> pd.DataFrame:
    """"IQM [ci_low, ci_high]" of each dataset (rows) and model (columns); the best IQM is
    bold."""
    def cell(row: pd.Series) -> str:
        return (f"{row['iqm']:.{decimals}f} [{row['ci_low']:.{decimals}f}, "
                f"{row['ci_high']:.{decimals}f}]")

    return _cells(per_dataset, ("iqm", "ci_low", "ci_high"), cell, "iqm", decimals, order)


def results_tables(per_dataset: pd.DataFrame, decimals: int = 3, *,
                   order: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Both per-dataset tables by file stem: "per_dataset_mean_std" and "per_dataset_iqm"."""
    return {"per_dataset_mean_std": results_table(per_dataset, decimals, order=order),
            "per_dataset_iqm": iqm_table(per_dataset, decimals, order=order)}


def best_cells(per_dataset: pd.DataFrame, value: str = "mean", decimals: int = 3, *,
               higher_is_better: bool = True,
               order: Sequence[str] | None = None) -> pd.DataFrame:
    """True where a model has the best `value` of its dataset, laid out as `results_table`.

    Values are compared as shown (rounded to `decimals`): cells that read the same are all
    bold, except in a row where every model reads the same (no model is best there).
    """
    values = _pivot(per_dataset, value, order).astype(float).round(decimals)
    best = values.max(axis=1) if higher_is_better else values.min(axis=1)
    mask = values.eq(best, axis=0)
    all_tied = mask.sum(axis=1).eq(values.notna().sum(axis=1)) & values.notna().sum(axis=1).gt(1)
    mask.loc[all_tied] = False
    return mask


# --- helpers ---------------------------------------------------------------------------------


def _cells(per_dataset: pd.DataFrame, needed: Iterable[str], cell: Callable[[pd.Series], str],
           value: str, decimals: int, order: Sequence[str] | None) -> pd.DataFrame:
    _require(per_dataset, ("model", "dataset", *needed))
    texts = per_dataset.assign(cell=[cell(row) if pd.notna(row[value]) else MISSING
                                     for _, row in per_dataset.iterrows()])
    table = _pivot(texts, "cell", order).fillna(MISSING)
    mask = best_cells(per_dataset, value, decimals, order=order)
    table.attrs[BOLD] = [(dataset, model) for dataset in mask.index for model in mask.columns
                         if mask.loc[dataset, model]]
    return table


def _pivot(per_dataset: pd.DataFrame, value: str, order: Sequence[str] | None,
           columns: list[str] | None = None) -> pd.DataFrame:
    """`value` by dataset (sorted rows, index named "dataset") and model (columns)."""
    _require(per_dataset, ("model", "dataset", value))
    repeated = per_dataset[per_dataset.duplicated(["dataset", "model"])]
    if not repeated.empty:
        first = repeated.iloc[0]
        raise MarsevalError(f"per-dataset summary: several rows for model {first['model']} on "
                            f"dataset {first['dataset']}")
    wide = per_dataset.pivot(index="dataset", columns="model", values=value)
    columns = columns if columns is not None else _models(per_dataset["model"], order)
    wide = wide.reindex(columns=columns).sort_index()
    wide.columns.name = None
    return wide


def _models(models: Iterable[str], order: Sequence[str] | None) -> list[str]:
    """The given order (models it lacks follow, sorted), or sorted names."""
    present = set(models)
    ranked = [m for m in dict.fromkeys(order) if m in present] if order is not None else []
    return ranked + sorted(present - set(ranked))


def _require(frame: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MarsevalError(f"per-dataset summary lacks the column(s) {', '.join(missing)}")


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a meaningful index moved into leading columns, and a fresh range index."""
    if isinstance(frame.columns, pd.MultiIndex):
        raise MarsevalError("tables with several column levels cannot be written; flatten them")
    named = any(name is not None for name in frame.index.names)
    meaningful = named or not isinstance(frame.index, pd.RangeIndex)
    return frame.reset_index(drop=not meaningful)


def _bold_mask(frame: pd.DataFrame, table: pd.DataFrame,
               bold: pd.DataFrame | None) -> np.ndarray:
    """Boolean array shaped like `table` (index columns never bold)."""
    if bold is None:
        cells = frame.attrs.get(BOLD, [])
        bold = pd.DataFrame(False, index=frame.index, columns=frame.columns)
        for row, column in cells:
            if row in bold.index and column in bold.columns:
                bold.loc[row, column] = True
    aligned = bold.reindex(index=frame.index, columns=frame.columns, fill_value=False)
    mask = np.zeros(table.shape, dtype=bool)
    # _flat puts the index columns first, so frame's own columns are the last ones
    mask[:, table.shape[1] - frame.shape[1]:] = aligned.to_numpy(dtype=bool)
    return mask


def _latex(table: pd.DataFrame, mask: np.ndarray, caption: str, label: str | None,
           decimals: int) -> str:
    """booktabs (\\toprule, \\midrule, \\bottomrule) via pandas' Styler; cells and headers
    escaped, "±" as $\\pm$ so pdflatex needs no Unicode setup."""
    styler = (table.style.hide(axis="index")
              .format(precision=decimals, escape="latex", na_rep=MISSING)
              .format_index(escape="latex", axis="columns")
              .apply(lambda _: np.where(mask, "font-weight: bold;", ""), axis=None))
    floating = bool(caption) or label is not None
    text = styler.to_latex(hrules=True, convert_css=True, caption=_escape(caption) or None,
                           label=label, position_float="centering" if floating else None)
    return text.replace("±", r"$\pm$")


def _escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)
