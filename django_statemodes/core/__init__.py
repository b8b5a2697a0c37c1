"""The session core, split by job.

- ``session``: ``StateModeSessionBase``, the session class (lifecycle, access modes, expiry);
- ``codec``: how a session's dict becomes a stored payload and back (serializer, compression
  marker, size limit), and the object codec of stores that keep live objects;
- ``locking``: acquiring, queueing, stealing and waiting for session locks, and their statistics;
- ``calls``: the one body that the sync and async paths share, run against a provider by
  ``run`` or ``arun``;
- ``registry``: building, caching and rebuilding each engine's provider.

The core depends on the provider contract (``providers/base.py``) and on no specific provider.
"""
