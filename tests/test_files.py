"""Contract of search/files.py: a file or folder written atomically holds the new content once
written, with the mode asked; no temporary file stays; a write that fails half way leaves the
old content as it was."""

from __future__ import annotations

import stat

import pytest

from vitsearch.search.files import write_atomic, written, written_folder


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bytes_and_text_are_written_mode_0600_and_no_temporary_file_stays(tmp_path):
    write_atomic(tmp_path / "a.bin", b"\x00\xff")
    write_atomic(tmp_path / "b.json", '{"é": 1}')
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\xff"
    assert (tmp_path / "b.json").read_text(encoding="utf-8") == '{"é": 1}'
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "b.json") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]


def test_an_existing_file_is_replaced_with_the_mode_asked(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    write_atomic(path, "new", mode=0o644)
    assert path.read_text() == "new"
    assert mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_an_exception_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), written(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".onnx" and ".tmp" in tmp.name
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_write_that_cannot_be_encoded_leaves_the_old_file(tmp_path):
    path = tmp_path / "credentials"
    path.write_text("root:old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "root:\udc80\n")  # a lone surrogate: no UTF-8 for it
    assert path.read_text() == "root:old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["credentials"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with written_folder(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError), written_folder(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
