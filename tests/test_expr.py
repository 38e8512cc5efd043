"""Contract of search/store/expr.py: every string literal follows the Milvus grammar (the real
parsers of Milvus Lite and of a Milvus server are tested in test_store.py and test_names.py); a
user's filter is refused unless it is one balanced expression; folder conditions are exact
prefixes."""
from __future__ import annotations

import re

import pytest

from vitsearch.search.errors import BadQueryError
from vitsearch.search.store.expr import check_filter, literal, paths_in, under


def test_literal_follows_the_milvus_string_grammar():
    # Plan.g4: StringLiteral '"' (~["\\\r\n] | EscapeSequence)* '"'; both backends accept \\ \" \n \r.
    grammar = re.compile(r'"(?:[^"\\\r\n]|\\[\\"nr])*"', re.S)
    for value in ["", "plain", "John's", 'say "hi"', "a\\b", "trail\\", "new\nline", "cr\r", "tab\t",
                  "%_*", "\\n", "é", "e\u0301", "\U0001f600", "\x01\x7f", "x'] or path like '%"]:
        assert grammar.fullmatch(literal(value)), value


@pytest.mark.parametrize("text", ["width > 1", '(folder == ")") and width > 0', "path in ['a', 'b]']",
                                  r'folder == "a\"b"', ""])
def test_balanced_filters_pass_as_they_are(text):
    assert check_filter(text) == text


@pytest.mark.parametrize("text, why", [("1==1) or (1==1", "unmatched ')'"), ("(a", "')' missing"),
                                       ('folder == "x', "not terminated"), ("a[0) ", "unmatched ')'")])
def test_unbalanced_filters_are_refused_with_the_reason(text, why):
    with pytest.raises(BadQueryError, match="not one boolean expression") as error:
        check_filter(text)
    assert why in str(error.value)


def test_a_folder_is_a_range_of_paths_and_lists_are_bounded(monkeypatch):
    import vitsearch.search.store.expr as expr

    assert under("/a/b/") == 'path >= "/a/b/" and path < "/a/b0"' == under("/a/b")
    assert under("/") == 'path >= "/" and path < "0"'
    monkeypatch.setattr(expr, "PATHS_PER_EXPR", 2)
    assert list(paths_in(["/x", '/y"', "/z"])) == ['path in ["/x", "/y\\""]', 'path in ["/z"]']
