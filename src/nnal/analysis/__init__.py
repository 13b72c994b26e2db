"""Evaluation and reporting over nnal experiment folders: tidy tables, statistics, figures, an HTML report."""

from nnal.analysis.admission import admit
from nnal.analysis.load import (
    ReportError,
    batch_uncertainty,
    find_experiments,
    labeled_progress,
    load_experiment,
    load_experiments,
    load_results,
    load_selections,
)
from nnal.analysis.pairwise import holm, paired_differences, paired_test, penalty_matrix
from nnal.analysis.panels import embed_2d, plot_correlations, plot_embedding, plot_segmentations
from nnal.analysis.power import detectable_effect, paired_power, power_table, repetitions_needed
from nnal.analysis.report import ReportExtras, SegmentationExample, build_report
from nnal.analysis.savings import label_savings, savings_lines
from nnal.analysis.stats import (
    aubc,
    aubc_table,
    correlation,
    fg_efficiency,
    final_dice,
    learning_curves,
    reference_mismatch,
)
from nnal.analysis.verdict import report_verdict, verdict, verdict_lines

__all__ = [
    "ReportError", "ReportExtras", "SegmentationExample", "admit", "aubc", "aubc_table", "batch_uncertainty",
    "build_report", "correlation", "detectable_effect", "embed_2d", "fg_efficiency", "final_dice", "find_experiments",
    "holm", "label_savings", "labeled_progress", "learning_curves", "load_experiment", "load_experiments",
    "load_results", "load_selections", "paired_differences", "paired_power", "paired_test", "penalty_matrix",
    "plot_correlations", "plot_embedding", "plot_segmentations", "power_table", "reference_mismatch",
    "repetitions_needed", "report_verdict", "savings_lines", "verdict", "verdict_lines",
]
