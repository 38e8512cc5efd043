"""Contract of search/paths.py: a path of any bytes is stored as valid UTF-8 text that maps back
to the same bytes, component by component (so a folder's stored text is a prefix of its files');
a path is shown on one printable line."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from vitsearch.search.paths import absolute, path_from_stored, printable, stored_path

names = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b)


@given(parts=st.lists(names, min_size=1, max_size=4))
def test_any_path_is_stored_as_utf8_that_maps_back_to_its_bytes(parts):
    path = os.fsdecode(b"/" + b"/".join(parts))
    text = stored_path(path)
    text.encode("utf-8")  # no surrogate left: Milvus can store it
    assert os.fsencode(path_from_stored(text)) == b"/" + b"/".join(parts)
    folder = os.fsdecode(b"/" + b"/".join(parts[:-1]))
    assert text.startswith(stored_path(folder).rstrip("/") + "/")


def test_ordinary_paths_are_stored_as_they_are_and_shown_on_one_line():
    assert stored_path("/photos/2024/John's photo.jpg") == "/photos/2024/John's photo.jpg"
    assert stored_path("/a\\b") == "/a\\\\b" and path_from_stored("/a\\\\b") == "/a\\b"
    assert printable(os.fsdecode(b"/caf\xe9\nx")) == "/caf\\xe9\\nx"


def test_a_folder_is_keyed_absolute_as_text_whatever_it_was_given_as(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = b"caf\xe9"  # Latin-1 bytes: not UTF-8
    want = os.path.join(str(tmp_path), os.fsdecode(odd))
    assert absolute(odd) == absolute(os.fsdecode(odd)) == absolute(tmp_path / os.fsdecode(odd)) == want
    assert absolute(b"a/../" + odd) == want and os.fsencode(absolute(odd)).endswith(odd)
    assert absolute("/x/./y/") == "/x/y"
