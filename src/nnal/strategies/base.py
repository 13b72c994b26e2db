"""Strategy declaration, its options, the model seam a preparation step talks to, and the registry.

A strategy is a pure function ``select(scores, budget, rng, *, options) -> ids``: numpy arrays in, slice ids out,
randomness only from the given Generator, no torch, no I/O. ``scores`` maps names to arrays aligned with
``scores["ids"]`` (the unlabeled pool, in scoring order).

The scoring phase fills ``scores`` in two steps:

1. the model's one batched pass over the unlabeled pool gives the keys in ``needs`` (see ``MODEL_SCORE_KEYS``):

   - ``entropy``        (N,)   mean pixel entropy of the softmax, dropout off
   - ``class_entropy``  (N, C) per foreground class c, the mean of H(p_i) p_{i,c}, dropout off (ClaSP PE)
   - ``bald``           (N,)   mean pixel mutual information over T MC-dropout passes
   - ``std``            (N,)   mean over classes and pixels of the std across MC passes
   - ``variance``       (N,)   same with the variance (the paper's code behaviour)
   - ``class_uncertainty`` (N, C) per-class mean MC std, foreground classes only
   - ``class_variance`` (N, C) per-class mean MC variance, foreground classes only
   - ``features``       (N, D) the bottleneck map (last encoder stage) on a fixed grid of patch / stride cells,
                        padding cells zeroed, flattened; a fixed-seed Gaussian projection to 10,000 dims when longer
   - ``pooled_features`` (N, F) the bottleneck map globally averaged
   - ``head_embeddings`` (N, E) closed-form gradients of the 1x1 segmentation head,
                        (softmax - onehot(pseudo label)) x the head's input

2. a strategy's own ``prepare(model, pool, scores, rng, *, options)`` step adds what it alone reads (labeled-set
   features, BADGE's last-conv gradient embeddings, USIM's query set and gradient embeddings, ...), named in
   ``provides``. It talks to the model only through :class:`ModelLike`, numpy in and out.

Options are declared once per strategy (:class:`Option`); ``select`` and ``prepare`` take them keyword-only,
each the ones its signature names. Unknown options, wrong types and values are :class:`ConfigError` lines.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError

from nnal.errors import ConfigError
from nnal.strategies.checks import check_budget, check_scores

Scores = Mapping[str, np.ndarray]
SelectFn = Callable[..., np.ndarray]
PrepareFn = Callable[..., dict[str, np.ndarray]]
CaseSlices = list[tuple[str, np.ndarray]]

# the model's score keys, by pass: the MC-dropout passes' and the dropout-free pass's (the backend computes them)
MC_KEYS = frozenset({"bald", "std", "variance", "class_uncertainty", "class_variance"})
DETERMINISTIC_KEYS = frozenset({"entropy", "class_entropy", "features", "pooled_features", "head_embeddings"})
MODEL_SCORE_KEYS = MC_KEYS | DETERMINISTIC_KEYS
_POSITIONAL = {"select": ("scores", "budget", "rng"), "prepare": ("model", "pool", "scores", "rng")}


class ModelLike(Protocol):
    """One round's model, as a preparation step sees it (``nnal.backend.model.Model`` or a test double)."""

    def scores(self, cases: CaseSlices, keys: set[str], *, mc_passes: int, batch_size: int, seed: int,
               on_batch: Callable[[int], None] | None = None) -> dict[str, np.ndarray]: ...

    def parameter_count(self, group: str) -> int: ...

    def gradient_embeddings(self, cases: CaseSlices, *, group: str, index: np.ndarray | None, batch_size: int,
                            loss: str = "log-likelihood", on_batch: Callable[[int], None] | None = None
                            ) -> np.ndarray: ...

    def fisher(self, cases: CaseSlices, counts: np.ndarray, *, group: str, batch_size: int,
               loss: str = "log-likelihood") -> np.ndarray: ...


@dataclass(frozen=True)
class PoolView:
    """What the scoring phase knows of this round's pool: the unlabeled slices to score and the labeled set."""

    ids: np.ndarray  # unlabeled slice ids, sorted (case, slice order)
    cases: CaseSlices  # the same slices as ``[(case, slice indices)]``
    labeled_cases: CaseSlices
    labeled_class_voxels: np.ndarray  # (C,) annotated voxels per foreground class in the labeled set
    mc_passes: int
    batch_size: int
    seed: int  # the scoring phase's seed: MC-dropout masks and the prepare step's Generator
    budget: int  # slices this round selects
    on_batch: Callable[[int], None] | None = None
    # (N, C) voxels per foreground class of each unlabeled slice, aligned with ``ids``: the oracle's ground truth,
    # known only in simulation (annotation mode has zeros here), read only by strategies with reads_ground_truth
    class_voxels: np.ndarray | None = None
    round: int = 0  # the round this scoring phase belongs to (1 = the first selection after round 0)
    rounds: int = 0  # rounds of the experiment (config.rounds): schedules over the rounds read it

    def cases_of(self, positions: np.ndarray) -> CaseSlices:
        """The ``[(case, slices)]`` list of the pool positions ``positions`` (sorted, unique)."""
        keep = set(np.asarray(positions).tolist())
        out, start = [], 0
        for case, slices in self.cases:
            mask = np.fromiter((start + k in keep for k in range(len(slices))), bool, len(slices))
            if mask.any():
                out.append((case, np.asarray(slices)[mask]))
            start += len(slices)
        return out


@dataclass(frozen=True)
class Option:
    """One strategy option: name, type (a typing annotation, checked strictly), default and one line of help.

    ``affects_result=False`` marks a knob that changes only how a result is computed (memory, speed), never which
    slices are selected: it is left out of the experiment's variant label (:func:`variant_label`).
    """

    name: str
    kind: Any
    default: Any
    help: str
    affects_result: bool = True

    def check(self, strategy: str, value: Any) -> Any:
        try:
            return _adapter(self.kind).validate_python(value)
        except ValidationError as err:
            message = err.errors(include_url=False)[0]["msg"]
            raise ConfigError(f"strategy_options.{self.name}: {message} for {strategy} "
                              f"(expected {self.type_text}), got {value!r}") from None

    @property
    def type_text(self) -> str:
        return describe_type(self.kind)


@dataclass(frozen=True)
class Strategy:
    """A named selection rule: its declared options, the model scores it reads and its optional prepare step."""

    name: str
    select: SelectFn
    needs: tuple[str, ...] = ()  # model score keys of the unlabeled pool (MODEL_SCORE_KEYS)
    options: tuple[Option, ...] = ()
    prepare: PrepareFn | None = None
    provides: tuple[str, ...] = ()  # keys the prepare step adds to ``scores``
    score_key: str | None = None  # the score recorded next to each selected id
    help: str = ""
    option_needs: Callable[..., tuple[str, ...]] | None = None  # extra model keys some option values read
    # refuses option values that make no sense together (ConfigError); called with every option, defaults filled in
    check_together: Callable[[Mapping[str, Any]], None] | None = None
    # reads the oracle's labels of unlabeled slices (PoolView.class_voxels): a simulation baseline, refused when a
    # person is the oracle
    reads_ground_truth: bool = False
    # dropout p of the MC passes when the config leaves it unset (the paper's code scored BALD at 0.01, the others 0.1)
    mc_dropout_p: float = 0.1
    # labels the whole pool at once (the full-label reference): one round, its own schedule, no selection rounds
    single_round: bool = False
    _routes: dict[str, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.needs) - MODEL_SCORE_KEYS
        if unknown:
            raise TypeError(f"strategy {self.name!r}: needs {sorted(unknown)} are not model scores")
        declared = {o.name for o in self.options}
        routes = {"select": _keyword_only(self.select, "select", self.name)}
        if self.prepare is not None:
            routes["prepare"] = _keyword_only(self.prepare, "prepare", self.name)
        accepted = {name for names in routes.values() for name in names}
        if accepted != declared:
            raise TypeError(f"strategy {self.name!r}: declared options {sorted(declared)} differ from the keyword-only "
                            f"parameters of its functions {sorted(accepted)}")
        self._routes.update(routes)

    @property
    def defaults(self) -> dict[str, Any]:
        return {o.name: o.default for o in self.options}

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The given options with their values checked (defaults are not filled in); ConfigError otherwise."""
        if not isinstance(options, Mapping):
            raise ConfigError(f"strategy_options: must be a mapping of option names to values, got {options!r}")
        by_name = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(by_name))
        if unknown:
            known = ", ".join(sorted(by_name)) or "none"
            raise ConfigError(f"strategy_options: {self.name} has no option {', '.join(map(repr, unknown))}; "
                              f"known: {known}")
        checked = {key: by_name[key].check(self.name, value) for key, value in options.items()}
        if self.check_together is not None:
            self.check_together({**self.defaults, **checked})
        return checked

    def resolve(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option: the checked given values over the defaults."""
        return {**self.defaults, **self.check_options(options)}

    def needs_for(self, options: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """The model score keys read under ``options``: ``needs`` plus what ``option_needs`` adds."""
        if self.option_needs is None:
            return self.needs
        extra = tuple(self.option_needs(**self.resolve(options or {})))
        return self.needs + tuple(key for key in extra if key not in self.needs)

    def _for(self, step: str, options: Mapping[str, Any]) -> dict[str, Any]:
        resolved = self.resolve(options)
        return {name: resolved[name] for name in self._routes[step]}

    def score(self, model: ModelLike, pool: PoolView, options: Mapping[str, Any] | None = None
              ) -> dict[str, np.ndarray]:
        """The scoring phase: the model's pass over the unlabeled pool, then the strategy's prepare step."""
        options = options or {}
        scores: dict[str, np.ndarray] = {"ids": pool.ids}
        keys = set(self.needs_for(options))
        if keys:
            scores.update(model.scores(pool.cases, keys, mc_passes=pool.mc_passes, batch_size=pool.batch_size,
                                       seed=pool.seed, on_batch=pool.on_batch))
        if self.prepare is not None:
            rng = np.random.default_rng(pool.seed)
            scores.update(self.prepare(model, pool, scores, rng, **self._for("prepare", options)))
        return scores

    def __call__(self, scores: Scores, budget: int, rng: np.random.Generator,
                 options: Mapping[str, Any] | None = None) -> np.ndarray:
        """Select ``budget`` ids (capped at the pool) from ``scores`` under ``options``."""
        options = options or {}
        ids = check_scores(scores, self.needs_for(options) + self.provides)
        budget = check_budget(budget, len(ids))
        if budget == 0:
            return np.empty(0, dtype=np.int64)
        chosen = np.asarray(self.select(scores, budget, rng, **self._for("select", options)), dtype=np.int64)
        if len(chosen) != budget or len(np.unique(chosen)) != budget or not np.isin(chosen, ids).all():
            raise RuntimeError(f"strategy {self.name!r} returned an invalid selection")
        return chosen

    def describe(self) -> str:
        """Name, help and one line per option (``nnal strategies``)."""
        lines = [f"{self.name}: {self.help}" if self.help else self.name]
        for o in sorted(self.options, key=lambda o: o.name):
            lines.append(f"    {o.name} = {o.default!r}  ({o.type_text})  {o.help}")
        return "\n".join(lines)


def _keyword_only(fn: Callable, step: str, strategy: str) -> tuple[str, ...]:
    """The option names ``fn`` takes keyword-only; its positional parameters must be the step's, no **kwargs."""
    params = list(inspect.signature(fn).parameters.values())
    positional = tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    if positional != _POSITIONAL[step] or any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        raise TypeError(f"strategy {strategy!r}: {step} must be ({', '.join(_POSITIONAL[step])}, *, options)")
    return tuple(p.name for p in params if p.kind == p.KEYWORD_ONLY)


_ADAPTERS: dict[Any, TypeAdapter] = {}


def _adapter(kind: Any) -> TypeAdapter:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = TypeAdapter(kind, config=ConfigDict(strict=True))
    return _ADAPTERS[kind]


def describe_type(kind: Any) -> str:
    """A short human reading of an option's annotation: ``float >= 0``, ``weighted|uniform``, ``int or 'elbow'``."""
    origin = typing.get_origin(kind)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(kind)
        bounds = []
        for m in meta:
            for item in getattr(m, "metadata", [m]):
                for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    if getattr(item, attr, None) is not None:
                        bounds.append(f"{sign} {getattr(item, attr)}")
        return " ".join([describe_type(base), *bounds])
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(kind))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(describe_type(a) for a in typing.get_args(kind))
    if kind is type(None):
        return "null"
    return getattr(kind, "__name__", str(kind))


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add a strategy to the registry under its name."""
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is already registered")
    REGISTRY[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """Look a strategy up by name; the ConfigError lists the known names."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"strategy: unknown {name!r}; known: {known}") from None


def format_variant(strategy_name: str, options: Mapping[str, Any]) -> str:
    """``name`` without options, else ``name[k=v,k2=v2]`` with the keys sorted and the values written compactly
    (0.5, 10, 1e-06, uniform, true). No checking: :func:`variant_label` chooses which options to show."""
    if not options:
        return strategy_name
    return f"{strategy_name}[{','.join(f'{k}={_compact(options[k])}' for k in sorted(options))}]"


def _compact(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # 10.0 and 10 are one setting; repr keeps every digit, so two different values never print alike
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if value is None:
        return "null"
    return str(value)


def variant_label(strategy_name: str, options: Mapping[str, Any] | None = None) -> str:
    """An experiment's label: the strategy plus the options that change its result and differ from their
    defaults, e.g. ``usimf``, ``usimf[eta=0.5]``, ``usimf[eta=10,query_mode=uniform]``.

    Options are checked first (ConfigError as in a config); options declared ``affects_result=False`` (memory
    knobs such as ``chunk_elements``) never appear, so experiments that differ only in them are one variant.
    """
    strategy = get_strategy(strategy_name)
    checked = strategy.check_options(options or {})
    by_name = {o.name: o for o in strategy.options}
    shown = {k: v for k, v in checked.items() if by_name[k].affects_result and not _same(v, by_name[k].default)}
    return format_variant(strategy.name, shown)


def _same(value: Any, default: Any) -> bool:
    """Equal as settings: 1 and 1.0 are, True and 1 are not (a bool is never a number here)."""
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    return value == default
