#!/usr/bin/env bash
# Build the benchmark's own environment, /work/main/.bench-venv (git-ignored):
#   torch 2.14.1 + torchvision 0.29.1 (the reference program needs torchvision; the
#   package does not) and cifar-resnet installed editable, so that both programs run on
#   the same torch build.
# Idempotent: a second run only checks the versions and exits.
# Usage: bash bench/setup_env.sh            (VENV=/some/dir to put it elsewhere)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.bench-venv}"
TORCH_VERSION="${TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.29.1}"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "[setup_env] creating $VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip
fi

have() {
  # have MODULE VERSION: the module imports and its __version__ starts with VERSION
  "$PY" - "$1" "$2" <<'EOF' 2>/dev/null
import importlib, sys
mod = importlib.import_module(sys.argv[1])
sys.exit(0 if mod.__version__.split("+")[0] == sys.argv[2] else 1)
EOF
}

if have torch "$TORCH_VERSION" && have torchvision "$TORCHVISION_VERSION"; then
  echo "[setup_env] torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION already installed"
else
  echo "[setup_env] installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION" \
       "(several GB; takes minutes)"
  "$PY" -m pip install --progress-bar off \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# (pip show's output is captured first: grep -q under pipefail would SIGPIPE pip.)
editable="$("$PY" -m pip show cifar-resnet 2>/dev/null || true)"
if "$PY" -c "import cifar_resnet, tqdm, numpy, PIL" 2>/dev/null \
   && grep -qx "Editable project location: $ROOT" <<<"$editable"; then
  echo "[setup_env] cifar-resnet (editable, $ROOT) already installed"
else
  echo "[setup_env] installing cifar-resnet editable from $ROOT"
  # The installed torch satisfies cifar-resnet's torch>=2.4, so pip keeps it.
  "$PY" -m pip install --quiet --progress-bar off tqdm numpy pillow
  "$PY" -m pip install --quiet --progress-bar off -e "$ROOT"
fi

"$PY" - <<'EOF'
import torch, torchvision, cifar_resnet
print(f"[setup_env] ready: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"cifar_resnet from {cifar_resnet.__file__}")
EOF
