#!/usr/bin/env bash
# Install the system packages the test suite needs: Debian's `chromium` (the report tests open the
# HTML report in headless Chromium). Idempotent: does nothing when chromium is already on PATH.
# Needs root (or sudo) for apt-get; CI calls it before the tests.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "install-system-deps: chromium already present ($(command -v chromium)); nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-system-deps: need root or sudo to apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core
echo "install-system-deps: installed $(chromium --version 2>/dev/null || echo chromium)"
