#!/usr/bin/env bash
# The whole test suite on a fresh machine: a virtualenv with the package and its extras, the
# services, then ruff, mypy, the docs site (strict) and pytest. Extra arguments go to pytest.
#
#   scripts/test.sh --install [pytest arguments]   also apt-get what is missing (see below)
#
#   PYTHON   interpreter for the virtualenv         (default: python3)
#   DJANGO   a pip requirement pinning Django        (default: the newest the interpreter takes)
#   VENV     where the virtualenv lives              (default: .venv)
#   EXTRAS   the package's extras to install         (default: postgres,redis,mysql)
#   STATEMODES_INSTALL_SYSTEM_PACKAGES=1             the same as --install
#
# System packages: in CI (CI=true) what is missing is installed with apt-get, and a service that
# stays down fails the run. Elsewhere nothing is installed unless asked (--install, or "y" at the
# terminal's prompt): the script says what is missing and how to get it, and stops before doing
# anything else.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# Exported: the suite checks that what a leg claims to test (hiredis) is what it runs on.
export STATEMODES_TEST_EXTRAS=${EXTRAS:-postgres,redis,mysql}
INSTALL_SYSTEM=${STATEMODES_INSTALL_SYSTEM_PACKAGES:-0}
if [ "${1:-}" = --install ]; then
    INSTALL_SYSTEM=1
    shift
fi
if [ "${CI:-}" = true ]; then
    INSTALL_SYSTEM=1
fi

# Debian packages among "$@" that are not installed, one a line.
missing_packages() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || echo "$package"
    done
}
# apt-get install Debian packages when allowed (or, at a terminal, when the user says yes);
# otherwise say what is missing and how to get it, and stop.
system_install() {
    [ $# -gt 0 ] || return 0
    local answer=""
    if [ "$INSTALL_SYSTEM" != 1 ] && [ -t 0 ]; then
        read -r -p "test: the suite needs Debian packages that are not installed: $*. Install them now with apt-get? [y/N] " answer
    fi
    if [ "$INSTALL_SYSTEM" = 1 ] || [[ "$answer" =~ ^[Yy] ]]; then
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo=sudo
        echo "test: installing $*"
        $sudo apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "$@"
        return
    fi
    cat >&2 <<EOF
test: the suite needs Debian packages that are not installed: $*
      install them with:   sudo apt-get install --no-install-recommends $*
      or let this script:  scripts/test.sh --install   (or STATEMODES_INSTALL_SYSTEM_PACKAGES=1)
EOF
    exit 1
}

# mysqlclient (the mysql extra) builds against MariaDB's client library, the PgBouncer tests
# start Debian's pgbouncer on a port of their own, and the cookieless browser tests drive Debian's
# Chromium through Playwright (which never downloads a browser here).
if ! command -v dpkg-query >/dev/null; then
    echo "test: this script installs with Debian's apt-get; elsewhere install MariaDB's client" \
         "library (libmariadb-dev), pkg-config, pgbouncer and Chromium (/usr/bin/chromium)." >&2
else
    mapfile -t missing < <(missing_packages libmariadb-dev pkg-config pgbouncer chromium)
    system_install "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "test: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
# PgBouncer 1.21+ tracks prepared statements in transaction pooling (max_prepared_statements);
# bookworm ships 1.18, so the tests that cover both build 1.24.1 from Debian's source, once, into
# a cache outside the repository (localservers/pgbouncer.py looks there).
PGBOUNCER_VERSION=1.24.1
PGBOUNCER_SHA256=da72a3aba13072876d055a3e58dd4aba4a5de4ed6148e73033185245598fd3e0
PGBOUNCER_HOME=${XDG_CACHE_HOME:-$HOME/.cache}/django-statemodes/pgbouncer-$PGBOUNCER_VERSION
build_pgbouncer() {
    # errexit does not apply inside a function called from "if": every step is checked.
    local build=$1 name="pgbouncer_$PGBOUNCER_VERSION.orig.tar.gz"
    curl -fsSL --retry 3 -o "$build/$name" "http://deb.debian.org/debian/pool/main/p/pgbouncer/$name" \
        && echo "$PGBOUNCER_SHA256  $build/$name" | sha256sum --check --quiet \
        && tar -xzf "$build/$name" -C "$build" \
        && cd "$build/pgbouncer-$PGBOUNCER_VERSION" \
        && { ./configure --prefix="$PGBOUNCER_HOME" --without-cares --without-systemd \
            && make -j"$(nproc)" && make install; } >"$build/log" 2>&1 \
        || { tail -n 30 "$build/log" >&2 2>/dev/null; return 1; }
}
if [ ! -x "$PGBOUNCER_HOME/bin/pgbouncer" ]; then
    echo "test: building PgBouncer $PGBOUNCER_VERSION from Debian's source into $PGBOUNCER_HOME"
    mapfile -t missing < <(missing_packages libevent-dev libssl-dev curl)
    system_install "${missing[@]}"
    build=$(mktemp -d)
    if ! (build_pgbouncer "$build"); then
        rm -rf "$PGBOUNCER_HOME"
        echo "!!! test: building PgBouncer $PGBOUNCER_VERSION failed (above): the tests of prepared !!!" >&2
        echo "!!! statements through PgBouncer 1.21+ fail while services are required.           !!!" >&2
    fi
    rm -rf "$build"
fi
if [ -x "$PGBOUNCER_HOME/bin/pgbouncer" ]; then
    echo "test: $("$PGBOUNCER_HOME/bin/pgbouncer" --version | head -n 1) in $PGBOUNCER_HOME"
fi
PIP=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
"${PIP[@]}" install --upgrade "pip>=25.1"
"${PIP[@]}" install -e ".[$STATEMODES_TEST_EXTRAS]" --group test --group lint --group docs \
    ${DJANGO:+"$DJANGO"}
echo "test: $("$VENV/bin/python" --version), Django $("$VENV/bin/python" -m django --version)"

if ! scripts/services.sh; then
    cat >&2 <<'EOF'
!!! test: a service the suite talks to is down (above), and the suite requires them all.
    On Debian: apt-get install postgresql mariadb-server redis-server, then
    - PostgreSQL on 127.0.0.1:5432: a superuser role "root" that connects without a password
      (trust for 127.0.0.1 in pg_hba.conf) and a database "test";
    - MariaDB on 127.0.0.1:3306: user root with an empty password and a database "test";
    - Redis on 127.0.0.1:6379.
    scripts/services.sh starts them when they are installed but stopped.
EOF
    exit 1
fi
if [ ! -x /usr/bin/chromium ]; then
    echo "!!! test: /usr/bin/chromium is missing: the cookieless browser tests need it." >&2
    exit 1
fi
echo "test: $(/usr/bin/chromium --version 2>/dev/null)"

# A missing service fails its tests instead of skipping them.
export STATEMODES_REQUIRE_SERVICES=${STATEMODES_REQUIRE_SERVICES:-1}

"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
# Strict over the tests, benchmarks and test project too (importing tests.settings, as the
# django-stubs plugin does, fetches nothing: Django's own tests are fetched by the tests).
"$VENV/bin/mypy" django_statemodes tests benchmarks testproject
# The documentation site: a broken link, a missing anchor or a page left out of the nav fails.
# (Not --quiet: it hides the warnings that strict mode counts.)
site=$(mktemp -d)
if ! NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --site-dir "$site/html" >"$site/log" 2>&1; then
    grep -v "^INFO" "$site/log" >&2
    echo "!!! test: the documentation site does not build in strict mode (above)." >&2
    rm -rf "$site"
    exit 1
fi
rm -rf "$site"
echo "test: the documentation site builds in strict mode"
"$VENV/bin/python" -m pytest "$@"
