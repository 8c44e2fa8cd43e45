"""The config: from the user's TOML and options to a validated ``Config``, compiled to a Plan.

* ``fields``: field types (sizes, durations, signals, names...) and their bounds.
* ``model``: the frozen pydantic models and their derived API (start order, tree spec...).
* ``checks``: cross-field checks (validation pass 2). ``warnings``: allowed-but-odd settings.
* ``load``: TOML file + CLI overrides -> ``Config``. ``compile``: ``Config`` -> ``Plan``.

Nothing is imported here on purpose: importing `oomguard.config` must not import pydantic, so
commands that never read a config (`status`, `events`) start fast. Import the submodules.
"""
