#!/usr/bin/env bash
# unitkit's two entry points on a fresh machine:
#   ./dev.sh quickstart [unitkit run options]   install, then train the quickstart recipe
#   ./dev.sh test [pytest options]              install, then run the test suite
# The virtual environment lives outside the clone, keyed on the dependency files, so it is built once and
# reused by every clone and by CI (override its location with UNITKIT_VENV).
set -euo pipefail
cd "$(dirname "$0")"

deps_key=$( (cat pyproject.toml requirements-dev.txt; cat plugins/*/pyproject.toml 2>/dev/null || true) | sha256sum | cut -c1-16)
venv=${UNITKIT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/unitkit/venv-$deps_key}

if [ ! -x "$venv/bin/unitkit-ready" ]; then
    echo "dev.sh: building the environment in $venv (once per dependency change)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r requirements-dev.txt
    printf '#!/bin/sh\n' > "$venv/bin/unitkit-ready" && chmod +x "$venv/bin/unitkit-ready"
fi
# Editable installs point at one clone: re-point them (no network, a few seconds) when another clone used the venv.
if [ "$(cat "$venv/unitkit-clone" 2>/dev/null)" != "$PWD" ]; then
    "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e .
    for plugin in plugins/*/; do
        if [ -f "$plugin/pyproject.toml" ]; then
            "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$plugin"
        fi
    done
    echo "$PWD" > "$venv/unitkit-clone"
fi

command=${1:-help}
shift || true
case "$command" in
    quickstart) exec "$venv/bin/unitkit" run quickstart "$@" ;;
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    lint) "$venv/bin/ruff" check . && exec "$venv/bin/ruff" format --check . ;;
    shell) exec "$SHELL" -c "source '$venv/bin/activate' && exec '$SHELL'" ;;
    *) echo "usage: ./dev.sh quickstart|test|lint|shell [args]" >&2; exit 2 ;;
esac
