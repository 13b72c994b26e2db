"""Selection strategies: pure numpy functions over per-slice score arrays, declared with their options."""

from nnal.strategies import diversity, uncertainty, usim  # noqa: F401  (importing registers the strategies)
from nnal.strategies.base import (
    MODEL_SCORE_KEYS,
    REGISTRY,
    ModelLike,
    Option,
    PoolView,
    Scores,
    Strategy,
    get_strategy,
    register,
)

__all__ = ["MODEL_SCORE_KEYS", "REGISTRY", "ModelLike", "Option", "PoolView", "Scores", "Strategy", "get_strategy",
           "register"]
