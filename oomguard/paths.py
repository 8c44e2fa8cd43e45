"""The directories oomguard uses when nothing says otherwise: defined once, here.

A plain module with no imports, so `oomguard status` (which starts with it) pays nothing, and the
pure config layer can use it as a default.
"""

from __future__ import annotations

#: Root's state directory: state.json, events.jsonl and the lock (``[oomguard] state_dir``'s
#: default, ``--state-dir``'s default for status and events), and the parent of
#: ``oomguard exec``'s per-run state directories.
STATE_DIR = "/run/oomguard"
