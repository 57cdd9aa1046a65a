"""A password in a value the exporter refuses (a proxy URL with user info, a build list URL) is not repeated in
the error that refuses it. Each test failed before its fix (a review of the configuration and the command line)."""

from __future__ import annotations

import textwrap

import pytest

from exporter import cli

from ..conftest import PASSWORD_ENV


PROXY_PASSWORD = "Pr0xyS3cret-eems"


# A password may hold any character; one with `/`, `?` or `#` ends urlsplit's authority early, so the user info
# was not found and the whole URL, password included, was repeated (a review of issue 24's fix).
SPLITTING_PASSWORDS = ("Pr0xy/S3cret", "Pr0xy?S3cret", "Pr0xy#S3cret", "Pr0xy/S3c?re#t")


@pytest.mark.parametrize("password", (PROXY_PASSWORD, *SPLITTING_PASSWORDS))
def test_a_rejected_endpoint_proxy_with_a_password_is_not_repeated_in_the_error(tmp_path, password):
    """A proxy URL with user info is refused (the script hands it to Invoke-WebRequest as it is), but the error
    quoted the whole URL, password included: check-config prints it, a reload logs it and POST /-/reload
    returns it."""
    from exporter.config import ConfigError, load_config_text

    text = textwrap.dedent(f"""\
        modules:
          default:
            username: 'EXCH\\svc_monitor'
            password_env: {PASSWORD_ENV}
        servers:
          - {{name: ex01.contoso.com, endpoint_proxy: 'http://svc-proxy:{password}@proxy.contoso.com:8080'}}
        """)
    with pytest.raises(ConfigError) as raised:
        load_config_text(text, tmp_path)
    assert raised.value.path == "servers[0].endpoint_proxy"
    assert "S3c" not in str(raised.value), str(raised.value)  # no part of the password


def test_windows_endpoint_does_not_print_the_password_of_a_refused_proxy(tmp_path, capsys):
    """`windows-endpoint --endpoint-proxy http://user:password@proxy:8080` is refused, with the password on
    stderr."""
    code = cli.main(["windows-endpoint", "--output", str(tmp_path / "out"), "--group", "CONTOSO\\EEMS Readers",
                     "--endpoint-proxy", f"http://svc-proxy:{PROXY_PASSWORD}@proxy.contoso.com:8080"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_USAGE
    assert PROXY_PASSWORD not in captured.err + captured.out, captured.err


def test_catalog_update_does_not_print_the_password_of_the_list_url(tmp_path, capsys):
    """display_source strips user:password@ from the URL it prints, but urllib keeps the user info in the host
    and http.client's InvalidURL ("nonnumeric port: '<password>@host'") is printed as the reason. The error is
    raised while the connection object is made: nothing is sent anywhere."""
    secret = "Cat4logS3cret"
    for command in (["catalog", "update", "--output", str(tmp_path / "catalog.tsv")], ["catalog", "diff"]):
        code = cli.main([*command, "--from", f"http://svc-catalog:{secret}@127.0.0.1/ExchangeBuildNumbers.csv"])
        captured = capsys.readouterr()
        assert code == cli.EXIT_USAGE
        assert secret not in captured.err + captured.out, captured.err


@pytest.mark.parametrize("url", [f"http://svc-proxy:{p}@proxy.contoso.com:8080" for p in SPLITTING_PASSWORDS]
                         + ["svc-proxy:Pr0xyS3cret@proxy.contoso.com:8080", "//svc-proxy:Pr0xyS3cret@proxy:8080"])
def test_without_userinfo_removes_a_password_that_splits_the_url(url):
    from exporter.addresses import is_proxy_url, without_userinfo

    shown = without_userinfo(url)
    assert shown is None or "S3c" not in shown, shown
    assert shown is None or not is_proxy_url(shown) or shown.endswith("proxy.contoso.com:8080")


def test_without_userinfo_keeps_what_has_no_user_info():
    from exporter.addresses import without_userinfo

    for url in ("http://proxy.contoso.com:8080", "https://host/list.csv", "no url at all", "", None):
        assert without_userinfo(url) == url
    assert without_userinfo("http://svc:Pr0xyS3cret@proxy.contoso.com:8080") == "http://proxy.contoso.com:8080"


@pytest.mark.parametrize("password", SPLITTING_PASSWORDS)
def test_windows_endpoint_does_not_print_a_proxy_password_that_splits_the_url(tmp_path, capsys, password):
    code = cli.main(["windows-endpoint", "--output", str(tmp_path / "out"), "--group", "CONTOSO\\EEMS Readers",
                     "--endpoint-proxy", f"http://svc-proxy:{password}@proxy.contoso.com:8080"])
    captured = capsys.readouterr()
    assert code == cli.EXIT_USAGE
    assert "S3c" not in captured.err + captured.out, captured.err


@pytest.mark.parametrize("password", SPLITTING_PASSWORDS)
def test_a_build_list_url_is_shown_without_a_password_that_splits_it(password):
    """display_source names the source on the terminal and in the written catalog file's comment. (Only the
    display is tested: a URL like this one is not fetched here.)"""
    from exporter.catalog_update import display_source

    shown = display_source(f"https://svc-catalog:{password}@builds.example.org/ExchangeBuildNumbers.csv")
    assert "S3c" not in shown, shown


@pytest.mark.parametrize("password", ["Cat/S3cret", "Cat#S3cret", "Cat?S3cret", "Cat@S3cret/x", "Cat@S3cret?x"])
def test_catalog_update_refuses_a_url_whose_password_splits_it(tmp_path, capsys, password):
    """urllib took `svc-catalog:Cat` for the host and port and printed "nonnumeric port: 'Cat'" (the password's
    start); with digits first ("8080/...") it would have connected to a host named by the user name and sent
    the rest of the password in the request line. Such a URL is now refused before anything is opened."""
    for command in (["catalog", "update", "--output", str(tmp_path / "catalog.tsv")], ["catalog", "diff"]):
        code = cli.main([*command, "--from", f"http://svc-catalog:{password}@127.0.0.1/ExchangeBuildNumbers.csv"])
        captured = capsys.readouterr()
        assert code == cli.EXIT_USAGE
        assert "Cat" not in captured.err.replace("catalog", "") + captured.out, captured.err
        assert "S3c" not in captured.err + captured.out, captured.err  # an '@' in the password: its netloc has one
        assert "percent-encode" in captured.err
