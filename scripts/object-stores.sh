#!/usr/bin/env bash
# Installs the local object-store servers the conformance suite runs against, idempotently:
#   moto[server] 5.2.5 (S3 API) into a Python venv at $HADAL_CACHE/moto-venv
#   azurite 3.35.0 (Azure Blob API) via npm into $HADAL_CACHE/azurite
# Nothing is started here: each Rust integration test starts its own server on 127.0.0.1, on a
# free port, and stops it by PID. Versions are pinned because the suite's expectations (409 vs 412,
# moto's buffer variable) were measured on exactly these (../shared/OBJECT-STORES.md).
set -euo pipefail

HADAL_CACHE="${HADAL_CACHE:-$HOME/.cache/hadal}"
MOTO_VERSION="5.2.5"
AZURITE_VERSION="3.35.0"
MOTO_VENV="$HADAL_CACHE/moto-venv"
AZURITE_DIR="$HADAL_CACHE/azurite"
mkdir -p "$HADAL_CACHE"

have_moto() {
  [ -x "$MOTO_VENV/bin/moto_server" ] &&
    "$MOTO_VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" \
      2>/dev/null
}

have_azurite() {
  [ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ] &&
    grep -q "\"version\": \"$AZURITE_VERSION\"" "$AZURITE_DIR/node_modules/azurite/package.json" \
      2>/dev/null
}

if have_moto; then
  echo "moto $MOTO_VERSION: present at $MOTO_VENV"
else
  echo "moto $MOTO_VERSION: installing into $MOTO_VENV"
  command -v python3 >/dev/null || { echo "python3 is required to install moto" >&2; exit 1; }
  rm -rf "$MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  have_moto || { echo "moto install did not produce $MOTO_VENV/bin/moto_server" >&2; exit 1; }
fi

if have_azurite; then
  echo "azurite $AZURITE_VERSION: present at $AZURITE_DIR"
else
  echo "azurite $AZURITE_VERSION: installing into $AZURITE_DIR"
  command -v npm >/dev/null || { echo "npm (Node.js) is required to install azurite" >&2; exit 1; }
  mkdir -p "$AZURITE_DIR"
  npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error \
    "azurite@$AZURITE_VERSION" >/dev/null
  have_azurite || { echo "azurite install did not produce azurite-blob" >&2; exit 1; }
fi
