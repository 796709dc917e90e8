"""Credentials for the PanDA server and keeping secrets out of logs.

* OIDC/SciToken: the token file is named by ``$OIDC_AUTH_TOKEN`` or ``$PANDA_AUTH_TOKEN`` (a file
  name, or an absolute path) and looked up in ``$OIDC_AUTH_DIR``/``$PANDA_AUTH_DIR``, then the
  directory of ``$X509_USER_PROXY``, ``$PILOT_SOURCE_DIR``, ``$PILOT_WORK_DIR`` and ``$HOME``.  The
  file is re-read whenever it changes (inode, size or mtime), so a rotated token is used by the
  next request.  Headers: ``Authorization: Bearer <token>`` and ``Origin: <$OIDC_AUTH_ORIGIN or
  $PANDA_AUTH_ORIGIN>``.
* X.509: ``$X509_USER_PROXY`` (cert and key in one file) is sent as the client certificate.
* The server certificate is verified against the configured CA directory, else ``$X509_CERT_DIR``,
  else the system store.  Verification is never switched off.

Every secret the pilot handles is registered with ``register_secret``; ``install_log_redaction``
puts a log-record factory in place that replaces registered secrets (and any ``Bearer ...``) by
``***`` in every log message, whatever handler later writes it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REDACTED = "***"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+")
_installed = False


class AuthError(Exception):
    """Missing or unusable credentials or CA settings; one line naming the file or variable."""


def register_secret(value: Any) -> None:
    """Remember a secret (token, pilotSecrets values) so it is redacted from every log message."""
    if isinstance(value, Mapping):
        for item in value.values():
            register_secret(item)
        return
    if isinstance(value, list | tuple):
        for item in value:
            register_secret(item)
        return
    text = str(value).strip() if value is not None else ""
    if len(text) >= 6:
        with _secrets_lock:
            _secrets.add(text)


def redact(text: str) -> str:
    """``text`` with every registered secret and any bearer token replaced by ``***``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _BEARER.sub(r"\1" + REDACTED, text)


def install_log_redaction() -> None:
    """Redact secrets in every log record created from now on (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error handling
            return record
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def _token_dirs(environ: Mapping[str, str]) -> list[Path]:
    dirs = []
    for name in ("OIDC_AUTH_DIR", "PANDA_AUTH_DIR"):
        if environ.get(name):
            dirs.append(Path(environ[name]))
    if environ.get("X509_USER_PROXY"):
        dirs.append(Path(environ["X509_USER_PROXY"]).parent)
    for name in ("PILOT_SOURCE_DIR", "PILOT_WORK_DIR", "HOME"):
        if environ.get(name):
            dirs.append(Path(environ[name]))
    return dirs


class TokenFile:
    """An OIDC token file, re-read when it changes."""

    def __init__(self, path: Path, origin: str) -> None:
        self.path = path
        self.origin = origin
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    def token(self) -> str:
        """The current token; raises AuthError if the file is gone or empty."""
        try:
            st = self.path.stat()
        except OSError as exc:
            raise AuthError(f"token file {self.path} cannot be read ({exc.strerror})") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                try:
                    text = self.path.read_text().strip()
                except OSError as exc:
                    raise AuthError(f"token file {self.path} cannot be read ({exc.strerror})") from None
                if not text:
                    raise AuthError(f"token file {self.path} is empty")
                register_secret(text)
                if self._stamp is not None:
                    logger.info("token file %s changed; using the new token", self.path)
                self._token, self._stamp = text, stamp
            return self._token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}", "Origin": self.origin}


@dataclass
class Credentials:
    """What every request carries: token headers, a client certificate, the CA to verify the server."""

    token: TokenFile | None = None
    client_cert: str | None = None
    verify: str | bool = True

    def headers(self) -> dict[str, str]:
        return self.token.headers() if self.token else {}

    def describe(self) -> str:
        """A log line that names the kinds of credentials, never their contents."""
        parts = [f"token file {self.token.path}" if self.token else "no token",
                 f"proxy {self.client_cert}" if self.client_cert else "no proxy",
                 f"CA {self.verify}" if isinstance(self.verify, str) else "CA system store"]
        return ", ".join(parts)

    @classmethod
    def from_environ(cls, ca_dir: str = "", environ: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if environ is None else environ
        return cls(token=find_token(env), client_cert=find_proxy(env), verify=find_ca(ca_dir, env))


def find_token(environ: Mapping[str, str]) -> TokenFile | None:
    """The token file the environment names, or None when no token is configured."""
    name = environ.get("OIDC_AUTH_TOKEN") or environ.get("PANDA_AUTH_TOKEN")
    if not name:
        return None
    origin = environ.get("OIDC_AUTH_ORIGIN") or environ.get("PANDA_AUTH_ORIGIN") or ""
    candidate = Path(name)
    if candidate.is_absolute():
        if not candidate.is_file():
            raise AuthError(f"token file {candidate} does not exist")
        return TokenFile(candidate, origin)
    dirs = _token_dirs(environ)
    for directory in dirs:
        if (directory / name).is_file():
            return TokenFile(directory / name, origin)
    raise AuthError(f"token file {name!r} not found in {', '.join(str(d) for d in dirs) or 'any directory'}")


def find_proxy(environ: Mapping[str, str]) -> str | None:
    """``$X509_USER_PROXY`` if it names a file (else None)."""
    proxy = environ.get("X509_USER_PROXY")
    if not proxy:
        return None
    if not Path(proxy).is_file():
        raise AuthError(f"X509_USER_PROXY {proxy} does not exist")
    return proxy


def find_ca(ca_dir: str, environ: Mapping[str, str]) -> str | bool:
    """The CA directory (or bundle file) to verify the server with; True = the system store."""
    chosen = ca_dir or environ.get("X509_CERT_DIR", "")
    if not chosen:
        return True
    if not Path(chosen).exists():
        raise AuthError(f"CA directory {chosen} does not exist")
    return chosen
