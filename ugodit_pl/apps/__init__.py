"""The applications built on the library: the ``ugodit`` command, the demo, folder reconstruction, benchmarks.

The core (``operators``, ``nets``, ``methods``, ``metrics``, ``classical``, ``datamodules``,
``callbacks``) never imports from here. ``runtime`` (a quiet Lightning, progress bars) and ``io``
(strict JSON written atomically, machine facts) are what the applications share.
"""
