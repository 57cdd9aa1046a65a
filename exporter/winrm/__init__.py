"""The WinRM client: run one command on one server, get its output or a classified failure.

    from exporter.winrm import ServerConnection, PollFailure, CommandResult
    connection = ServerConnection(endpoint, module, max_response_bytes=..., max_poll_bytes=..., server_name=...)
    result = connection.run(command, deadline)   # CommandResult, or raises PollFailure(reason, message)
    connection.close()

Who reads each byte a server sends (every one of them under the poll's deadline and a size bound):

| module | job |
|---|---|
| `client.py` | `ServerConnection`: the shell's life (Create, Command, Receive, Signal, Delete), retries, one deadline; `Link`, the authenticated link WinRS and PSRP share: the kept channel, reused only while the server keeps it, it is not idle too long, and its Kerberos ticket outlives the poll |
| `session.py` | an authenticated connection (`Channel`); the HTTP token handshake; channel binding; message sealing over plain HTTP (MS-WSMV 2.2.9.1) with pyspnego's context (`MessageSeal`) |
| `ntlm.py`, `kerberos.py`, `credssp.py`, `basic.py`, `certificate.py` | one authentication each |
| `tickets.py` | a Kerberos module's own tickets: keytab or password, a MEMORY cache, renewal (python-krb5) |
| `connection.py` | one HTTP/1.1 connection on a socket: the request written, the answer read by http.client, bounded |
| `wsman.py` | the WS-Management messages, and every answer and fault read (no DTD, bounded elements) |
| `tls.py` | what the TLS connection trusts: `ca_file` or certifi's bundle, never the environment |
| `errors.py` | what can fail, and `classify` into the `reason` label |
| `psrp.py` | `PsrpConnection` (`protocol: psrp`): the same interface over PowerShell remoting, on psrpcore's client |
| `psrp_fragments.py` | every PSRP fragment checked before psrpcore parses it (sizes, order, runspace id, no DTD) |

Libraries are used through their public APIs only: pyspnego (`spnego.client`, `step`, `new_context`,
`wrap_winrm`/`unwrap_winrm`, channel bindings, `KerberosCCache`), python-krb5 (the kerberos extra:
`get_init_creds_keytab`/`_password` into MEMORY caches), the standard library's `http.client`, `socket` and `ssl`,
cryptography (the certificate's hash algorithm), certifi (the default trust store) and tenacity (retries).
"""

from .client import CommandResult, ServerConnection, connect
from .errors import PollFailure
from .psrp import PsrpConnection


__all__ = ["CommandResult", "PollFailure", "PsrpConnection", "ServerConnection", "connect"]
