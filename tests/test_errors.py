from __future__ import annotations

import copy
import pickle

import pytest

from oomguard.errors import ConfigError, ExitCode, Problem


def test_problem_is_an_immutable_value() -> None:
    p = Problem("service.db.memory_max", "must be a size")
    assert p == Problem(path="service.db.memory_max", message="must be a size")
    assert hash(p) == hash(Problem("service.db.memory_max", "must be a size"))
    assert p != Problem("service.db.memory_max", "other")
    assert p != ("service.db.memory_max", "must be a size")  # a value, not a tuple
    assert repr(p) == "Problem(path='service.db.memory_max', message='must be a size')"
    assert copy.deepcopy(p) == p and pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(AttributeError):
        p.message = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.path


def test_problem_str_and_config_error_lists_every_problem() -> None:
    assert str(Problem("", "no such file")) == "no such file"
    err = ConfigError([Problem("a.b", "bad"), Problem("", "worse")], source="x.toml")
    assert str(err) == "x.toml: a.b: bad; worse"
    assert err.exit_code is ExitCode.USAGE
