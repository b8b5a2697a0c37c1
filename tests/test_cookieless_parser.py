"""The pure helpers of cookieless URLs: parse, strip, insert, rewrite, decide."""

from __future__ import annotations

import pytest
from django.utils.http import url_has_allowed_host_and_scheme
from hypothesis import given
from hypothesis import strategies as st

from django_statemodes.cookieless import (
    PROBE,
    Segment,
    autodetect,
    format_segment,
    insert_segment,
    is_valid_key,
    parse_segment,
    rewrite_location,
    same_site,
    split_path,
    url_path,
    user_agent_digest,
    with_probe,
    without_probe,
)
from django_statemodes.exceptions import MalformedSegment

KEY = "abcdefghij0123456789klmnopqrstuv"
OTHER = "0" * 32
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=32, max_size=32)
paths = st.from_regex(r"(/[a-z0-9._~-]{0,8}){0,4}/?", fullmatch=True).map(lambda p: p or "/")


def test_a_path_without_a_segment_is_returned_unchanged() -> None:
    assert split_path("/page/1/") == (None, "/page/1/")
    assert split_path("/") == (None, "/")


def test_the_segment_is_split_from_the_rest_of_the_path() -> None:
    assert split_path(f"/(S({KEY}))/page/1/") == (Segment(session_key=KEY), "/page/1/")


def test_a_segment_without_a_rest_leaves_the_root() -> None:
    assert split_path(f"/(S({KEY}))") == (Segment(session_key=KEY), "/")
    assert split_path(f"/(S({KEY}))/") == (Segment(session_key=KEY), "/")


def test_tokens_may_come_in_any_order() -> None:
    expected = Segment(session_key=KEY, detected=True)
    assert parse_segment(f"(S({KEY})X(1))") == expected
    assert parse_segment(f"(X(1)S({KEY}))") == expected
    assert parse_segment("(X(1))") == Segment(detected=True)


@pytest.mark.parametrize(
    "path",
    [
        f"/(S({KEY})/x/",  # unbalanced
        f"/(S({KEY}))x/y/",  # text after the closing parenthesis
        f"/(s({KEY}))/x/",  # lower-case letter
        "/(foo)/x/",  # not tokens at all
        "/()/x/",  # no token
        f"/(S(({KEY})))/x/",  # nested parentheses
        f"/(SS({KEY}))/x/",  # two-letter name
        f"/x/(S({KEY}))/y/",  # not the first segment
    ],
)
def test_text_outside_the_grammar_is_not_a_segment(path: str) -> None:
    assert split_path(path) == (None, path)


@pytest.mark.parametrize(
    "value",
    [
        "",
        KEY[:31],  # too short
        KEY + "a",  # too long
        "abc",
        KEY[:31] + "A",  # upper case is outside the alphabet
        KEY[:31] + "-",
        KEY[:31] + "_",
        KEY[:31] + "é",
        KEY[:31] + " ",
        "x" * 500,
    ],
)
def test_an_s_value_that_is_not_a_session_key_is_ignored(value: str) -> None:
    assert split_path(f"/(S({value}))/p/") == (Segment(bad_key=True), "/p/")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"(S({KEY})S({OTHER}))", "several S"),
        (f"(S({KEY})S({KEY}))", "several S"),
        ("(X(1)X(1))", "several X"),
        (f"(S({KEY})F(ticket))", "unknown token F"),
        ("(A(anon))", "unknown token A"),
        ("(X(0))", r"not X\(1\)"),
        ("(X())", r"not X\(1\)"),
    ],
)
def test_a_grammatical_segment_with_bad_tokens_is_malformed(text: str, message: str) -> None:
    with pytest.raises(MalformedSegment, match=message):
        split_path(f"/{text}/page/")


def test_keys_are_32_characters_of_lower_case_letters_and_digits() -> None:
    assert is_valid_key(KEY)
    assert not is_valid_key(KEY.upper())
    assert not is_valid_key(KEY[:-1])


def test_segments_are_formatted_as_aspnet_writes_them() -> None:
    assert format_segment(KEY) == f"(S({KEY}))"
    assert format_segment(KEY, True) == f"(S({KEY})X(1))"
    assert format_segment(None, True) == "(X(1))"
    assert format_segment(None) == ""
    with pytest.raises(ValueError, match="not a session key"):
        format_segment("short")


def test_the_segment_is_inserted_after_the_script_prefix() -> None:
    segment = format_segment(KEY)
    assert insert_segment("/page/1/", segment) == f"/(S({KEY}))/page/1/"
    assert insert_segment("/app/page/", segment, "/app/") == f"/app/(S({KEY}))/page/"
    assert insert_segment("/app", segment, "/app/") == f"/app/(S({KEY}))/"


def test_inserting_replaces_a_segment_already_there() -> None:
    old = f"/(S({OTHER}))/page/"
    assert insert_segment(old, format_segment(KEY)) == f"/(S({KEY}))/page/"
    assert insert_segment(old, "") == "/page/"


def test_paths_outside_the_application_are_left_alone() -> None:
    assert insert_segment("/other/x/", format_segment(KEY), "/app/") == "/other/x/"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/page/1/?a=b#top", f"/(S({KEY}))/page/1/?a=b#top"),
        ("http://testserver/page/1/", f"http://testserver/(S({KEY}))/page/1/"),
        ("//testserver/page/1/", f"//testserver/(S({KEY}))/page/1/"),
        (f"/(S({OTHER}))/page/", f"/(S({KEY}))/page/"),
        ("page/2/", "page/2/"),  # relative: the browser keeps the segment
        ("../go/", "../go/"),
        ("https://example.com/page/1/", "https://example.com/page/1/"),
        ("//example.com/page/1/", "//example.com/page/1/"),
        ("https://testserver/page/1/", "https://testserver/page/1/"),  # another scheme
        ("mailto:someone@example.com", "mailto:someone@example.com"),
    ],
)
def test_redirects_into_the_application_carry_the_segment(location: str, expected: str) -> None:
    rewritten = rewrite_location(
        location, format_segment(KEY), base="/", scheme="http", host="testserver"
    )
    assert rewritten == expected


def test_the_probe_parameter_is_added_and_removed_keeping_the_rest() -> None:
    assert with_probe("") == f"{PROBE}=1"
    assert with_probe("a=1") == f"a=1&{PROBE}=1"
    assert with_probe(f"a=1&{PROBE}=1") == f"a=1&{PROBE}=1"
    assert without_probe(f"a=1&{PROBE}=1&b=") == "a=1&b="
    assert without_probe("a=1") == "a=1"


@pytest.mark.parametrize(
    (
        "detected",
        "session_cookie",
        "has_cookies",
        "probe_in_query",
        "probe_cookie",
        "safe",
        "decision",
    ),
    [
        (True, False, True, False, False, True, "cookieless"),  # X(1) wins (ASP.NET step 2)
        (True, False, False, False, False, False, "cookieless"),
        (False, False, True, False, False, True, "cookies"),  # a cookie: no probe (step 3)
        (
            False,
            False,
            True,
            True,
            True,
            True,
            "probe-passed",
        ),  # the probe came back with its cookie
        (False, False, True, True, True, False, "cookies"),
        (False, False, True, True, False, True, "cookies"),  # another cookie: cookies work
        (False, False, False, True, False, True, "cookieless"),  # came back without it (step 4)
        (False, False, False, False, False, True, "probe"),  # first visit (step 5)
        (False, False, False, False, False, False, "cookies"),  # never probe a POST
        # The session cookie wins over a link's X(1) (issue 14: fixation by X(1)).
        (True, True, True, False, False, True, "cookies"),
        (True, True, True, False, False, False, "cookies"),
        (True, True, True, True, True, True, "probe-passed"),
    ],
)
def test_autodetect_decides_in_aspnets_order(
    detected: bool,
    session_cookie: bool,
    has_cookies: bool,
    probe_in_query: bool,
    probe_cookie: bool,
    safe: bool,
    decision: str,
) -> None:
    got = autodetect(
        detected=detected,
        session_cookie=session_cookie,
        has_cookies=has_cookies,
        probe_in_query=probe_in_query,
        probe_cookie=probe_cookie,
        safe_method=safe,
    )
    assert got == decision


def test_the_user_agent_digest_depends_on_agent_and_secret() -> None:
    digest = user_agent_digest("secret", "Mozilla/5.0")
    assert digest == user_agent_digest("secret", "Mozilla/5.0")
    assert digest != user_agent_digest("secret", "curl/8")
    assert digest != user_agent_digest("other", "Mozilla/5.0")
    assert len(digest) == 64


@given(keys, st.booleans(), paths)
def test_inserting_then_splitting_gives_back_key_and_path(
    key: str, detected: bool, path: str
) -> None:
    munged = insert_segment(path, format_segment(key, detected))
    assert split_path(munged) == (Segment(session_key=key, detected=detected), path)
    assert insert_segment(munged, "") == path


@given(st.text(alphabet="/()SXFsx1a0é%", max_size=60) | st.text(max_size=60))
def test_the_parser_never_fails_other_than_with_malformed_segment(text: str) -> None:
    path = "/" + text
    try:
        segment, rest = split_path(path)
    except MalformedSegment:
        return
    assert rest.startswith("/")
    if segment is None:
        assert rest == path
    else:
        assert path.endswith(rest) or rest == "/"
        assert segment.session_key is None or is_valid_key(segment.session_key)


@given(st.text(max_size=80), keys)
def test_other_sites_urls_are_never_rewritten(tail: str, key: str) -> None:
    location = "https://example.com/" + tail
    assert (
        rewrite_location(location, format_segment(key), base="/", scheme="https", host="site")
        == location
    )


@given(st.text(max_size=60))
def test_a_request_path_always_becomes_a_path_on_this_site(path: str) -> None:
    # Django's own test for redirect targets (issue 14: //host, /\\host, schemes).
    url = same_site(url_path(path))
    assert url.startswith("/") and url[1:2] not in ("/", "\\")
    assert url_has_allowed_host_and_scheme(url, allowed_hosts={"site"})


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("//evil.example/", "/%2Fevil.example/"),
        ("/\\evil.example/", "/%5Cevil.example/"),
        ("///evil.example", "/%2F/evil.example"),
        ("https://evil.example/", "/https://evil.example/"),
        ("/a?b#c%d/", "/a%3Fb%23c%25d/"),
        ("/page/1/", "/page/1/"),
    ],
)
def test_request_paths_are_escaped_as_django_escapes_its_redirects(path: str, url: str) -> None:
    assert same_site(url_path(path)) == url


@given(keys)
def test_removing_the_segment_never_leaves_a_protocol_relative_location(key: str) -> None:
    for rest in ["//evil.example/", "/\\evil.example/", "///evil.example"]:
        location = rewrite_location(f"/(S({key})){rest}", "", base="/", scheme="https", host="site")
        assert url_has_allowed_host_and_scheme(location, allowed_hosts={"site"}), location
