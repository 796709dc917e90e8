"""Credentials before work (000 step 4): rank 0 leases nothing a proxy or token could not see through.

The X.509 proxy's remaining lifetime is read from the certificates in ``$X509_USER_PROXY`` (the earliest
``notAfter`` of the chain in the file: a proxy ends with the first certificate that ends), and an OIDC
token's from the ``exp`` claim of its JWT payload, re-read from the token file at every check (a site
refreshes the file in place; an opaque token, or one without ``exp``, sets no limit).  Signatures are
not checked: the server does that; this only asks how long the pilot can still talk to it.

``CredentialGuard.verdict`` says what rank 0 may still do (pilot-behaviour.md, proxy checks):

* before the first lease, less than ``panda.credential_min_lifetime`` left: PROXYTOOSHORT (1382);
* afterwards, less than ``ABOUT_TO_EXPIRE`` (40 min, pilot3's 1 h - 20 min) left: VOMSPROXYABOUTTOEXPIRE
  (1370) -- hpcpilot downloads no new proxy, so it leases nothing more and lets running jobs end;
* a proxy or token that cannot be read, or has ended: NOVOMSPROXY (1177).

Each verdict ends leasing for good (the scheduler's ``gave_up``: in summary.json and the closing line).
The files are read at most every ``panda.proxy_check_interval`` seconds (pilot3's proxy_verification_time).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcpilot.errors import ErrorCode

ABOUT_TO_EXPIRE = 40 * 60.0
MAX_CREDENTIAL_BYTES = 1 << 20


class CredentialUnreadable(Exception):
    """A proxy or token file that is missing, unreadable or holds no usable lifetime."""


def proxy_expiry(path: Path) -> float:
    """When the proxy in ``path`` ends (epoch seconds): the earliest notAfter of its certificates."""
    from cryptography import x509  # imported here: only rank 0 of a pilot with a proxy needs it

    try:
        data = path.read_bytes()[:MAX_CREDENTIAL_BYTES]
        certificates = x509.load_pem_x509_certificates(data)
    except OSError as exc:
        raise CredentialUnreadable(f"X.509 proxy {path} cannot be read ({exc.strerror})") from None
    except ValueError:
        raise CredentialUnreadable(f"X.509 proxy {path} holds no readable certificate") from None
    return min(cert.not_valid_after_utc.timestamp() for cert in certificates)


def token_expiry(path: Path) -> float | None:
    """The ``exp`` of the JWT in ``path`` (epoch seconds), or None for a token that names none."""
    try:
        text = path.read_text(errors="replace")[:MAX_CREDENTIAL_BYTES].strip()
    except OSError as exc:
        raise CredentialUnreadable(f"token file {path} cannot be read ({exc.strerror})") from None
    if not text:
        raise CredentialUnreadable(f"token file {path} is empty")
    parts = text.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


@dataclass(frozen=True)
class Verdict:
    """Why rank 0 leases nothing more: a PanDA code and a one-line reason (never a secret)."""

    code: ErrorCode
    diag: str

    def text(self) -> str:
        return f"{self.code.name} ({int(self.code)}): {self.diag}"


class CredentialGuard:
    """Rank 0's look at its credentials before it leases (see the module docstring)."""

    def __init__(self, proxy: Path | None, token: Path | None, min_lifetime: float, interval: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.proxy, self.token = proxy, token
        self.min_lifetime, self.interval, self.clock = min_lifetime, interval, clock
        self._checked_at: float | None = None
        self._left: tuple[float, str] | Verdict | None = None

    @classmethod
    def from_environ(cls, min_lifetime: float, interval: float,
                     environ: Mapping[str, str] | None = None) -> CredentialGuard | None:
        """The guard of the proxy and token the environment names (as hpcpilot.panda.auth finds them); None when
        there are none or ``min_lifetime`` is 0 (no checks)."""
        from hpcpilot.panda.auth import AuthError, find_token

        env = os.environ if environ is None else environ
        proxy = Path(env["X509_USER_PROXY"]) if env.get("X509_USER_PROXY") else None
        try:
            token_file = find_token(env)
        except AuthError:
            token_file = None  # the client refuses it with its own message when it needs it
        token = token_file.path if token_file is not None else None
        return cls(proxy, token, min_lifetime, interval) if (proxy or token) and min_lifetime > 0 else None

    def remaining(self) -> tuple[float, str] | Verdict | None:
        """Seconds left and which credential ends first; a Verdict when one cannot be read; None without limit."""
        now = self.clock()
        if self._checked_at is not None and now - self._checked_at < self.interval:
            return self._left
        self._checked_at = now
        ends: list[tuple[float, str]] = []
        try:
            if self.proxy is not None:
                ends.append((proxy_expiry(self.proxy), f"X.509 proxy {self.proxy}"))
            expiry = token_expiry(self.token) if self.token is not None else None
            if expiry is not None:
                ends.append((expiry, f"token {self.token}"))
        except CredentialUnreadable as exc:
            self._left = Verdict(ErrorCode.NOVOMSPROXY, str(exc))
            return self._left
        self._left = min(ends) if ends else None
        return self._left

    def verdict(self, leased_before: bool) -> Verdict | None:
        """None while the credentials last long enough for another job; else why not."""
        left = self.remaining()
        if left is None or isinstance(left, Verdict):
            return left
        end, what = left
        seconds = end - self.clock()
        if seconds <= 0:
            return Verdict(ErrorCode.NOVOMSPROXY, f"{what} has expired")
        if not leased_before and seconds < self.min_lifetime:
            return Verdict(ErrorCode.PROXYTOOSHORT, f"{what} has {seconds:.0f} s left, less than the "
                                                    f"{self.min_lifetime:.0f} s a job may need: leasing nothing")
        if leased_before and seconds < ABOUT_TO_EXPIRE:
            return Verdict(ErrorCode.VOMSPROXYABOUTTOEXPIRE, f"{what} has {seconds:.0f} s left, less than "
                                                             f"{ABOUT_TO_EXPIRE:.0f} s: leasing nothing more")
        return None
