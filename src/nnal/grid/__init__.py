"""Experiment grids: one file, every combination an experiment, on Ray or in-process (``nnal grid``)."""

from nnal.grid.driver import run_grid
from nnal.grid.spec import GridExperiment, GridSpec, expand, load_grid

__all__ = ["GridExperiment", "GridSpec", "expand", "load_grid", "run_grid"]
