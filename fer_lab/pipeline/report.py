"""The reviewer-facing HTML report: an index of executed notebooks plus the summaries notebooks leave for it."""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fer_lab.pipeline.runner import PipelineResult

SUMMARY_DIR_NAME = "report_summary"


def summary_dir(work_dir: str | Path) -> Path:
    """Where notebooks leave tables and figures for the report index (cleared at each pipeline start)."""
    return Path(work_dir) / SUMMARY_DIR_NAME


def write_summary_table(work_dir: str | Path, name: str, table: pd.DataFrame, title: str) -> Path:
    """Leave `table` as an HTML fragment for the report index; files sort by `name`."""
    target = summary_dir(work_dir) / f"{name}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"<h2>{html.escape(title)}</h2>\n{table.to_html(index=False, border=0)}\n", encoding="utf-8")
    return target


def write_summary_figure(work_dir: str | Path, name: str, fig: "Figure") -> Path:
    """Leave `fig` as a PNG for the report index; files sort by `name`."""
    target = summary_dir(work_dir) / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    return target


def write_index(result: "PipelineResult", summary_dir: Path) -> Path:
    """An index.html for reviewers: each notebook's status and links, then the summary figures and tables."""
    rows = []
    for nb in result.notebooks:
        status = "ok" if nb.ok else f"FAILED: {html.escape(nb.error)}"
        links = f'<a href="{nb.notebook.name}">ipynb</a>'
        if nb.html is not None:
            links = f'<a href="{nb.html.name}">{html.escape(nb.name)}</a> ({links})'
        rows.append(f"<tr><td>{links}</td><td>{status}</td><td>{nb.seconds:.1f} s</td><td><code>{nb.run_id}</code></td></tr>")
    summary = []
    if summary_dir.is_dir():
        for item in sorted(summary_dir.iterdir()):
            if item.suffix == ".png":
                shutil.copy2(item, result.report_dir / item.name)
                summary.append(f'<figure><img src="{item.name}" style="max-width:720px"><figcaption>{item.stem}</figcaption></figure>')
            elif item.suffix == ".html":
                summary.append(item.read_text(encoding="utf-8"))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>fer-lab report {result.report_dir.name}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body>
<h1>fer-lab pipeline report</h1>
<p>MLflow parent run <code>{result.parent_run_id}</code> in <code>{html.escape(result.tracking_uri)}</code>.
Status: <b>{'ok' if result.ok else 'FAILED'}</b>.</p>
<table><tr><th>notebook</th><th>status</th><th>time</th><th>MLflow run</th></tr>
{''.join(rows)}
</table>
{''.join(summary)}
</body></html>
"""
    result.index.write_text(page, encoding="utf-8")
    return result.index
