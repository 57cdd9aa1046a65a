"""The TLS settings of a module: the server's certificate is checked against `ca_file`, or certifi's bundle
when none is set, and never against a bundle named by the environment (REQUESTS_CA_BUNDLE, SSL_CERT_FILE):
what the exporter trusts is what its configuration says.

Loading a CA bundle costs about 25 ms, so a context is built once per module and files, and shared by the
module's servers; a file rewritten in place (a rotated CA or client certificate) gives a new context.
"""

from __future__ import annotations

import os
import ssl
import threading

import certifi

from ..config import ModuleConfig

_CONTEXTS: dict[tuple, ssl.SSLContext] = {}
_LOCK = threading.Lock()
_KEPT = 64


def context(module: ModuleConfig) -> ssl.SSLContext:
    files = (module.ca_file, module.cert_file, module.key_file)
    key = (module.insecure_skip_verify, *((str(f), _version(f)) for f in files if f is not None))
    with _LOCK:
        found = _CONTEXTS.get(key)
    if found is not None:
        return found
    built = ssl.create_default_context(cafile=str(module.ca_file) if module.ca_file else certifi.where())
    if module.insecure_skip_verify:
        built.check_hostname = False
        built.verify_mode = ssl.CERT_NONE
    if module.cert_file and module.key_file:
        load_client_certificate(built, module.cert_file, module.key_file)
    with _LOCK:
        if len(_CONTEXTS) >= _KEPT:
            _CONTEXTS.clear()
        _CONTEXTS[key] = built
    return built


def load_client_certificate(built: ssl.SSLContext, cert_file, key_file) -> None:
    """The module's client certificate and key into `built`. Asked for a passphrase, OpenSSL would prompt on the
    terminal (a poll thread waiting there for ever) or, with none, fail with an EINVAL taken for a network error:
    the exporter has no passphrase to give, so an encrypted key is an SSLError (`tls_error`) that says so."""
    built.load_cert_chain(str(cert_file), str(key_file), password=_no_passphrase)


def _no_passphrase() -> bytes:
    raise ssl.SSLError("key_file is encrypted: the exporter takes a key without a passphrase (protect the file "
                       "by its permissions instead)")


def _version(path) -> tuple[int, int]:
    try:
        status = os.stat(path)
    except OSError:
        return (0, 0)
    return (status.st_mtime_ns, status.st_size)
