"""A tiny site on SQL mode for real-server tests (gunicorn), configured from the environment."""
