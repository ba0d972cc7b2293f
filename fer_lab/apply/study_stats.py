"""Condition effects with participants as the unit: paired Wilcoxon tests or a mixed model, corrected.

Frames of one person are not independent observations, so no test here ever sees frames: each
participant contributes one value per condition and segment (`study_tables.participant_table`).

- `wilcoxon` (the default when every participant saw every condition): each condition against the
  reference condition, a Wilcoxon signed-rank test on the participants' paired differences; effect
  size: the matched-pairs rank-biserial correlation (-1..1, +1: every participant higher in the
  other condition); CI: the t-interval of the mean paired difference.
- `mixed` (used when some participants miss a condition): a linear mixed model `value ~ condition
  (+ covariates)` with a random intercept per participant (statsmodels `mixedlm`, REML); effect:
  the condition coefficient over the total standard deviation (a standardised difference); CI and p
  from the coefficient's Wald interval and test.

The p-values of each family (one segment, one comparison, all tested measures) are corrected for
multiple comparisons: Holm (family-wise error, the default) or Benjamini-Hochberg (`fdr_bh`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from fer_lab.errors import ConfigError, DataError

METHODS = ("auto", "wilcoxon", "mixed")
CORRECTIONS = ("holm", "fdr_bh", "bonferroni")
COLUMNS = ["segment", "measure", "reference", "condition", "test", "participants", "mean_reference",
           "mean_condition", "difference", "ci_low", "ci_high", "effect", "effect_size", "p", "p_adjusted",
           "significant"]


def tested_measures(labels: Sequence[str]) -> list[str]:
    """The measures tested by default: the share of face-time in each expression and the valence."""
    return [*(f"share_{label}" for label in labels), "valence"]


def condition_effects(long: pd.DataFrame, measures: Sequence[str], *, method: str = "auto",
                      correction: str = "holm", reference: str = "", alpha: float = 0.05,
                      covariates: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each condition against the reference, per segment and measure, with corrected p-values.

    Args:
        long: participant, condition, segment, measure, value (`study_tables.long_table`).
        measures: The measures to test (one correction family per segment and comparison).
        method: `wilcoxon`, `mixed`, or `auto` (wilcoxon when every participant has every condition).
        correction: `holm`, `fdr_bh` or `bonferroni`, across the measures of a family.
        reference: The baseline condition (default: the first in sorted order).
        alpha: The significance level applied to the corrected p-values.
        covariates: participant, condition and numeric covariate columns, adjusted for in `mixed`.

    Returns:
        One row per segment x measure x condition (COLUMNS).
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if correction not in CORRECTIONS:
        raise ConfigError(f"correction must be one of {', '.join(CORRECTIONS)}, not {correction!r}")
    conditions = sorted(long["condition"].unique())
    if len(conditions) < 2:
        raise DataError(f"a condition effect needs at least two conditions, the study has {len(conditions)}")
    reference = reference or conditions[0]
    if reference not in conditions:
        raise ConfigError(f"reference condition {reference!r} is not in the study ({', '.join(conditions)})")
    rows = []
    for segment, part in long[long["measure"].isin(measures)].groupby("segment", sort=False):
        for measure in measures:
            values = part[part["measure"] == measure]
            if values.empty:
                continue
            complete = values.groupby("participant")["condition"].nunique().eq(len(conditions)).all()
            use = method if method != "auto" else ("wilcoxon" if complete else "mixed")
            for condition in conditions:
                if condition == reference:
                    continue
                test = _wilcoxon if use == "wilcoxon" else _mixed
                rows.append({"segment": segment, "measure": measure, "reference": reference,
                             "condition": condition, "test": use,
                             **test(values, reference, condition, covariates)})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_adjusted", "significant")])
    return _corrected(table, correction, alpha)[COLUMNS]


def _wilcoxon(values: pd.DataFrame, reference: str, condition: str, covariates: pd.DataFrame | None) -> dict:
    """Paired signed-rank test of `condition` minus `reference` over the participants who have both."""
    wide = values.pivot_table(index="participant", columns="condition", values="value", aggfunc="mean")
    pairs = wide[[reference, condition]].dropna() if {reference, condition} <= set(wide.columns) else wide.iloc[:0]
    differences = (pairs[condition] - pairs[reference]).to_numpy()
    result = {"participants": len(differences), "mean_reference": float(pairs[reference].mean()),
              "mean_condition": float(pairs[condition].mean()), "effect_size": "rank-biserial r"}
    if len(differences) < 2:
        return {**result, "difference": np.nan, "ci_low": np.nan, "ci_high": np.nan, "effect": np.nan, "p": np.nan}
    mean = float(differences.mean())
    spread = float(differences.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(differences) - 1) * spread / np.sqrt(len(differences)))
    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        effect, p = 0.0, 1.0  # no participant differs: nothing to test
    else:
        ranks = stats.rankdata(np.abs(nonzero))
        effect = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
        p = float(stats.wilcoxon(differences, zero_method="wilcox").pvalue)
    return {**result, "difference": mean, "ci_low": mean - half, "ci_high": mean + half, "effect": effect, "p": p}


def _mixed(values: pd.DataFrame, reference: str, condition: str, covariates: pd.DataFrame | None) -> dict:
    """A random-intercept model over `reference` and `condition` rows; the condition coefficient."""
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    data = values[values["condition"].isin([reference, condition])]
    data = data.groupby(["participant", "condition"], as_index=False)["value"].mean()
    extra: list[str] = []
    if covariates is not None:
        numeric = [c for c in covariates.columns if c not in ("participant", "condition")
                   and pd.api.types.is_numeric_dtype(covariates[c])]
        data = data.merge(covariates[["participant", "condition", *numeric]], on=["participant", "condition"],
                          how="left").dropna()
        extra = [c for c in numeric if data[c].nunique() > 1]
    data = data.assign(other=(data["condition"] == condition).astype(float))
    result = {"participants": int(data["participant"].nunique()),
              "mean_reference": float(data.loc[data["other"] == 0, "value"].mean()),
              "mean_condition": float(data.loc[data["other"] == 1, "value"].mean()),
              "effect_size": "standardised difference"}
    empty = {"difference": np.nan, "ci_low": np.nan, "ci_high": np.nan, "effect": np.nan, "p": np.nan}
    if data["other"].nunique() < 2 or data["participant"].nunique() < 3:
        return {**result, **empty}
    if data["value"].std() == 0:
        return {**result, "difference": 0.0, "ci_low": 0.0, "ci_high": 0.0, "effect": 0.0, "p": 1.0}
    formula = " + ".join(["value ~ other", *(f"Q('{c}')" for c in extra)])
    with warnings.catch_warnings():
        # A random intercept estimated at zero (participants alike) is a valid fit, not a failure.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            fit = smf.mixedlm(formula, data, groups=data["participant"]).fit(reml=True)
        except (np.linalg.LinAlgError, ValueError):
            return {**result, **empty}
    low, high = fit.conf_int().loc["other"]
    total_sd = float(np.sqrt(fit.scale + float(np.asarray(fit.cov_re).ravel()[0])))
    coefficient = float(fit.params["other"])
    return {**result, "difference": coefficient, "ci_low": float(low), "ci_high": float(high),
            "effect": coefficient / total_sd if total_sd > 0 else np.nan, "p": float(fit.pvalues["other"])}


def _corrected(table: pd.DataFrame, correction: str, alpha: float) -> pd.DataFrame:
    """`p_adjusted` and `significant`, correcting within each segment x comparison across its measures."""
    from statsmodels.stats.multitest import multipletests

    table = table.assign(p_adjusted=np.nan, significant=False)
    for _, family in table.groupby(["segment", "condition"], sort=False):
        tested = family[family["p"].notna()]
        if tested.empty:
            continue
        reject, adjusted, _, _ = multipletests(tested["p"].to_numpy(), alpha=alpha, method=correction)
        table.loc[tested.index, "p_adjusted"] = adjusted
        table.loc[tested.index, "significant"] = reject
    return table


def summary_text(effects: pd.DataFrame, correction: str = "holm", alpha: float = 0.05) -> str:
    """A few sentences: per segment, which measures differ between conditions after correction."""
    names = {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg", "bonferroni": "Bonferroni"}
    lines = []
    for (segment, condition), family in effects.groupby(["segment", "condition"], sort=False):
        reference = family["reference"].iloc[0]
        found = family[family["significant"]]
        head = (f"Segment '{segment}', {condition} vs {reference} ({family['test'].iloc[0]}, "
                f"{int(family['participants'].max())} participants, {names[correction]}-corrected over "
                f"{len(family)} measures at {alpha:g}): ")
        if found.empty:
            lines.append(head + "no significant difference.")
            continue
        parts = [f"{row.measure} {'higher' if row.difference > 0 else 'lower'} in {condition} "
                 f"({row.difference:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}], {row.effect_size} "
                 f"{row.effect:+.2f}, adjusted p={row.p_adjusted:.3g})" for row in found.itertuples(index=False)]
        rest = len(family) - len(found)
        lines.append(head + "; ".join(parts) + (f"; the other {rest} measures do not differ." if rest else "."))
    return "\n".join(lines)
