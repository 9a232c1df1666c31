import pytest

from common.security.versions import list_versions, version_number, write_version


@pytest.mark.parametrize(("name", "number"), [("v0001", 1), ("v0007", 7), ("v12345", 12345)])
def test_version_number(name: str, number: int) -> None:
    assert version_number(name) == number


@pytest.mark.parametrize(
    "name", ["base", "v1", "v001", "0007", "v00a1", "v0001 ", "v0001\n", "V0001", ""]
)
def test_version_number_refuses_other_names(name: str) -> None:
    with pytest.raises(ValueError, match="not of the form v0001"):
        version_number(name)


def test_versions_are_numbered_and_listed_in_order(tmp_path) -> None:
    root = tmp_path / "reg"
    for _ in range(3):
        write_version(root, lambda f: (f / "a.bin").write_bytes(b"x"), {})
    (root / "v10000").mkdir()  # incomplete: no manifest
    assert [version_number(p.name) for p in list_versions(root)] == [1, 2, 3]
