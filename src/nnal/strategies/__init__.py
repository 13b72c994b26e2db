"""Selection strategies: pure numpy functions over per-slice score arrays, declared with their options."""

# importing the modules registers their strategies
from nnal.strategies import baselines, clasp, diversity, uncertainty, usim  # noqa: F401
from nnal.strategies.base import (
    MODEL_SCORE_KEYS,
    REGISTRY,
    ModelLike,
    Option,
    PoolView,
    Scores,
    Strategy,
    format_variant,
    get_strategy,
    register,
    variant_label,
)

__all__ = ["MODEL_SCORE_KEYS", "REGISTRY", "ModelLike", "Option", "PoolView", "Scores", "Strategy", "format_variant",
           "get_strategy", "register", "variant_label"]
