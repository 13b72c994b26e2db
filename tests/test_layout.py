"""Only the layout owner (nnal.layout) spells a path inside an experiment folder; everyone else asks it."""

from __future__ import annotations

import ast
from pathlib import Path

from nnal.cache_layout import DONE_MARKER, NNUNET_FOLDERS, SPLIT_FILE
from nnal.layout import ANNOTATE, ANNOTATIONS, FILES, ROUND_FILES, Layout

SRC = Path(__file__).resolve().parents[1] / "src" / "nnal"
NAMES = {*FILES.values(), *ROUND_FILES.values(), ANNOTATIONS, ANNOTATE} - {FILES["lock"], ROUND_FILES["training_log"]}
# names that are not an experiment folder's, though spelled alike: the demo's combined table beside its experiments,
# and nnU-Net's own fingerprint file in the model folder an export writes
ALLOWED = {("demo.py", "results.csv"), ("export.py", "dataset_fingerprint.json")}


CACHE_NAMES = {*NNUNET_FOLDERS, DONE_MARKER, SPLIT_FILE}


def _spelled(node: ast.AST, names: set[str] = NAMES) -> str | None:
    """The experiment-folder name ``node`` spells as a path part, if any."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if node.value in names or (names is NAMES and node.value.startswith("round_")):
            return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str) and head.value.startswith("round_"):
            return head.value
    return None


def layout_offences(source: str, names: set[str] = NAMES) -> list[str]:
    """Path joins (``x / "state.json"``, ``x / f"round_{r:03d}"``) and globs (``x.glob("round_*")``) that spell an
    experiment folder's layout."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            name = _spelled(node.right, names)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args \
                and node.func.attr in {"glob", "rglob", "joinpath"}:
            name = _spelled(node.args[0], names)
        else:
            continue
        if name is not None:
            found.append(f"line {node.lineno}: {name}")
    return found


def test_no_module_but_the_layout_spells_an_experiment_folder_path():
    offenders = {}
    for path in SRC.rglob("*.py"):
        if path.name == "layout.py":
            continue
        found = [o for o in layout_offences(path.read_text()) if (path.name, o.split(": ")[1]) not in ALLOWED]
        if found:
            offenders[str(path.relative_to(SRC))] = found
    assert offenders == {}


def test_only_the_cache_layout_spells_a_path_in_nnunets_cache():
    offenders = {str(p.relative_to(SRC)): found for p in SRC.rglob("*.py")
                 if p.name != "cache_layout.py" and (found := layout_offences(p.read_text(), CACHE_NAMES))}
    assert offenders == {}


def test_the_check_catches_what_it_is_for():
    source = ("from pathlib import Path\n"
              "def f(root: Path, r: int):\n"
              "    a = root / 'state.json'\n"
              "    b = root / f'round_{r:03d}' / 'scores.npz'\n"
              "    c = list(root.glob('round_*'))\n"
              "    d = root / 'annotate'\n"
              "    e = root / 'other.txt'\n")
    assert sorted(o.split(": ")[1] for o in layout_offences(source)) == sorted(
        ["state.json", "scores.npz", "round_", "round_*", "annotate"])
    cache = "def g(root):\n    return root / 'preprocessed' / 'Dataset001' / 'splits_final.json'\n"
    assert [o.split(": ")[1] for o in layout_offences(cache, CACHE_NAMES)] == ["splits_final.json", "preprocessed"]


def test_the_layout_table_gives_every_path(tmp_path):
    layout = Layout(tmp_path)
    assert layout.state_file == tmp_path / "state.json"
    assert layout.checkpoint_file(3) == tmp_path / "round_003" / "checkpoint.pt"
    assert layout.annotation_file(1, "case_007") == tmp_path / "annotations" / "round_001" / "case_007.nii.gz"
    assert layout.annotate_dir(12) == tmp_path / "annotate" / "round_012"
    for r in (0, 2, 1000):
        layout.round_dir(r).mkdir()
        layout.annotate_dir(r).mkdir(parents=True)
    (tmp_path / "round_x").mkdir()
    (tmp_path / "round_004.bak").mkdir()
    assert layout.rounds() == [0, 2, 1000]
    assert [r for r, _ in layout.annotate_rounds()] == [0, 2, 1000]
