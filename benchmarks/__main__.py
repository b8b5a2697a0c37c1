"""Measure every performance target and judge it: ``python -m benchmarks [--quick]``.

See ``benchmarks.targets``. The other scripts (``cycle``, ``handoff``, ``lost_updates``,
``throughput``, ``asgi``, ``serializers``, ``report``, ...) run alone as
``python -m benchmarks.<name>``, each in its own interpreter: providers are cached per process,
so a second script in the same process would reuse the first one's connections to servers.
"""

from __future__ import annotations

from benchmarks.targets import main

if __name__ == "__main__":
    main()
