"""Which host names, addresses and proxy URLs the exporter accepts (the configuration and the collection
script both use these rules: tests/unit/test_scripts.py checks that they agree)."""

from __future__ import annotations

import pytest

from exporter.addresses import SERVER_NAME, is_host, is_proxy_url


@pytest.mark.parametrize(("text", "expected"), [
    ("ex01", True), ("ex01.contoso.com", True), ("ex01.contoso.com.", True), ("10.1.2.3", True), ("::1", True),
    ("[::1]", True), ("fd00::10", True),
    ("ex01/wsman", False), ("http://ex01", False), ("-ex01", False), ("ex01..contoso", False), ("ex 01", False),
    ("a" * 64, False),
    # a bracket without its pair: '[fd00::10' was taken, and the configuration dropped its last character with the
    # first one, polling fd00::1
    ("[fd00::10", False), ("fd00::10]", False), ("[[::1]]", False),
])
def test_host_names_and_addresses(text, expected):
    assert is_host(text) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("http://proxy:8080", True), ("https://proxy.contoso.com:3128/", True), ("http://10.0.0.1", True),
    ("http://[::1]:8080/", True), ("http://proxy:1", True), ("http://proxy:65535", True),
    ("http://proxy:0", False), ("http://proxy:65536", False), ("ftp://proxy", False), ("HTTP://proxy", False),
    ("http://[10.0.0.1]/", False), ("http://[::1]x/", False), ("http://::1/", False), ("http://proxy/x", False),
    ("http://user:pw@proxy/", False), ("http://proxy:8080'; calc; '", False), ("http://proxy\n", False),
])
def test_proxy_urls(text, expected):
    assert is_proxy_url(text) is expected


def test_server_names_are_label_safe():
    assert SERVER_NAME.fullmatch("EX01.contoso_lab-2")
    assert not SERVER_NAME.fullmatch("ex01/wsman") and not SERVER_NAME.fullmatch("a" * 256)
