"""Credential lifetimes (hpcpilot.credentials): real certificates made with ``cryptography``, real JWT-shaped tokens."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hpcpilot.credentials import CredentialGuard, CredentialUnreadable, proxy_expiry, token_expiry
from hpcpilot.errors import ErrorCode


def make_proxy(path: Path, seconds_left: float, chain_seconds: float | None = None) -> float:
    """A PEM proxy file (certificate, key, and optionally an issuing certificate) ending in ``seconds_left``."""
    now = datetime.datetime.now(datetime.UTC)
    pem = b""
    key = ec.generate_private_key(ec.SECP256R1())
    for left in [seconds_left] + ([chain_seconds] if chain_seconds is not None else []):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"proxy {left}")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(seconds=left)).sign(key, hashes.SHA256()))
        pem += cert.public_bytes(serialization.Encoding.PEM)
        if left == seconds_left:
            pem += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
    path.write_bytes(pem)
    return (now + datetime.timedelta(seconds=min(seconds_left, chain_seconds or seconds_left))).timestamp()


def make_token(path: Path, claims: dict[str, object]) -> None:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    path.write_text(f"eyJhbGciOiJub25lIn0.{body}.c2lnbmF0dXJl\n")


def test_proxy_expiry_is_the_earliest_certificate_of_the_file(tmp_path: Path) -> None:
    expected = make_proxy(tmp_path / "proxy", 7200, chain_seconds=900)
    assert abs(proxy_expiry(tmp_path / "proxy") - expected) <= 1
    (tmp_path / "junk").write_text("not a certificate")
    with pytest.raises(CredentialUnreadable, match="no readable certificate"):
        proxy_expiry(tmp_path / "junk")
    with pytest.raises(CredentialUnreadable, match="cannot be read"):
        proxy_expiry(tmp_path / "missing")


def test_token_expiry_from_the_jwt_payload(tmp_path: Path) -> None:
    make_token(tmp_path / "token", {"sub": "pilot", "exp": 1_900_000_000})
    assert token_expiry(tmp_path / "token") == 1_900_000_000
    make_token(tmp_path / "token", {"sub": "pilot"})
    assert token_expiry(tmp_path / "token") is None
    (tmp_path / "token").write_text("opaque-token-value")
    assert token_expiry(tmp_path / "token") is None
    (tmp_path / "token").write_text("")
    with pytest.raises(CredentialUnreadable, match="empty"):
        token_expiry(tmp_path / "token")


def test_verdicts_at_start_and_while_running(tmp_path: Path) -> None:
    make_proxy(tmp_path / "proxy", 600)
    guard = CredentialGuard(tmp_path / "proxy", None, min_lifetime=3600, interval=0)
    verdict = guard.verdict(leased_before=False)
    assert verdict is not None and verdict.code == ErrorCode.PROXYTOOSHORT == 1382
    assert "has 600 s left" in verdict.diag or "has 599 s left" in verdict.diag
    assert guard.verdict(leased_before=True).code == ErrorCode.VOMSPROXYABOUTTOEXPIRE == 1370
    make_proxy(tmp_path / "proxy", 3 * 3600)
    assert guard.verdict(leased_before=False) is None and guard.verdict(leased_before=True) is None
    (tmp_path / "proxy").write_text("garbage")
    assert guard.verdict(leased_before=True).code == ErrorCode.NOVOMSPROXY == 1177


def test_a_refreshed_token_is_read_again_after_the_check_interval(tmp_path: Path) -> None:
    clock = [1_000_000.0]
    make_token(tmp_path / "token", {"exp": clock[0] + 100})
    guard = CredentialGuard(None, tmp_path / "token", min_lifetime=3600, interval=600, clock=lambda: clock[0])
    assert guard.verdict(leased_before=True).code == ErrorCode.VOMSPROXYABOUTTOEXPIRE
    make_token(tmp_path / "token", {"exp": clock[0] + 86400})  # the site refreshed the file
    assert guard.verdict(leased_before=True) is not None  # not looked at again before the interval
    clock[0] += 600
    assert guard.verdict(leased_before=True) is None
    clock[0] += 86400
    assert guard.verdict(leased_before=True).code == ErrorCode.NOVOMSPROXY  # it ended


def test_from_environ(tmp_path: Path) -> None:
    make_proxy(tmp_path / "proxy", 600)
    assert CredentialGuard.from_environ(3600, 600, {}) is None
    assert CredentialGuard.from_environ(0, 600, {"X509_USER_PROXY": str(tmp_path / "proxy")}) is None
    guard = CredentialGuard.from_environ(3600, 600, {"X509_USER_PROXY": str(tmp_path / "proxy")})
    assert guard is not None and guard.proxy == tmp_path / "proxy"


def test_rank_0_leases_nothing_more_once_the_proxy_is_about_to_expire(tmp_path: Path) -> None:
    """The scheduler's lease decision: a job runs while the proxy lasts; with < 40 min left no new lease."""
    from hpcpilot.records import JobRecord
    from hpcpilot.scheduler import Fetch, JobEnded, JobsFetched, SendNoMoreWork, WorkRequested
    from hpcpilot.states import JobState
    from tests.unit.test_scheduler import of_type, spec, started

    make_proxy(tmp_path / "proxy", 2 * 3600)
    scheduler = started(1)
    scheduler.gate.credentials = CredentialGuard(tmp_path / "proxy", None, min_lifetime=3600, interval=0)
    assert of_type(scheduler.handle(1.0, [WorkRequested(1)]), Fetch) == [Fetch(1)]
    scheduler.handle(2.0, [JobsFetched((spec(1),))])
    make_proxy(tmp_path / "proxy", 30 * 60)  # the proxy was not renewed: 30 min left
    actions = scheduler.handle(3.0, [JobEnded(1, JobRecord(1, JobState.FINISHED)), WorkRequested(1)])
    assert not of_type(actions, Fetch) and of_type(actions, SendNoMoreWork) == [SendNoMoreWork(1)]
    assert scheduler.gave_up.startswith("credentials: VOMSPROXYABOUTTOEXPIRE (1370): X.509 proxy")
