"""Contract of search/store/expr.py: every string literal follows the Milvus grammar (the real
parsers of Milvus Lite and of a Milvus server are tested in test_store.py and test_names.py); a
user's filter is refused unless it is one balanced expression of bounded length and nesting;
folder conditions are exact prefixes."""

from __future__ import annotations

import re

import pytest

from vitsearch.search.errors import BadQueryError
from vitsearch.search.store.expr import check_filter, literal, paths_in, under


def test_literal_follows_the_milvus_string_grammar():
    # Plan.g4: StringLiteral '"' (~["\\\r\n] | EscapeSequence)* '"'; both backends accept \\ \" \n \r.
    grammar = re.compile(r'"(?:[^"\\\r\n]|\\[\\"nr])*"', re.S)
    for value in [
        "",
        "plain",
        "John's",
        'say "hi"',
        "a\\b",
        "trail\\",
        "new\nline",
        "cr\r",
        "tab\t",
        "%_*",
        "\\n",
        "é",
        "e\u0301",
        "\U0001f600",
        "\x01\x7f",
        "x'] or path like '%",
    ]:
        assert grammar.fullmatch(literal(value)), value


@pytest.mark.parametrize(
    "text", ["width > 1", '(folder == ")") and width > 0', "path in ['a', 'b]']", r'folder == "a\"b"', ""]
)
def test_balanced_filters_pass_as_they_are(text):
    assert check_filter(text) == text


@pytest.mark.parametrize(
    "text, why",
    [
        ("1==1) or (1==1", "unmatched ')'"),
        ("(a", "')' missing"),
        ('folder == "x', "not terminated"),
        ("a[0) ", "unmatched ')'"),
    ],
)
def test_unbalanced_filters_are_refused_with_the_reason(text, why):
    with pytest.raises(BadQueryError, match="not one boolean expression") as error:
        check_filter(text)
    assert why in str(error.value)


def nested(depth: int) -> str:
    return "(" * depth + "width > 1" + ")" * depth


@pytest.mark.parametrize(
    "text",
    [
        nested(32),
        "not " * 32 + "x",
        "- " * 32 + "1 < x",
        "!" * 32 + "x",
        "not (" * 16 + "x" + ")" * 16,
        "not x and " * 500 + "x",
        "a - b - " * 100 + "c",
        "x in [" + ", ".join(['"("'] * 100) + "]",
        "w > -1 and h < +2 and !(x != 1)",
        "width > 1 or " * 1259 + "width>1",
    ],
)
def test_filters_within_the_default_limits_pass(text):
    assert len(text) <= 16_384 and check_filter(text) == text


@pytest.mark.parametrize(
    "text",
    [
        nested(33),
        nested(1000),
        "not " * 33 + "x",
        "NOT " * 1000 + "x",
        "- " * 33 + "1",
        "!" * 33 + "x",
        "not (" * 17 + "x" + ")" * 17,
        "[" * 33 + "]" * 33,
        "x == " + "-(" * 17 + "1" + ")" * 17,
    ],
)
def test_a_filter_nested_too_deep_is_refused_in_one_short_line(text):
    # Milvus Lite's parser recurses on each bracket and prefix operator: 1,000 of either overflow
    # its stack ("maximum recursion depth exceeded", which looked like Milvus trouble); refused here.
    with pytest.raises(
        BadQueryError, match=r"nests deeper than the limit of 32 \(.*VITSEARCH_MAX_FILTER_DEPTH\)$"
    ) as error:
        check_filter(text)
    assert "\n" not in str(error.value) and len(str(error.value)) < 300


def test_a_filter_too_long_is_refused_before_it_is_read_and_the_limits_are_arguments():
    huge = "width > 1 or " * 1_500_000 + "x"  # 19.5 MB, as the 18.8 MB filter
    with pytest.raises(
        BadQueryError,
        match=r"^filter is 19,500,001 characters long, over the limit of 16,384 "
        r"\(VITSEARCH_MAX_FILTER_CHARS\)$",
    ):
        check_filter(huge)
    assert check_filter("x" * 16_384) == "x" * 16_384
    assert check_filter(nested(3), max_depth=3) and check_filter("x" * 10, max_chars=10)
    with pytest.raises(BadQueryError, match="limit of 3 "):
        check_filter(nested(4), max_depth=3)
    with pytest.raises(BadQueryError, match="11 characters long, over the limit of 10 "):
        check_filter("x" * 11, max_chars=10)


def test_a_folder_is_a_range_of_paths_and_lists_are_bounded():
    assert under("/a/b/") == 'path >= "/a/b/" and path < "/a/b0"' == under("/a/b")
    assert under("/") == 'path >= "/" and path < "0"'
    assert list(paths_in(["/x", '/y"', "/z"], per_expr=2)) == ['path in ["/x", "/y\\""]', 'path in ["/z"]']
