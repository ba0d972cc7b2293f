"""From an analysed study to its answer: tables, statistics, figures and a written summary, saved tidy.

`summarize` is what both `07_study` and `fer-lab study` run after `study.analyze_study`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from fer_lab.apply import study_stats, study_tables
from fer_lab.apply.study import StudyResult


@dataclass
class StudySummary:
    """Everything a study's report shows."""

    result: StudyResult
    participants: pd.DataFrame  # participant x condition x segment, every measure (wide)
    long: pd.DataFrame  # the same, tidy
    conditions: pd.DataFrame  # condition x segment x measure: mean and CI across participants
    effects: pd.DataFrame  # study_stats.COLUMNS
    timelines: pd.DataFrame
    text: str
    align: str

    def profile(self, segment: str = study_tables.WHOLE) -> pd.DataFrame:
        """Share of face-time per expression and condition in one segment."""
        return study_tables.profile_table(self.conditions, self.result.labels, segment)

    def timelines_figure(self) -> Figure:
        """Probabilities over time per condition with confidence bands, aligned on `align`."""
        events = self.result.study.events
        if self.align and len(events):
            first = events[events["name"] == self.align]["start"].min()
            events = events.assign(start=events["start"] - first, end=events["end"] - first)
        return study_tables.timelines_figure(self.timelines, self.result.labels, events if len(events) else None)

    def profile_figure(self, segment: str = study_tables.WHOLE) -> Figure:
        """The expression profile of each condition as grouped bars."""
        figure = study_tables.profile_figure(self.profile(segment))
        figure.suptitle(f"share of face-time per expression, segment '{segment}'")
        return figure

    def save(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write the tables as CSV and Parquet, the statistics, the status and the summary; return the paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        tables = {"participants": self.participants, "measures_long": self.long, "conditions": self.conditions,
                  "effects": self.effects, "timelines": self.timelines, "recordings": self.result.status}
        for name, table in tables.items():
            for suffix in (".csv", ".parquet"):
                path = out_dir / f"{name}{suffix}"
                (table.to_csv(path, index=False) if suffix == ".csv" else table.to_parquet(path, index=False))
                written.append(path)
        (out_dir / "summary.txt").write_text(self.text + "\n")
        written.append(out_dir / "summary.txt")
        return written


def summarize(result: StudyResult, *, method: str = "auto", correction: str = "holm", reference: str = "",
              alpha: float = 0.05, align: str = "", smooth_seconds: float = 1.0) -> StudySummary:
    """Aggregate an analysed study and test its condition effects.

    Args:
        result: `study.analyze_study`'s result.
        method: `auto`, `wilcoxon` or `mixed` (see `study_stats`).
        correction: `holm`, `fdr_bh` or `bonferroni`, across the tested measures.
        reference: The baseline condition (default: the first in sorted order).
        alpha: Significance level after correction.
        align: Event the timelines are aligned on (empty: the recordings' start).
        smooth_seconds: Moving average for peaks and timelines.

    Returns:
        The tables, statistics, timelines and the written summary.
    """
    participants = study_tables.participant_table(result, smooth_seconds)
    long = study_tables.long_table(participants, result.labels)
    conditions = study_tables.condition_table(long)
    covariates = participants.drop_duplicates(["participant", "condition"])[
        ["participant", "condition", *result.study.covariates]]
    effects = study_stats.condition_effects(long, study_stats.tested_measures(result.labels), method=method,
                                            correction=correction, reference=reference, alpha=alpha,
                                            covariates=covariates)
    text = study_stats.summary_text(effects, correction, alpha)
    problems = result.problems
    if len(problems):
        text += f"\n{len(problems)} recording(s) left out: " + "; ".join(problems["reason"])
    timelines = study_tables.condition_timelines(result, align, smooth_seconds=smooth_seconds)
    return StudySummary(result, participants, long, conditions, effects, timelines, text, align)
