"""oomguard: a cgroup v2 memory-limit supervisor.

Importing the package does no I/O and imports nothing heavy: `oomguard status` must start fast.
"""

__version__ = "0.1.0"
