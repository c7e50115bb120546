# shellcheck shell=bash
# Sourced by scripts/demo and scripts/test: one virtualenv per use, reused while it is up to
# date and rebuilt when it is stale.
#
# A virtualenv is stale when what it was built from changed: pyproject.toml (dependencies,
# extras), the Python that made it, the pip arguments, or the checkout's path (a virtualenv's
# scripts hold absolute paths). A stale one is deleted and built again from scratch, as on a
# clean clone. A regular (non-editable) install also holds a copy of the package's own files
# (yibu_middleware/, integrations/, yibu_middleware.pth): when only those changed, the checkout
# alone is reinstalled (pip install --no-deps --force-reinstall .) and the dependencies kept.
# An editable install reads the checkout directly, so its source files are not part of its key.
#
# What a virtualenv was built from is written to <venv>/yibu-venv-stamp once its install has
# finished, so an install cut short is done again on the next run (a rebuild starts by deleting
# the virtualenv, stamp and all; a reinstall of the checkout first drops the sources' line).
#
# FRESH_VENVS=1 rebuilds every virtualenv anyway (to pick up new releases of the dependencies).
# PYTHON names the interpreter to build them with (default python3).

: "${PYTHON:=python3}"

# The inputs of a virtualenv, one "name=value" line each; "sources" only for regular installs.
# Python does the hashing: it is needed anyway, and sha256sum is not on every machine.
_venv_key() {
    local editable=$1
    shift
    "$PYTHON" - "$editable" "$@" <<'EOF'
import hashlib
import os
import sys
from pathlib import Path

editable, pip_args = sys.argv[1] == "1", sys.argv[2:]
print(f"python={sys.version.split()[0]} {os.path.realpath(sys.executable)}")
print("pyproject=" + hashlib.sha256(Path("pyproject.toml").read_bytes()).hexdigest())
print("pip-args=" + " ".join(pip_args))
print("checkout=" + os.getcwd())
if not editable:
    # What the wheel is built from (see pyproject's [tool.hatch.build]); caches left out.
    files = [Path("yibu_middleware.pth")]
    for top in ("yibu_middleware", "integrations"):
        files += (path for path in Path(top).rglob("*") if path.is_file() and "__pycache__" not in path.parts)
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    print("sources=" + digest.hexdigest())
EOF
}

# ensure_venv DIR PIP_ARGS...: make DIR a virtualenv with `pip install PIP_ARGS` done in it,
# reusing it when it is up to date. Says in one line per step what it does and why.
ensure_venv() {
    local dir=$1
    shift
    local stamp="$dir/yibu-venv-stamp" editable=0 arg
    for arg in "$@"; do
        if [ "$arg" = "-e" ] || [ "$arg" = "--editable" ]; then editable=1; fi
    done
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: $PYTHON is not Python 3.11 or newer; name one with PYTHON=python3.12 $0" >&2
        return 1
    fi

    local want have="" changed=""
    want=$(_venv_key "$editable" "$@")
    if [ -f "$stamp" ] && "$dir/bin/python" -c '' 2>/dev/null; then
        have=$(cat "$stamp")
    fi
    if [ "${FRESH_VENVS:-0}" != 0 ]; then
        changed="FRESH_VENVS is set"
    elif [ -z "$have" ]; then
        changed="no finished install in it yet"
    else
        # The first input that differs (other than the sources) names the reason to rebuild.
        changed=$(diff <(grep -v '^sources=' <<<"$have") <(grep -v '^sources=' <<<"$want") |
            sed -n 's/^> \([a-z-]*\)=.*/\1 changed/p' | head -n 1) || true
    fi

    if [ -n "$changed" ]; then
        echo "== $dir: building it ($changed): python -m venv, then pip install $*"
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
        "$dir/bin/python" -m pip install --quiet --upgrade pip
        "$dir/bin/python" -m pip install --quiet "$@"
    elif [ "$have" != "$want" ]; then
        echo "== $dir: dependencies up to date; the checkout's files changed, reinstalling it alone"
        # Until the reinstall finishes, the stamp vouches for the dependencies only.
        grep -v '^sources=' <<<"$want" >"$stamp"
        "$dir/bin/python" -m pip install --quiet --no-deps --force-reinstall .
    else
        local same="pyproject.toml, Python and sources"
        if [ "$editable" = 1 ]; then
            same="pyproject.toml and Python; an editable install reads the checkout's files"
        fi
        echo "== $dir: up to date (same $same), reused"
    fi
    printf '%s\n' "$want" >"$stamp"
}
