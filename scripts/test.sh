#!/usr/bin/env bash
# The whole test suite on a fresh machine: a virtualenv with the package and its extras, the
# services, then ruff, mypy and pytest. Extra arguments go to pytest.
#
#   PYTHON   interpreter for the virtualenv         (default: python3)
#   DJANGO   a pip requirement pinning Django        (default: the newest the interpreter takes)
#   VENV     where the virtualenv lives              (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    echo "test: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
# mysqlclient (the mysql extra) builds against MariaDB's client library, and the PgBouncer
# tests start Debian's pgbouncer on a port of their own (Debian packages).
missing=()
for package in libmariadb-dev pkg-config pgbouncer; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "test: installing ${missing[*]}"
    apt-get update -qq && apt-get install -y --no-install-recommends "${missing[@]}"
fi
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
"${PIP[@]}" install --upgrade "pip>=25.1"
"${PIP[@]}" install -e ".[postgres,redis,mysql]" --group test --group lint ${DJANGO:+"$DJANGO"}
echo "test: $("$VENV/bin/python" --version), Django $("$VENV/bin/python" -m django --version)"

scripts/services.sh
if [ -x scripts/install-browser.sh ]; then
    scripts/install-browser.sh
fi

# A missing service fails its tests instead of skipping them.
export STATEMODES_REQUIRE_SERVICES=${STATEMODES_REQUIRE_SERVICES:-1}

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
# Strict over the tests, benchmarks and test project too (importing tests.settings, as the
# django-stubs plugin does, fetches nothing: Django's own tests are fetched by the tests).
"$VENV/bin/mypy" django_statemodes tests benchmarks testproject
"$VENV/bin/python" -m pytest "$@"
