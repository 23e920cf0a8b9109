# Runyard's developer commands. Each recipe creates or reuses .venv and installs the
# project into it (again only when pyproject.toml changed).

set shell := ["bash", "-euo", "pipefail", "-c"]

python := env("PYTHON", "python3")
venv := justfile_directory() / ".venv"
bin := venv / "bin"

# List the recipes
default:
    @just --list

# Start the whole system on this machine (embedded NATS + Valkey); Ctrl-C stops it
up *ARGS: (install "")
    exec {{bin}}/runyard up {{ARGS}}

# Start a local cluster (3 NATS nodes, Valkey + replica + 3 Sentinels, 2 of each service)
cluster *ARGS: (install "")
    exec {{bin}}/runyard up --cluster 3 {{ARGS}}

# Lint, then run the whole test suite against real servers
test *ARGS: (install "dev") lint
    {{bin}}/pytest {{ARGS}}

# ruff and mypy over the whole tree
lint: (install "dev")
    {{bin}}/ruff check .
    {{bin}}/ruff format --check .
    {{bin}}/mypy .

# Format the code
fmt: (install "dev")
    {{bin}}/ruff format .
    {{bin}}/ruff check --fix .

# Create .venv and install the project (with the given extras) when needed
install extras:
    #!/usr/bin/env bash
    set -euo pipefail
    cd "{{justfile_directory()}}"
    stamp="{{venv}}/.installed-{{ if extras == "" { "base" } else { extras } }}"
    if [ ! -x "{{bin}}/python" ]; then
        {{python}} -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || { echo "Runyard needs Python 3.11 or newer" >&2; exit 1; }
        {{python}} -m venv "{{venv}}"
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "{{bin}}/python" -m pip install --quiet --upgrade pip
        "{{bin}}/python" -m pip install --quiet -e ".{{ if extras == "" { "" } else { "[" + extras + "]" } }}"
        touch "$stamp"
    fi
