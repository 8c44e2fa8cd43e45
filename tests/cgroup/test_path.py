from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oomguard.cgroup.path import NAME_MAX, CgroupPath, CgroupPathError, check_name
from oomguard.errors import OomguardError

ESCAPING_NAMES = [
    "",
    ".",
    "..",
    "/",
    "/etc",
    "a/b",
    "../x",
    "x/..",
    "a\0b",
    "\0",
    "a\nb",
    "x" * (NAME_MAX + 1),
    "é" * 128,  # 256 bytes in UTF-8, though only 128 characters
]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_child_refuses_escaping_or_invalid_names(name: str) -> None:
    with pytest.raises(CgroupPathError):
        CgroupPath.ROOT.child(name)


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_constructor_refuses_the_same_names(name: str) -> None:
    with pytest.raises(CgroupPathError):
        CgroupPath(("ok", name))


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_join_refuses_the_same_names(name: str) -> None:
    with pytest.raises(CgroupPathError):
        CgroupPath.parse("/a").join("b", name)


@pytest.mark.parametrize(
    "text",
    ["", "..", "/..", "/a/../b", "a//b", "//", "/a/./b", "/a/b//", "a\0", "/x\n", "/" + "y" * 256],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(CgroupPathError) as info:
        CgroupPath.parse(text)
    # The message quotes the input so the user can find it in their config.
    if text:
        assert repr(text) in str(info.value)


def test_errors_are_value_errors_and_oomguard_errors() -> None:
    with pytest.raises(ValueError):
        CgroupPath.parse("/../etc")
    with pytest.raises(OomguardError) as info:
        CgroupPath.parse("/../etc")
    assert info.value.hint


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("/", ()),
        ("/a", ("a",)),
        ("a", ("a",)),
        ("/a/b", ("a", "b")),
        ("a/b/", ("a", "b")),
        ("/system.slice/pg.service", ("system.slice", "pg.service")),
        ("/with space/x-y_z.1", ("with space", "x-y_z.1")),
        ("/" + "n" * NAME_MAX, ("n" * NAME_MAX,)),
        ("/...", ("...",)),
        ("/.hidden", (".hidden",)),
    ],
)
def test_parse_accepts(text: str, parts: tuple[str, ...]) -> None:
    assert CgroupPath.parse(text).parts == parts


def test_non_tuple_parts_refused() -> None:
    with pytest.raises(CgroupPathError):
        CgroupPath(["a"])  # type: ignore[arg-type]


def test_root_properties() -> None:
    root = CgroupPath.parse("/")
    assert root == CgroupPath.ROOT
    assert root.is_root
    assert root.parent is None
    assert root.name == ""
    assert str(root) == "/"
    assert root.depth == 0
    assert root.fs_path() == ""
    assert root.ancestors() == []


def test_navigation() -> None:
    p = CgroupPath.parse("/a/b/c")
    assert str(p) == "/a/b/c"
    assert p.name == "c"
    assert p.parent == CgroupPath.parse("/a/b")
    assert p.depth == 3
    assert p.fs_path() == "a/b/c"
    assert p.ancestors() == [CgroupPath.ROOT, CgroupPath.parse("/a"), CgroupPath.parse("/a/b")]
    assert CgroupPath.parse("/a").child("b").child("c") == p
    assert CgroupPath.parse("/a").join("b", "c") == p
    assert CgroupPath.parse("/a") / "b" / "c" == p
    assert repr(p) == "CgroupPath('/a/b/c')"


def test_relative() -> None:
    p = CgroupPath.parse("/a/b/c")
    a = CgroupPath.parse("/a")
    assert p.is_relative_to(a)
    assert p.is_relative_to(p)
    assert p.is_relative_to(CgroupPath.ROOT)
    assert not a.is_relative_to(p)
    assert not CgroupPath.parse("/ab").is_relative_to(a)  # name prefix is not path prefix
    assert p.relative_to(a) == ("b", "c")
    with pytest.raises(CgroupPathError):
        a.relative_to(p)


def test_hashable_frozen_and_ordered_parents_first() -> None:
    p = CgroupPath.parse("/a/b")
    assert {p: 1}[CgroupPath(("a", "b"))] == 1
    with pytest.raises(AttributeError):
        p.parts = ()  # type: ignore[misc]
    paths = [CgroupPath.parse(s) for s in ["/b", "/a/b/c", "/a", "/a/b", "/"]]
    assert [str(x) for x in sorted(paths)] == ["/", "/a", "/a/b", "/a/b/c", "/b"]


def test_check_name_returns_valid_name() -> None:
    assert check_name("db") == "db"
    assert check_name("n" * NAME_MAX) == "n" * NAME_MAX


def test_non_utf8_name_counts_bytes() -> None:
    # A name from /proc/self/cgroup decoded with surrogateescape: 255 raw bytes is still ok.
    name = b"\xff".decode("utf-8", "surrogateescape") * NAME_MAX
    assert CgroupPath.ROOT.child(name).name == name
    with pytest.raises(CgroupPathError):
        CgroupPath.ROOT.child(name + "x")


@given(st.lists(st.text(min_size=1, max_size=20), max_size=5))
def test_any_valid_path_roundtrips_and_never_escapes(names: list[str]) -> None:
    try:
        p = CgroupPath(tuple(names))
    except CgroupPathError:
        return
    assert CgroupPath.parse(str(p)) == p
    for part in p.parts:
        assert part not in ("", ".", "..")
        assert "/" not in part
        assert "\0" not in part


def test_value_semantics_not_a_tuple() -> None:
    import copy
    import pickle

    p = CgroupPath.parse("/a/b")
    assert p == CgroupPath(parts=("a", "b"))
    assert p != ("a", "b")  # never equal to a plain tuple, nor the same dict key
    assert p not in {("a", "b"): 1} and ("a", "b") not in {p: 1}
    assert repr(p) == "CgroupPath('/a/b')"
    assert copy.copy(p) == p and copy.deepcopy(p) == p
    assert pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(AttributeError):
        del p.parts
    with pytest.raises(AttributeError):
        p.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        _ = p < ("a",)  # type: ignore[operator]
    match p:
        case CgroupPath(("a", last)):
            assert last == "b"
        case _:
            pytest.fail("positional match on CgroupPath failed")
