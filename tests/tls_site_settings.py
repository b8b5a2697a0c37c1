"""The web-farm test site (tests/farmapp) reaching its state server over TLS."""

from __future__ import annotations

import os

from tests.farmapp.settings import *  # noqa: F403

STATEMODES_STATE_TLS_CA = os.environ["TLS_SITE_CA"]
STATEMODES_STATE_TLS_CERT = os.environ.get("TLS_SITE_CERT") or None
STATEMODES_STATE_TLS_KEY = os.environ.get("TLS_SITE_KEY") or None
