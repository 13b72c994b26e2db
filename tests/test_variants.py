"""Variants are first-class: an experiment's label is its strategy plus its non-default, result-changing options;
the report never pools two variants or two datasets (one section per dataset)."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from test_analysis import write_experiment

from nnal.analysis import build_report, learning_curves, load_results, penalty_matrix
from nnal.analysis.load import dataset_names, load_experiments
from nnal.errors import ConfigError, ReportError
from nnal.strategies import format_variant, get_strategy, variant_label

REPS = [(0, 0), (0, 1), (1, 0)]


def test_variant_label_defaults_non_defaults_and_memory_options():
    assert variant_label("usimf") == variant_label("usimf", {}) == "usimf"
    assert variant_label("usimf", {"eta": 1.0}) == variant_label("usimf", {"eta": 1}) == "usimf"  # the default
    assert variant_label("usimf", {"eta": 0.5}) == "usimf[eta=0.5]"
    assert variant_label("usimf", {"query_size": 1000, "query_mode": "uniform", "eta": 10.0}) == \
        "usimf[eta=10,query_mode=uniform,query_size=1000]"  # sorted keys, compact values
    assert variant_label("usimf", {"damping": 1e-7, "query_size": "elbow"}) == "usimf[damping=1e-07]"
    assert variant_label("meanstd", {"use_variance": True}) == "meanstd[use_variance=true]"
    assert variant_label("meanstd", {"use_variance": False}) == "meanstd"
    # chunk_elements only bounds memory: never part of the label, so it never splits a variant
    for name in ("coreset", "badge"):
        chunk = next(o for o in get_strategy(name).options if o.name == "chunk_elements")
        assert not chunk.affects_result
        assert variant_label(name, {"chunk_elements": 1234}) == name
    assert variant_label("coreset", {"chunk_elements": 7, "features": "pooled"}) == "coreset[features=pooled]"
    assert all(o.affects_result for o in get_strategy("usimf").options)
    with pytest.raises(ConfigError, match="no option 'etta'"):
        variant_label("usimf", {"etta": 0.5})
    with pytest.raises(ConfigError, match="eta"):
        variant_label("usimf", {"eta": -1.0})
    with pytest.raises(ConfigError, match="unknown 'nope'"):
        variant_label("nope")
    assert format_variant("plugin", {"b": 2.0, "a": "x", "c": 0.25}) == "plugin[a=x,b=2,c=0.25]"


def _variants(root, *, dataset: str = "/data/Toy", base: float = 0.0, tag: str = "") -> None:
    """usimf at its defaults, usimf with eta 0.5 (better by a margin that varies a little: significant) and
    random, three repetitions each; plus coreset twice with different chunk_elements (one variant)."""
    for k, (fold, seed) in enumerate(REPS):
        shift = base + 0.01 * k
        write_experiment(root, "random", fold, seed, [0.3, 0.4 + shift, 0.5 + shift], dataset=dataset, tag=tag)
        write_experiment(root, "usimf", fold, seed, [0.3, 0.5 + shift, 0.6 + shift], dataset=dataset, tag=tag)
        write_experiment(root, "usimf", fold, seed, [0.3, 0.55 + shift + 0.002 * k, 0.7 + shift + 0.003 * k],
                         dataset=dataset, tag=f"{tag}-eta", options={"eta": 0.5})
    for k, chunk in enumerate((1000, 5)):
        write_experiment(root, "coreset", 0, k, [0.3, 0.45 + base, 0.55 + base], dataset=dataset, tag=tag,
                         options={"chunk_elements": chunk})


def test_loaded_tables_carry_the_variant_and_the_statistics_split_by_it(tmp_path):
    _variants(tmp_path)
    results = load_results([tmp_path])
    assert {"strategy", "variant", "dataset_name"} <= set(results.columns)
    by_name = results.groupby("experiment")["variant"].first()
    assert by_name["toy-usimf-eta-f0-s0"] == "usimf[eta=0.5]" and by_name["toy-usimf-f0-s0"] == "usimf"
    assert set(results.loc[results["strategy"] == "coreset", "variant"]) == {"coreset"}  # chunk_elements: one
    curves = learning_curves(results).set_index(["variant", "round"])
    assert curves.loc[("usimf", 2), "dice_mean"] == pytest.approx(0.61)
    assert curves.loc[("usimf[eta=0.5]", 2), "dice_mean"] == pytest.approx(0.713)
    assert curves.loc[("usimf[eta=0.5]", 2), "strategy"] == "usimf" and curves.loc[("coreset", 2), "n"] == 2
    pm = penalty_matrix(results)
    assert list(pm.matrix.index) == ["coreset", "random", "usimf", "usimf[eta=0.5]"]
    assert pm.matrix.loc["usimf[eta=0.5]", "usimf"] == 1.0 and pm.matrix.loc["usimf", "usimf[eta=0.5]"] == 0.0


def test_report_keeps_variants_apart(tmp_path):
    _variants(tmp_path / "runs")
    index = build_report([tmp_path / "runs"], tmp_path / "out")
    tables = tmp_path / "out" / "tables"
    summary = pd.read_csv(tables / "summary.csv").set_index("variant")
    assert list(summary.index) == ["random", "coreset", "usimf", "usimf[eta=0.5]"]  # the paper's order
    assert summary.loc["usimf", "repetitions"] == summary.loc["usimf[eta=0.5]", "repetitions"] == 3
    assert summary.loc["coreset", "repetitions"] == 2
    assert summary.loc["usimf", "final Dice"].startswith("0.6100")
    assert summary.loc["usimf[eta=0.5]", "final Dice"].startswith("0.7130")
    assert {"usimf", "usimf[eta=0.5]"} <= set(pd.read_csv(tables / "dice_per_round.csv").columns)
    assert {"usimf", "usimf[eta=0.5]"} <= set(pd.read_csv(tables / "final_dice.csv")["variant"])
    matrix = pd.read_csv(tables / "penalty_matrix.csv", index_col=0)
    assert {"usimf", "usimf[eta=0.5]"} <= set(matrix.index) and matrix.loc["usimf[eta=0.5]", "usimf"] == 1.0
    page = index.read_text()
    assert "usimf[eta=0.5]" in page and len(re.findall(r'<h2 id="summary', page)) == 1  # one dataset, one section


def test_two_datasets_are_two_sections_and_never_pooled(tmp_path):
    _variants(tmp_path / "runs", dataset="/data/Toy")
    _variants(tmp_path / "runs", dataset="/other/place/Other/", base=0.2, tag="-other")
    index = build_report([tmp_path / "runs"], tmp_path / "out")
    page = index.read_text()
    assert re.search(r'<h2 id="summary_Other">Other: Summary</h2>', page)
    assert re.search(r'<h2 id="summary_Toy">Toy: Summary</h2>', page)
    tables, figures = tmp_path / "out" / "tables", tmp_path / "out" / "figures"
    assert not (tables / "summary.csv").exists() and not (figures / "learning_curves.png").exists()
    for name, final in (("Toy", "0.6100"), ("Other", "0.8100")):
        summary = pd.read_csv(tables / f"summary_{name}.csv").set_index("variant")
        assert summary.loc["usimf", "repetitions"] == 3 and summary.loc["usimf", "final Dice"].startswith(final)
        assert summary.loc["coreset", "repetitions"] == 2
        for fig in ("learning_curves", "class_curves", "penalty_matrix", "penalty_matrix_holm"):
            assert (figures / f"{fig}_{name}.png").is_file(), (fig, name)
        matrix = pd.read_csv(tables / f"penalty_matrix_{name}.csv", index_col=0)
        assert matrix.loc["usimf[eta=0.5]", "usimf"] == 1.0
        per_round = pd.read_csv(tables / f"dice_per_round_{name}.csv").set_index("round")
        assert per_round.loc[2, "random"].startswith("0.5100" if name == "Toy" else "0.7100")


def test_datasets_are_told_apart_by_folder_name_and_fingerprint(tmp_path):
    a, b = {"format": 1, "cases": ["c1"], "files": {}, "dataset_json": "x"}, {"format": 1, "cases": ["c2"],
                                                                             "files": {}, "dataset_json": "x"}
    write_experiment(tmp_path / "same", "random", 0, 0, [0.3, 0.4], dataset="/data/Toy", fingerprint=a)
    write_experiment(tmp_path / "same", "random", 0, 1, [0.3, 0.4], dataset="/copy/Toy", fingerprint=a)
    write_experiment(tmp_path / "same", "random", 1, 0, [0.3, 0.4], dataset="/data/Toy")  # none: joins it
    assert set(dataset_names(load_experiments([tmp_path / "same"])).values()) == {"Toy"}
    write_experiment(tmp_path / "two", "random", 0, 0, [0.3, 0.4], fingerprint=a)
    write_experiment(tmp_path / "two", "random", 0, 1, [0.3, 0.4], fingerprint=b)
    names = dataset_names(load_experiments([tmp_path / "two"]))
    assert len(set(names.values())) == 2 and all(re.fullmatch(r"Toy \([0-9a-f]{8}\)", n) for n in names.values())
    index = build_report([tmp_path / "two"], tmp_path / "out")
    assert len(re.findall(r'<h2 id="summary_Toy-[0-9a-f]{8}">', index.read_text())) == 2


def test_a_bad_option_in_a_config_is_a_report_error(tmp_path):
    folder = write_experiment(tmp_path, "usimf", 0, 0, [0.3, 0.4], options={"eta": "lots"})
    with pytest.raises(ReportError, match="config.yaml: strategy_options.eta"):
        load_results([folder])
    plugin = write_experiment(tmp_path, "my-plugin", 0, 0, [0.3, 0.4], options={"k": 3})  # unknown: all shown
    assert set(load_results([plugin])["variant"]) == {"my-plugin[k=3]"}
