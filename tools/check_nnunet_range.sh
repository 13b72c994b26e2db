#!/usr/bin/env bash
# Real nnU-Net rounds at both ends of the nnunetv2 range that pyproject.toml allows: widen or move the range only
# after this passes on the new bound.
#
#   tools/check_nnunet_range.sh                  the lowest allowed (the >= bound) and the highest allowed release
#   tools/check_nnunet_range.sh 2.8.0 2.8.1      these versions
#   KEYWORDS=usimf tools/check_nnunet_range.sh   another selection (pytest -k) of tests/test_loop_integration.py
#
# Per version: a throwaway venv whose own site-packages hold only that nnunetv2 (pip --no-deps; its dependencies,
# torch included, come from the project's .venv, so pip never fetches another torch), with the source tree and
# .venv behind it on sys.path; then plan + preprocess + train + score + select on a few bundled Hippocampus cases.
# (`venv --system-site-packages` would not do: from a venv's python it exposes the base interpreter's packages,
# not the venv's.) Needs `make setup` and PyPI; about 2-4 minutes per version on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${VENV:-.venv}/bin/python
KEYWORDS=${KEYWORDS:-write_every_artifact or test_cases_never_enter or usimf}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

requirement() {  # the nnunetv2 requirement of pyproject.toml, e.g. nnunetv2<2.9,>=2.8.0
    "$PY" - <<'EOF'
import tomllib
from packaging.requirements import Requirement

deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(str(r) for r in map(Requirement, deps) if r.name == "nnunetv2"))
EOF
}

lowest() {  # the version of the requirement's >= bound
    "$PY" -c "import sys; from packaging.requirements import Requirement as R; \
print(next(s.version for s in R(sys.argv[1]).specifier if s.operator == '>='))" "$1"
}

check() {  # $1: a pip requirement for nnunetv2 (nnunetv2==2.8.0, or the range itself for its highest release)
    local venv="$WORK/venv" site
    rm -rf "$venv"
    "$PY" -m venv --without-pip "$venv"
    "$PY" -m pip --python "$venv/bin/python" install -q --no-deps "$1"
    # only now, so that pip does not find .venv's nnunetv2 installed already; addsitedir reads .venv's own .pth
    # files as its python does (setuptools' distutils shim among them)
    site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    printf '%s\n' "$REPO/src" "import site; site.addsitedir('$(
        "$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")')" > "$site/zz-nnal-project.pth"
    local found
    found=$("$venv/bin/python" -c "import importlib.metadata as m, nnunetv2; \
print(m.version('nnunetv2'), nnunetv2.__file__)")
    case "$found" in
        *"$site"*) ;;
        *) echo "nnunetv2 came from outside the throwaway venv: $found" >&2; return 1 ;;
    esac
    echo "== nnunetv2 ${found%% *} ($1)"
    (cd "$REPO" && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_loop_integration.py -k "$KEYWORDS")
}

REQ=$(requirement)
if [ $# -gt 0 ]; then
    SPECS=()
    for v in "$@"; do SPECS+=("nnunetv2==$v"); done
else
    SPECS=("nnunetv2==$(lowest "$REQ")" "$REQ")
fi
echo "pyproject.toml: $REQ"
failed=0
for spec in "${SPECS[@]}"; do
    check "$spec" || { echo "FAILED: $spec" >&2; failed=1; }
done
exit $failed
