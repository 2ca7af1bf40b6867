#!/usr/bin/env bash
# A headless browser for tests/test_report.py, which opens the Snakemake HTML report in it:
#
#   tests/chromium.sh install      Debian's chromium, where no chromium (or chromium-browser, google-chrome) is on PATH
#   tests/chromium.sh path         print the browser's path (exit 3 where there is none)
#
# Exit status 3: this machine cannot have the browser (no root or sudo, no apt-get, no package); the test
# skips with the message. Any other failure is an error.
set -euo pipefail

PACKAGES=(chromium)
NAMES=(chromium chromium-browser google-chrome google-chrome-stable)

die() { echo "chromium.sh: $*" >&2; exit 1; }
cannot() { echo "chromium.sh: $*" >&2; exit 3; }

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
    else cannot "needs root or passwordless sudo to run: $*"
    fi
}

browser() {
    local name
    for name in "${NAMES[@]}"; do
        if command -v "$name" >/dev/null; then command -v "$name"; return 0; fi
    done
    return 1
}

install() {
    browser >/dev/null && return
    command -v apt-get >/dev/null || cannot "no chromium on PATH and no apt-get to install ${PACKAGES[*]}"
    as_root apt-get update -qq >/dev/null || cannot "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" \
        >/dev/null || cannot "apt-get install ${PACKAGES[*]} failed"
    browser >/dev/null || die "apt-get installed ${PACKAGES[*]} but none of ${NAMES[*]} is on PATH"
}

case ${1:-} in
    install) install ;;
    path) browser || cannot "no chromium on PATH (run: $0 install)" ;;
    *) die "usage: $0 install | path" ;;
esac
