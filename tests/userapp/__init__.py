"""A site for the sessions-by-user browser test: Django's auth views and the sessions page."""
