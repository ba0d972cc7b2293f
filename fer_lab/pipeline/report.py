"""The reviewer-facing HTML reports: the pipeline's results, the index pages that show them, and the
summaries notebooks leave for those pages.

The runner and the experiment sets both import this module, and it imports neither: the results it
renders are defined here.
"""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from fer_lab import tracking
from fer_lab._shared import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUMMARY_DIR_NAME = "report_summary"
STYLE = "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:4px 8px}"


@dataclass
class NotebookResult:
    """One executed notebook: where its copies are and how it went."""

    name: str
    notebook: Path
    html: Path | None
    ok: bool
    seconds: float
    run_id: str
    error: str = ""


@dataclass
class PipelineResult:
    """A whole pipeline run: its MLflow parent run, its report folder and each notebook's result."""

    parent_run_id: str
    report_dir: Path
    tracking_uri: str
    experiment: str
    notebooks: list[NotebookResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.notebooks)

    @property
    def index(self) -> Path:
        return self.report_dir / "index.html"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, the notebooks' paths relative to the report folder (see `from_dict`)."""
        notebooks = [{"name": nb.name, "notebook": str(nb.notebook.relative_to(self.report_dir)),
                      "html": str(nb.html.relative_to(self.report_dir)) if nb.html else "", "ok": nb.ok,
                      "seconds": nb.seconds, "run_id": nb.run_id, "error": nb.error} for nb in self.notebooks]
        return {"parent_run_id": self.parent_run_id, "tracking_uri": self.tracking_uri,
                "experiment": self.experiment, "notebooks": notebooks}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], report_dir: Path) -> PipelineResult:
        """The result `to_dict` described, its report folder now `report_dir`."""
        result = cls(values["parent_run_id"], report_dir, values["tracking_uri"], values["experiment"])
        for item in values["notebooks"]:
            html_copy = report_dir / item["html"] if item["html"] else None
            result.notebooks.append(NotebookResult(item["name"], report_dir / item["notebook"], html_copy, item["ok"],
                                                   item["seconds"], item["run_id"], item["error"]))
        return result


def summary_dir(work_dir: str | Path, pipeline_run_id: str = "") -> Path:
    """Where a pipeline's notebooks leave tables and figures for its report index: one folder per pipeline run.

    Notebooks name no run: theirs is the parent of their active MLflow run (`interactive` outside a pipeline),
    so two pipelines on the same dataset never mix their summaries.
    """
    return Path(work_dir) / SUMMARY_DIR_NAME / (pipeline_run_id or tracking.active_parent_run_id() or "interactive")


def write_summary_table(work_dir: str | Path, name: str, table: pd.DataFrame, title: str) -> Path:
    """Leave `table` as an HTML fragment for the report index.

    Args:
        work_dir: The pipeline's work folder.
        name: The fragment's file name; the index shows fragments sorted by name.
        table: The table.
        title: Its heading.

    Returns:
        The written fragment.
    """
    target = summary_dir(work_dir) / f"{name}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"<h2>{html.escape(title)}</h2>\n{table.to_html(index=False, border=0, float_format=_number)}\n", encoding="utf-8")
    return target


def _number(value: float) -> str:
    """Counts as integers (452, not 452.0000), other values to four significant digits."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:.4g}"


def write_summary_figure(work_dir: str | Path, name: str, fig: "Figure") -> Path:
    """Leave `fig` as a PNG for the report index; files sort by `name`."""
    target = summary_dir(work_dir) / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    return target


def _write_page(target: Path, title: str, body: str) -> Path:
    """Every report page: one head, one style."""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head><body>
{body}
</body></html>
"""
    write_atomic(target, page.encode("utf-8"))
    return target


def write_index(result: PipelineResult, summary_dir: Path) -> Path:
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
    body = f"""<h1>fer-lab pipeline report</h1>
<p>MLflow parent run <code>{result.parent_run_id}</code> in <code>{html.escape(result.tracking_uri)}</code>.
Status: <b>{'ok' if result.ok else 'FAILED'}</b>.</p>
<table><tr><th>notebook</th><th>status</th><th>time</th><th>MLflow run</th></tr>
{''.join(rows)}
</table>
{''.join(summary)}"""
    return _write_page(result.index, f"fer-lab report {result.report_dir.name}", body)


def write_experiment_index(report_dir: Path, name: str, description: str, variants: Mapping[str, PipelineResult],
                           training_runs: Mapping[str, str], comparison: PipelineResult | None) -> Path:
    """A small index.html linking each variant's pipeline report and the comparison report.

    Args:
        report_dir: The experiment's report folder; the page is its index.html.
        name: The experiment set's name.
        description: What question the set answers.
        variants: Each variant's pipeline result, by variant name.
        training_runs: Each variant's training run id, by variant name (missing: none).
        comparison: The 05_compare pipeline's result, None when it did not run.

    Returns:
        The written index.html.
    """
    rows = []
    for variant, pipeline in variants.items():
        link = os.path.relpath(pipeline.index, report_dir)
        status = "ok" if pipeline.ok else "FAILED"
        run = training_runs.get(variant, "(no training run)")
        rows.append(f'<tr><td><a href="{html.escape(link)}">{html.escape(variant)}</a></td>'
                    f"<td>{status}</td><td><code>{html.escape(run)}</code></td></tr>")
    compared = (f'<p><a href="{html.escape(os.path.relpath(comparison.index, report_dir))}">'
                f"Comparison report (05_compare)</a></p>" if comparison is not None
                else "<p>No comparison: fewer than two variants produced a training run.</p>")
    body = f"""<h1>Experiment set {html.escape(name)}</h1>
<p>{html.escape(description)}</p>
{compared}
<table><tr><th>variant</th><th>pipeline</th><th>training run</th></tr>
{''.join(rows)}
</table>"""
    return _write_page(report_dir / "index.html", f"fer-lab experiment {name}", body)
