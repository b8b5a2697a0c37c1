"""A real server for the starvation test: the Redis provider (a store both workers share) and a
view that holds a session's lock until the test says so."""

from tests.redisapp.settings import *  # noqa: F403

ROOT_URLCONF = "tests.starvationapp.urls"
STATEMODES_LOCK_WAITING_THREADS = None  # the derived default is what this app tests
