"""A password in a value the exporter refuses (a proxy URL with user info, a build list URL) is not repeated in
the error that refuses it. Each test failed before its fix (a review of the configuration and the command line)."""

from __future__ import annotations

import textwrap

import pytest

from exporter import cli

from ..conftest import PASSWORD_ENV


PROXY_PASSWORD = "Pr0xyS3cret-eems"


def test_a_rejected_endpoint_proxy_with_a_password_is_not_repeated_in_the_error(tmp_path):
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
          - {{name: ex01.contoso.com, endpoint_proxy: 'http://svc-proxy:{PROXY_PASSWORD}@proxy.contoso.com:8080'}}
        """)
    with pytest.raises(ConfigError) as raised:
        load_config_text(text, tmp_path)
    assert raised.value.path == "servers[0].endpoint_proxy"
    assert PROXY_PASSWORD not in str(raised.value), str(raised.value)


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
