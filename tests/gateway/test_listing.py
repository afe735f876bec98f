"""Listing pages as pure functions: ListObjects(V2), ListParts, ListMultipartUploads without a server."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

from blockkit.gateway._errors import S3Error
from blockkit.gateway._listing import (
    ListedObject,
    ListRequest,
    PartsRequest,
    SortedKeys,
    UploadsRequest,
    decode_token,
    encode_token,
    list_objects_xml,
    list_page,
    parse_list_request,
    parse_parts_request,
    parse_uploads_request,
    parts_page,
    uploads_page,
)

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
KEYS = ["a", "b/1", "b/2", "b/c/3", "c", "d/1", "e"]


def page_of(keys: list[str], query: dict[str, str], v2: bool = True) -> tuple[list[str], list[str], bool, str]:
    request = parse_list_request(query, v2)
    page = list_page(SortedKeys.of(keys, request.prefix, request.after), request)
    return [k for k, _ in page.contents], page.prefixes, page.truncated, page.last


def every_page(keys: list[str], query: dict[str, str], v2: bool) -> list[tuple[list[str], list[str]]]:
    """Follow NextContinuationToken (v2) or NextMarker (v1) to the end, as a client does."""
    pages = []
    query = dict(query)
    for _ in range(100):
        contents, prefixes, truncated, last = page_of(keys, query, v2)
        pages.append((contents, prefixes))
        if not truncated:
            return pages
        if v2:
            query["continuation-token"] = encode_token(last)
        else:
            query["marker"] = last
    raise AssertionError("paging did not end")


def test_keys_come_in_code_point_order_whatever_the_input_order() -> None:
    assert page_of(["b", "é", "a", "Z", "a/b"], {})[0] == ["Z", "a", "a/b", "b", "é"]


@pytest.mark.parametrize("v2", [True, False])
@pytest.mark.parametrize("size", ["1", "2", "3", "1000"])
def test_paging_with_a_delimiter_lists_each_key_and_prefix_once(v2: bool, size: str) -> None:
    pages = every_page(KEYS, {"delimiter": "/", "max-keys": size}, v2)
    contents = [k for c, _ in pages for k in c]
    prefixes = [p for _, ps in pages for p in ps]
    assert contents == ["a", "c", "e"]
    assert prefixes == ["b/", "d/"]
    assert all(len(c) + len(p) <= int(size) for c, p in pages)


@pytest.mark.parametrize("v2", [True, False])
def test_paging_without_a_delimiter_lists_every_key_in_order(v2: bool) -> None:
    pages = every_page(KEYS, {"max-keys": "2"}, v2)
    assert [k for c, _ in pages for k in c] == KEYS
    assert [len(c) for c, _ in pages] == [2, 2, 2, 1]


def test_a_page_ending_exactly_at_the_last_key_is_not_truncated() -> None:
    contents, _, truncated, _ = page_of(["a", "b"], {"max-keys": "2"})
    assert contents == ["a", "b"] and not truncated


def test_prefix_and_delimiter_roll_up_below_the_prefix_only() -> None:
    contents, prefixes, _, _ = page_of(KEYS, {"prefix": "b/", "delimiter": "/"})
    assert contents == ["b/1", "b/2"]
    assert prefixes == ["b/c/"]


def test_a_multi_character_delimiter() -> None:
    contents, prefixes, _, _ = page_of(["x--1", "x--2", "y", "z--"], {"delimiter": "--"})
    assert contents == ["y"]
    assert prefixes == ["x--", "z--"]


def test_max_keys_zero_is_an_empty_untruncated_page() -> None:
    contents, prefixes, truncated, _ = page_of(KEYS, {"max-keys": "0"})
    assert (contents, prefixes, truncated) == ([], [], False)


def test_max_keys_above_1000_is_capped() -> None:
    request = parse_list_request({"max-keys": "5000"}, True)
    assert request.max_keys == 1000
    keys = [f"k{i:05d}" for i in range(1001)]
    contents, _, truncated, last = page_of(keys, {"max-keys": "5000"})
    assert len(contents) == 1000 and truncated and last == "k00999"


@pytest.mark.parametrize("query, message", [
    ({"max-keys": "-1"}, "negative"),
    ({"max-keys": "many"}, "integer"),
    ({"encoding-type": "base64"}, "Encoding"),
    ({"continuation-token": "!!not base64 at all"}, "continuation token"),
    ({"continuation-token": "__8="}, "continuation token"),  # valid base64, not UTF-8
])
def test_bad_parameters_are_invalid_argument(query: dict[str, str], message: str) -> None:
    with pytest.raises(S3Error) as info:
        parse_list_request(query, True)
    assert info.value.code == "InvalidArgument" and info.value.status == 400
    assert message in info.value.message


def test_start_after_includes_the_common_prefix_it_falls_into() -> None:
    # start-after is not a previous page's end: "b/1" lies inside "b/", which is listed.
    contents, prefixes, _, _ = page_of(KEYS, {"delimiter": "/", "start-after": "b/1"})
    assert prefixes == ["b/", "d/"] and contents == ["c", "e"]


def test_a_marker_ending_on_a_common_prefix_skips_that_prefix() -> None:
    contents, prefixes, _, _ = page_of(KEYS, {"delimiter": "/", "marker": "b/"}, v2=False)
    assert prefixes == ["d/"] and contents == ["c", "e"]


def test_a_v1_request_ignores_a_continuation_token() -> None:
    request = parse_list_request({"continuation-token": "garbage!"}, False)
    assert request.token is None and request.after == ""


def test_the_token_takes_precedence_over_start_after() -> None:
    request = parse_list_request({"continuation-token": encode_token("c"), "start-after": "a"}, True)
    assert request.after == "c" and request.resumes


@pytest.mark.parametrize("key", ["ключ/файл", "日本語 キー", "emoji-🛰️", "a+b&c=d", "%2F"])
def test_unicode_and_odd_keys_survive_tokens(key: str) -> None:
    assert decode_token(encode_token(key)) == key
    keys = [key, key + "-2", "zz"]
    pages = every_page(keys, {"max-keys": "1"}, True)
    assert [k for c, _ in pages for k in c] == sorted(keys)


def _xml(request: ListRequest, keys: list[str]) -> ET.Element:
    page = list_page(SortedKeys.of(keys, request.prefix, request.after), request)
    objects = [ListedObject(k, 0.0, 3, "d41d8cd98f00b204e9800998ecf8427e") for k, _ in page.contents]
    return ET.fromstring(list_objects_xml("bucket", request, page, objects))


def test_encoding_type_url_encodes_keys_prefixes_and_delimiter() -> None:
    request = parse_list_request({"encoding-type": "url", "delimiter": "/", "prefix": "ä "}, True)
    root = _xml(request, ["ä b", "ä c/d", "ä \x01"])
    assert root.findtext(f"{NS}EncodingType") == "url"
    assert root.findtext(f"{NS}Prefix") == "%C3%A4%20"
    assert [e.text for e in root.iter(f"{NS}Key")] == ["%C3%A4%20%01", "%C3%A4%20b"]
    assert [e.findtext(f"{NS}Prefix") for e in root.iter(f"{NS}CommonPrefixes")] == ["%C3%A4%20c/"]
    assert root.findtext(f"{NS}Delimiter") == "/"


def test_without_encoding_type_keys_are_sent_as_they_are() -> None:
    root = _xml(parse_list_request({}, True), ["ä b", "<&>"])
    assert [e.text for e in root.iter(f"{NS}Key")] == ["<&>", "ä b"]
    assert root.find(f"{NS}EncodingType") is None


def test_v2_document_counts_keys_and_gives_the_next_token() -> None:
    request = parse_list_request({"max-keys": "2", "delimiter": "/", "start-after": "a"}, True)
    root = _xml(request, KEYS)
    assert root.findtext(f"{NS}KeyCount") == "2"
    assert root.findtext(f"{NS}IsTruncated") == "true"
    assert root.findtext(f"{NS}StartAfter") == "a"
    assert decode_token(root.findtext(f"{NS}NextContinuationToken") or "") == "c"
    assert root.find(f"{NS}Contents/{NS}Owner") is None  # fetch-owner not asked


def test_v1_document_gives_marker_and_next_marker_and_owner() -> None:
    request = parse_list_request({"max-keys": "1", "marker": "a"}, False)
    root = _xml(request, KEYS)
    assert root.findtext(f"{NS}Marker") == "a"
    assert root.findtext(f"{NS}NextMarker") == "b/1"
    assert root.find(f"{NS}KeyCount") is None
    assert root.find(f"{NS}Contents/{NS}Owner") is not None


# --- ListParts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakePart:
    number: int


def test_parts_page_after_a_marker_in_number_order() -> None:
    parts = [FakePart(n) for n in (5, 1, 3, 2, 10)]
    page, truncated, next_marker = parts_page(parts, PartsRequest(marker=1, max_parts=2))
    assert [p.number for p in page] == [2, 3] and truncated and next_marker == 3
    page, truncated, next_marker = parts_page(parts, PartsRequest(marker=3, max_parts=2))
    assert [p.number for p in page] == [5, 10] and not truncated and next_marker == 10


def test_parts_page_of_zero_keeps_the_marker() -> None:
    page, truncated, next_marker = parts_page([FakePart(1)], PartsRequest(marker=0, max_parts=0))
    assert page == [] and truncated and next_marker == 0


@pytest.mark.parametrize("query", [{"max-parts": "-1"}, {"part-number-marker": "x"}, {"part-number-marker": "-2"}])
def test_bad_parts_parameters_are_invalid_argument(query: dict[str, str]) -> None:
    with pytest.raises(S3Error) as info:
        parse_parts_request(query)
    assert info.value.code == "InvalidArgument"


# --- ListMultipartUploads ----------------------------------------------------------------------


@dataclass(frozen=True)
class FakeUpload:
    key: str
    upload_id: str
    created: float


UPLOADS = [FakeUpload("b", "u3", 3.0), FakeUpload("a", "u2", 2.0), FakeUpload("a", "u1", 1.0),
           FakeUpload("c/d", "u4", 4.0)]


def test_uploads_in_key_then_start_order_under_a_prefix() -> None:
    page, truncated = uploads_page(UPLOADS, UploadsRequest())
    assert [u.upload_id for u in page] == ["u1", "u2", "u3", "u4"] and not truncated
    page, _ = uploads_page(UPLOADS, UploadsRequest(prefix="c/"))
    assert [u.upload_id for u in page] == ["u4"]


def test_uploads_paging_by_key_and_upload_id_marker_sees_each_once() -> None:
    seen: list[str] = []
    request = parse_uploads_request({"max-uploads": "1"})
    for _ in range(10):
        page, truncated = uploads_page(UPLOADS, request)
        seen += [u.upload_id for u in page]
        if not truncated:
            break
        request = UploadsRequest(key_marker=page[-1].key, upload_id_marker=page[-1].upload_id, max_uploads=1)
    assert seen == ["u1", "u2", "u3", "u4"]


def test_a_key_marker_alone_skips_every_upload_of_that_key() -> None:
    page, _ = uploads_page(UPLOADS, UploadsRequest(key_marker="a"))
    assert [u.upload_id for u in page] == ["u3", "u4"]


def test_bad_max_uploads_is_invalid_argument() -> None:
    with pytest.raises(S3Error):
        parse_uploads_request({"max-uploads": "-5"})
    assert parse_uploads_request({"max-uploads": "99999"}).max_uploads == 1000
