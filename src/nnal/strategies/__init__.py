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
    format_variant,
    get_strategy,
    register,
    variant_label,
)

__all__ = ["MODEL_SCORE_KEYS", "REGISTRY", "ModelLike", "Option", "PoolView", "Scores", "Strategy", "format_variant",
           "get_strategy", "register", "variant_label"]
