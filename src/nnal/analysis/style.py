"""The report's fixed order and colours of strategies and variants, shared by every figure and table."""

from __future__ import annotations

from collections.abc import Iterable

from matplotlib import colormaps

from nnal.analysis.load import FULL

# the paper's strategy order; unknown names follow alphabetically
# the newer baselines last: the colours of the paper's nine stay as committed reports drew them
KNOWN_ORDER = ["random", "entropy", "meanstd", "bald", "coreset", "badge", "stochastic-batches", "usimc", "usimf",
               "random-fg", "clasp-pe"]
_PALETTE = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#d62728", "#17becf",
            "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]


def _base(name: str) -> str:
    """The strategy of a variant label (``usimf[eta=0.5]`` -> ``usimf``, see nnal.strategies.format_variant)."""
    return name.partition("[")[0]


def order_strategies(strategies: Iterable[str]) -> list[str]:
    """Strategies or variants in the paper's order of their strategy, unknown strategies after them alphabetically,
    ``full`` last; the variants of one strategy together, its default (the bare name) first."""
    def key(name: str) -> tuple[int, str, int, str]:
        base = _base(name)
        rank = KNOWN_ORDER.index(base) if base in KNOWN_ORDER else len(KNOWN_ORDER) + (base == FULL)
        return rank, base, name != base, name

    return sorted(set(strategies), key=key)


def strategy_colors(strategies: Iterable[str]) -> dict[str, str]:
    """A fixed colour per strategy: known names at their defaults keep theirs in every report, ``full`` is black;
    other strategies and variants take the remaining colours in order (tab20 after the palette)."""
    fixed = set(_PALETTE[: len(KNOWN_ORDER)]) | {"#000000"}
    spare = _PALETTE[len(KNOWN_ORDER):] + [c for c in (_hex(rgb) for rgb in colormaps["tab20"].colors)
                                           if c not in fixed]
    colors, k = {}, 0
    for s in order_strategies(strategies):
        if s == FULL:
            colors[s] = "#000000"
        elif s in KNOWN_ORDER:
            colors[s] = _PALETTE[KNOWN_ORDER.index(s)]
        else:
            colors[s] = spare[k % len(spare)]  # past 26 variants colours repeat; the legend still names each line
            k += 1
    return colors


def _hex(rgb: tuple[float, ...]) -> str:
    return "#" + "".join(f"{round(255 * v):02x}" for v in rgb[:3])
