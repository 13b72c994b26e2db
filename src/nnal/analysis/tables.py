"""Plain-text tables of results for the terminal."""

from __future__ import annotations

import pandas as pd


def mean_dice_per_round(results: pd.DataFrame) -> pd.DataFrame:
    """Mean foreground Dice over test cases, one row per (strategy, round)."""
    fg = results[results["label"] == "mean"]
    return (fg.groupby(["strategy", "round", "n_labeled"], as_index=False)["dice"].mean()
            .sort_values(["strategy", "round"]))


def dice_table(results: pd.DataFrame) -> str:
    """Rounds as rows, strategies as columns, mean foreground Dice in the cells."""
    table = mean_dice_per_round(results)
    wide = table.pivot_table(index=["round", "n_labeled"], columns="strategy", values="dice")
    wide.columns.name = None
    return "Mean foreground Dice per round\n" + wide.to_string(float_format=lambda v: f"{v:.4f}")
