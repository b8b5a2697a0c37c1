#!/usr/bin/env python
"""The runner project's manage.py: ``python manage.py test`` as a user runs it."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "runner_settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
