"""Selection strategies: pure functions over per-slice score arrays, registered by name."""

from nnal.strategies import diversity, uncertainty, usim  # noqa: F401  (importing registers the strategies)
from nnal.strategies.base import REGISTRY, Scores, Strategy, get_strategy, register

__all__ = ["REGISTRY", "Scores", "Strategy", "get_strategy", "register"]
