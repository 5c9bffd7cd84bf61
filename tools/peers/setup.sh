#!/usr/bin/env bash
# Make the peers' own virtualenvs for tools/bench_index.py under bench-data/venvs/ (git-ignored).
# diskannpy 0.7.0 needs numpy 1.25 (with numpy 2.x it runs but returns wrong neighbours).
# Usage (from the repository root): bash tools/peers/setup.sh [PYTHON]
set -euo pipefail
PY=${1:-python3.11}
VENVS=bench-data/venvs
mkdir -p "$VENVS"
[ -x "$VENVS/diskann/bin/python" ] || "$PY" -m venv "$VENVS/diskann"
"$VENVS/diskann/bin/pip" install -q "numpy==1.25.*" "diskannpy==0.7.0"
[ -x "$VENVS/lancedb/bin/python" ] || "$PY" -m venv "$VENVS/lancedb"
"$VENVS/lancedb/bin/pip" install -q "lancedb==0.40.0" "pyarrow==26.0.1" numpy
"$VENVS/diskann/bin/python" -c "import diskannpy, numpy; print('diskann venv: numpy', numpy.__version__)"
"$VENVS/lancedb/bin/python" -c "import lancedb, pyarrow; print('lancedb venv:', lancedb.__version__, pyarrow.__version__)"
