#!/usr/bin/env bash
# The demo site on a fresh machine: a virtualenv with the package, the database, then
# `manage.py runserver` on loopback. Usage: scripts/demo.sh [127.0.0.1:PORT] [runserver options]
#
#   STATEMODES_DEMO_ENGINE      inproc (default) | stateserver | sql | redis | off
#   STATEMODES_DEMO_DATABASE    sqlite (default: testproject/demo.sqlite3) | postgres
#   STATEMODES_DEMO_COOKIELESS  UseUri | AutoDetect (default: cookies)
#   STATEMODES_DEMO_STATE_PORT  the state server's port in stateserver mode (default: 24242, below
#                               Linux's ephemeral range 32768-60999, so no client socket holds it)
#   STATEMODES_DEMO_INSTALL     1 to reinstall the package into the virtualenv
#   PYTHON                      interpreter for the virtualenv (default: python3)
#   VENV                        where the virtualenv lives (default: .venv)
# See docs/demo.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
ENGINE=${STATEMODES_DEMO_ENGINE:-inproc}
STATE_PORT=${STATEMODES_DEMO_STATE_PORT:-24242}

ADDRESS=127.0.0.1:8000
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
    ADDRESS=$1
    shift
fi
# Loopback only: the demo runs with DEBUG on and a public SECRET_KEY.
if [[ "$ADDRESS" =~ ^[0-9]+$ ]]; then
    ADDRESS="127.0.0.1:$ADDRESS"
fi
if [[ ! "$ADDRESS" =~ ^(127\.0\.0\.1|localhost|\[::1\]):[0-9]+$ ]]; then
    echo "demo: refusing to listen on $ADDRESS: the demo binds loopback only" \
         "(127.0.0.1:PORT, localhost:PORT, [::1]:PORT or PORT)." >&2
    exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "demo: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# Installed (not merely importable from this directory) with both extras, or install it now.
if [ "${STATEMODES_DEMO_INSTALL:-0}" = 1 ] || ! "$PY" -c \
    'import importlib.metadata as m, django, psycopg, django_redis; m.version("django-statemodes")' \
    2>/dev/null; then
    echo "demo: installing django-statemodes[postgres,redis] into $VENV"
    "$PY" -m pip --quiet --disable-pip-version-check install -e ".[postgres,redis]"
fi

export DJANGO_SETTINGS_MODULE=testproject.settings
"$PY" manage.py migrate --noinput
if [ "$ENGINE" = sql ]; then
    "$PY" manage.py installsqlstate
fi

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ "$ENGINE" != stateserver ]; then
    echo "demo: $ENGINE mode on http://$ADDRESS/"
    exec "$PY" manage.py runserver "$ADDRESS" "$@"
fi

# StateServer mode: the demo runs its own state server (aspnet_state) next to the site. Both run
# in the background so that a signal reaches this shell at once and the trap stops them both.
PIDS=()
stop() { [ ${#PIDS[@]} -eq 0 ] || { kill "${PIDS[@]}" 2>/dev/null; wait "${PIDS[@]}" 2>/dev/null; }; }
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
if up "$STATE_PORT"; then
    echo "demo: using the state server already listening on 127.0.0.1:$STATE_PORT"
else
    "$PY" -m django_statemodes.stateserver --port "$STATE_PORT" &
    PIDS+=($!)
    for _ in $(seq 1 50); do
        up "$STATE_PORT" && break
        kill -0 "${PIDS[0]}" 2>/dev/null || { echo "demo: the state server did not start" >&2; exit 1; }
        sleep 0.2
    done
fi
echo "demo: stateserver mode on http://$ADDRESS/ (state server 127.0.0.1:$STATE_PORT)"
"$PY" manage.py runserver "$ADDRESS" "$@" &
PIDS+=($!)
wait "${PIDS[-1]}"
