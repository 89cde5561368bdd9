#!/usr/bin/env bash
# Installs what the platform and its tests need; idempotent and quick when all is in place.
#   - Debian packages: mosquitto, mosquitto-clients, redis-server, rabbitmq-server, chromium (headless,
#     for the browser tests; driven by Playwright, which never downloads a browser), patch (FerretDB),
#     wrk (the batch status benchmark's load generator, bench/wrk_load.py)
#   - .venv with the project and its dev extras (re-installed only when pyproject.toml changes)
#   - .tools/ferretdb: FerretDB v1.24.2 built from its Go module (SQLite backend, no PostgreSQL),
#     with the fixes in scripts/ferretdb/*.patch
#   - web/node_modules: front-end packages the API serves itself (npm ci)
# Usage: scripts/install.sh [apt] [venv] [ferretdb] [web]   (no argument: all four)
set -euo pipefail
cd "$(dirname "$0")/.."

FERRETDB_MODULE="github.com/FerretDB/FerretDB"
FERRETDB_VERSION="v1.24.2"
APT_PACKAGES=(mosquitto mosquitto-clients redis-server rabbitmq-server chromium patch wrk)

log() { printf 'install: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_apt_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    # The servers are started by the platform itself on its own ports and data directories; a
    # system service started by the package would hold 1883/6379/5672. Where the machine has no
    # policy saying otherwise, forbid service starts for the duration of the install.
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
        added_policy=1
    fi
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [ -n "$added_policy" ]; then as_root rm -f "$policy"; fi
}

find_python() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    log "Python 3.11 is required (pyproject.toml: requires-python >=3.11,<3.12)"
    return 1
}

install_venv() {
    local stamp=.venv/.install-stamp want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    if [ ! -x .venv/bin/python ]; then
        log "creating .venv"
        "$(find_python)" -m venv .venv
    fi
    log "installing the project into .venv (pip install -e '.[dev]')"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
}

install_ferretdb() {
    # PRESENCE_FERRETDB_BIN (also read by stack/services.py) builds elsewhere, e.g. to try a change.
    local target="${PRESENCE_FERRETDB_BIN:-.tools/ferretdb}" stamp want patch_file
    # The binary carries fixes from scripts/ferretdb/*.patch (see their headers); it is rebuilt when
    # the version or any patch changes, as recorded in the stamp beside it.
    stamp="$target.stamp"
    want="$FERRETDB_VERSION $(cat scripts/ferretdb/*.patch | sha256sum | cut -d' ' -f1)"
    # Read the whole output first: `| grep -q` would end the pipe early and, with pipefail, fail.
    if [ -x "$target" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && [[ "$("$target" --version 2>/dev/null || true)" == *"version: $FERRETDB_VERSION"* ]]; then
        return 0
    fi
    command -v go >/dev/null 2>&1 || { log "Go is needed to build FerretDB"; return 1; }
    command -v patch >/dev/null 2>&1 || { log "patch (Debian package patch) is needed to build FerretDB"; return 1; }
    log "building FerretDB $FERRETDB_VERSION with scripts/ferretdb/*.patch into $target (about a minute)"
    local module_dir build_dir
    module_dir="$(go mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    build_dir="$(mktemp -d "${TMPDIR:-/tmp}/ferretdb-build.XXXXXX")"
    # The module cache is read-only; build from a writable copy.
    cp -r "$module_dir/." "$build_dir/"
    chmod -R u+w "$build_dir"
    for patch_file in scripts/ferretdb/*.patch; do
        # --forward: a patch that is already in (or reversed) is an error, not a silent no-op.
        if ! patch -d "$build_dir" -p1 --forward --batch --no-backup-if-mismatch --quiet -i "$PWD/$patch_file"; then
            log "$patch_file does not apply to FerretDB $FERRETDB_VERSION"
            rm -rf "$build_dir"
            return 1
        fi
    done
    # The module zip lacks this generated file, without which the binary panics at start.
    echo "$FERRETDB_VERSION" > "$build_dir/build/version/version.txt"
    mkdir -p "$(dirname "$target")"
    local out
    out="$(realpath -m "$target.tmp")"
    (cd "$build_dir" && GOFLAGS=-buildvcs=false go build -o "$out" ./cmd/ferretdb)
    rm -f "$stamp"
    mv "$target.tmp" "$target"
    echo "$want" > "$stamp"
    rm -rf "$build_dir"
    log "built $("$target" --version | sed -n 1p)"
}

install_web() {
    # Front-end packages the API serves from local files (no CDN); re-installed when the lock changes.
    local stamp=web/node_modules/.install-stamp want
    want="$(sha256sum web/package-lock.json | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    command -v npm >/dev/null 2>&1 || { log "npm is needed for the web packages"; return 1; }
    log "installing web packages (npm ci)"
    # No install scripts: the pages need the packages' files only, and some scripts phone home.
    npm ci --prefix web --ignore-scripts --no-audit --no-fund --loglevel=error
    echo "$want" > "$stamp"
}

# Steps to run: all by default, or some of `apt venv ferretdb web` as arguments.
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(apt venv ferretdb web)
for step in "${steps[@]}"; do
    case "$step" in
        apt) install_apt_packages ;;
        venv) install_venv ;;
        ferretdb) install_ferretdb ;;
        web) install_web ;;
        *) log "unknown step '$step' (expected apt, venv, ferretdb or web)"; exit 2 ;;
    esac
done
