"""The config: `model` (frozen pydantic models, validation, derived API) and `load` (TOML file +
CLI overrides -> `Config`).

Nothing is imported here on purpose: importing `oomguard.config` must not import pydantic, so
commands that never read a config (`status`, `events`) start fast. Import the submodules.
"""
