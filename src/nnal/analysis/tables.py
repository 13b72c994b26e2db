"""Plain-text tables of results for the terminal."""

from __future__ import annotations

import pandas as pd

from nnal.analysis.load import VARIANT, with_variants


def mean_dice_per_round(results: pd.DataFrame) -> pd.DataFrame:
    """Mean foreground Dice over test cases, one row per (variant, round); a table without a ``variant`` column
    (a results.csv as written) reads as every strategy at its defaults."""
    fg = with_variants(results[results["label"] == "mean"])
    return (fg.groupby([VARIANT, "round", "n_labeled"], as_index=False)["dice"].mean()
            .sort_values([VARIANT, "round"]))


def dice_table(results: pd.DataFrame) -> str:
    """Rounds as rows, variants as columns, mean foreground Dice in the cells."""
    table = mean_dice_per_round(results)
    wide = table.pivot_table(index=["round", "n_labeled"], columns=VARIANT, values="dice")
    wide.columns.name = None
    return "Mean foreground Dice per round\n" + wide.to_string(float_format=lambda v: f"{v:.4f}")
