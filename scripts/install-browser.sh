#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the cookieless browser tests
# (tests/test_browser_*.py drive it with Playwright, which never downloads a browser itself).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium
echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null)"
