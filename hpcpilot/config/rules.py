"""What a configured value must be: type, choices, numeric range, clean text, a reachable server URL.

``validate_key`` checks one key's value against its declared type and these rules and returns the typed value;
every refusal is a ConfigError of one line naming where the value came from, the key, the value (quoted by
``shown_value``, as it may be hostile) and what was expected.
"""

from __future__ import annotations

import math
import reprlib
import shlex
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from hpcpilot.errors import ConfigError

_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("launcher", "kind"): ("local", "mpiexec", "mpirun", "srun"),
    ("stage", "copytool_in"): ("cp", "mv", "symlink"),
    ("stage", "copytool_out"): ("cp", "mv", "symlink"),
    ("stage", "checksum_type"): ("adler32", "md5"),
    ("panda", "api"): ("v1", "legacy", "auto"),
    ("eventservice", "payload_mode"): ("per-range", "protocol", "noop"),
    ("harvester", "stage"): ("harvester", "pilot"),
    ("harvester", "job_spec_format"): ("json", "cgi"),
    ("container", "runtime"): ("none", "apptainer", "singularity", "podman", "podman-hpc", "shifter", "charliecloud"),
    ("gpu", "bind"): ("auto", "none", "slurm"),
}


@dataclass(frozen=True)
class Range:
    """Where a numeric key must lie (always finite).

    A value outside is a typo or a unit mistake, never a wish: refused at start it costs a minute, accepted it
    costs an allocation (a nan interval never fires, 0 spins, a 20-digit limit overflows a sleep or a deadline).
    """

    low: int | float
    high: int | float
    above_low: bool = False  # the value must be strictly greater than ``low``

    def admits(self, value: float) -> bool:
        if not math.isfinite(value) or value > self.high:
            return False
        return value > self.low if self.above_low else value >= self.low

    def text(self) -> str:
        return f"{'>' if self.above_low else '>='} {self.low} and <= {self.high}"


MAX_SECONDS = 366 * 24 * 3600  # one year: longer than any allocation, job, heartbeat or timeout a site means
MAX_COUNT = 10**6  # more nodes, ranks, jobs per request or events per bundle than any machine has
MAX_SIZE = 10**12  # in the key's unit (kB or MB): beyond any disk, only refuses runaway digits
MAX_PERCENT = 10**4  # a grace of 100 times the limit
MAX_FETCHES_IN_FLIGHT = 64  # each is a thread at rank 0; more would only queue at the server
MAX_SENDERS = 64  # each is a sender thread at rank 0 with its own HTTP request in flight
INTERVAL = Range(0, MAX_SECONDS, above_low=True)  # a period or timeout: 0 would spin or never wait
DURATION = Range(0, MAX_SECONDS)  # a time where 0 means off, unlimited or at once (as documented per key)
COUNT = Range(1, MAX_COUNT)
SIZE = Range(0, MAX_SIZE)  # 0 = no limit or no check
PERCENT = Range(0, MAX_PERCENT)
INT64 = Range(-(2**63), 2**63 - 1)  # identifiers PanDA stores as database integers
_RANGES: dict[tuple[str, str], Range] = {
    ("site", "stagger_seconds"): DURATION,
    ("launcher", "nodes"): COUNT,
    ("launcher", "ranks_per_node"): COUNT,
    ("launcher", "cores_per_node"): Range(0, MAX_COUNT),
    ("launcher", "time_minutes"): Range(1, MAX_SECONDS // 60),
    ("launcher", "warning_seconds"): DURATION,
    ("walltime", "limit"): DURATION,
    ("walltime", "margin"): DURATION,
    **{("monitor", key): INTERVAL for key in ("report_interval", "memory_check_interval", "disk_check_interval",
                                              "looping_check_interval", "status_interval")},
    ("monitor", "looping_limit"): DURATION,
    ("monitor", "kill_grace"): DURATION,
    ("monitor", "lost_rank_intervals"): COUNT,
    **{("monitor", key): SIZE for key in ("free_space_start_mb", "free_space_running_mb", "stdout_limit_kb",
                                          "max_output_file_mb", "max_workdir_mb", "default_ram_per_core_mb")},
    ("monitor", "workdir_grace_percent"): PERCENT,
    ("monitor", "rss_grace_percent"): PERCENT,
    ("stage", "timeout_base"): INTERVAL,
    ("stage", "timeout_max"): INTERVAL,
    **{("panda", key): INTERVAL for key in ("heartbeat", "debug_heartbeat", "lost_heartbeat", "connect_timeout",
                                            "read_timeout", "call_deadline", "retry_initial", "retry_max")},
    ("panda", "jobs_per_fetch"): COUNT,
    ("panda", "fetches_in_flight"): Range(1, MAX_FETCHES_IN_FLIGHT),
    ("panda", "senders"): Range(1, MAX_SENDERS),
    ("panda", "credential_min_lifetime"): DURATION,
    ("panda", "proxy_check_interval"): INTERVAL,
    ("eventservice", "ranges_per_request"): COUNT,
    ("eventservice", "prefetch_seconds"): DURATION,
    ("eventservice", "bundle_events"): COUNT,
    ("eventservice", "bundle_seconds"): INTERVAL,
    ("eventservice", "objstore_id"): INT64,
    ("eventservice", "path_convention"): INT64,
    ("eventservice", "report_interval"): DURATION,
    ("harvester", "feed_timeout"): DURATION,
    ("harvester", "poll_interval"): INTERVAL,
    ("harvester", "status_interval"): DURATION,
    ("gpu", "per_rank"): Range(0, MAX_COUNT),
}
DEFAULT_RANGE = SIZE  # a numeric key not listed above: not negative, and bounded


def value_range(section: str, key: str) -> Range:
    """The allowed range of a numeric key (the one place that says it, shown in site_configs/README.md)."""
    return _RANGES.get((section, key), DEFAULT_RANGE)


_SHOW = reprlib.Repr()


def shown_value(value: Any) -> str:
    """A hostile value for a one-line message: repr (control characters escaped), bounded in length and depth."""
    return _SHOW.repr(value)


def shown_name(name: Any) -> str:
    """A section or key name as typed, unless it holds something that would break the line or flood it."""
    return name if isinstance(name, str) and name.isprintable() and len(name) <= 80 else shown_value(name)


def _coerce(value: Any, expected: type, where: str) -> Any:
    """Check one value against its declared type; strings (env, CLI) are converted, other types are not."""
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {shown_value(value)}")
    if expected in (int, float):
        return _coerce_number(value, expected, where)
    if expected is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {shown_value(value)}")
    # list[str]
    if isinstance(value, str):
        return [v for v in value.split() if v]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a list of strings, got {shown_value(value)}")


def _coerce_number(value: Any, expected: type, where: str) -> int | float:
    """An int or float key's value; a TOML float for an int key is refused, not truncated."""
    if isinstance(value, int | float) and not isinstance(value, bool) and (expected is float or isinstance(value, int)):
        try:
            return expected(value)  # type: ignore[no-any-return]
        except OverflowError:  # an integer beyond any float: out of every range
            return math.inf
    if isinstance(value, str):
        try:
            return expected(value.strip())  # type: ignore[no-any-return]
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected {'an integer' if expected is int else 'a number'}, got {shown_value(value)}")


def _check_text(typed: str | list[str], where: str) -> None:
    """Text goes into paths, argv and the environment: a NUL or an unencodable character can reach none of them."""
    for item in typed if isinstance(typed, list) else [typed]:
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{where}: expected UTF-8 text, got {shown_value(typed)}") from None
        if "\0" in item:
            raise ConfigError(f"{where}: expected text without NUL characters, got {shown_value(typed)}")


_SERVER_EXPECTED = "'' or an http:// or https:// URL with a host"


def _split_url(url: str) -> urllib.parse.SplitResult | None:
    """``url`` split, or None when no HTTP client could ever reach it (scheme, host, port, blanks)."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        port_ok = parts.port is None or parts.port > 0  # .port raises ValueError for a bad port
    except ValueError:
        return None
    return parts if port_ok and parts.scheme in ("http", "https") and parts.hostname else None


def _check_server(url: str, where: str) -> None:
    """panda.server: '' or a well-formed http(s) URL.

    Any other URL can never be reached, so it is a configuration error at start rather than a fault retried until
    the walltime.  A user or password in it is refused without echoing it: the server URL is logged.
    """
    if not url:
        return
    parts = _split_url(url)
    if parts is None:
        raise ConfigError(f"{where}: expected {_SERVER_EXPECTED}, got {shown_value(url)}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: expected {_SERVER_EXPECTED} and no user or password (the URL is logged), "
                          f"got a URL with credentials for {shown_value(parts.hostname)}")


def _check_image(image: str, where: str) -> None:
    """container.image: '' or one word that no runtime could take for an option."""
    if image and (image.startswith("-") or any(ch.isspace() or not ch.isprintable() for ch in image)):
        raise ConfigError(f"{where}: expected '' or an image name or path without blanks, not starting with '-', "
                          f"got {shown_value(image)}")


def _check_binds(binds: list[str], where: str) -> None:
    """container.binds: absolute HOST or HOST:CTR paths; a comma or a third field would be read by apptainer
    as another bind or as mount options, so they are refused rather than passed on."""
    for bind in binds:
        parts = bind.split(":")
        if len(parts) > 2 or "," in bind or not all(part.startswith("/") for part in parts):
            raise ConfigError(f"{where}: expected absolute HOST or HOST:CTR paths without ',', got "
                              f"{shown_value(bind)}")


def _check_options(options: str, where: str) -> None:
    """container.options: a shell-like line (split with shlex); an unclosed quote would otherwise fail every job."""
    try:
        shlex.split(options)
    except ValueError as exc:
        raise ConfigError(f"{where}: expected options split like a shell line ({exc}), got "
                          f"{shown_value(options)}") from None


def _check_executable(path: str, where: str) -> None:
    """container.executable: '' (the runtime's name on PATH) or an absolute path."""
    if path and not path.startswith("/"):
        raise ConfigError(f"{where}: expected '' or an absolute path, got {shown_value(path)}")


_TEXT_CHECKS: dict[tuple[str, str], Callable[[Any, str], None]] = {
    ("panda", "server"): _check_server,
    ("container", "image"): _check_image,
    ("container", "binds"): _check_binds,
    ("container", "options"): _check_options,
    ("container", "executable"): _check_executable,
}


def validate_key(cls: type, section: str, key: str, value: Any, origin: str) -> Any:
    """Check one key of a section and return its typed value; the error names origin, key, value and the rule."""
    hints = get_type_hints(cls)
    if key not in hints:
        known = ", ".join(sorted(f.name for f in fields(cls)))
        raise ConfigError(f"{origin}: unknown key '{section}.{shown_name(key)}' (known: {known})")
    where = f"{origin}: key '{section}.{key}'"
    expected = hints[key]
    typed = _coerce(value, list if expected == list[str] else expected, where)
    if isinstance(typed, str | list):
        _check_text(typed, where)
        if (section, key) in _TEXT_CHECKS:
            _TEXT_CHECKS[(section, key)](typed, where)
    choices = _CHOICES.get((section, key))
    if choices and typed not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {shown_value(typed)}")
    if isinstance(typed, int | float) and not isinstance(typed, bool):
        allowed = value_range(section, key)
        if not allowed.admits(typed):
            kind = "an integer" if isinstance(typed, int) else "a number"
            raise ConfigError(f"{where}: expected {kind} {allowed.text()}, got {shown_value(typed)}")
    return typed
