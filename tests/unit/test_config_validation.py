"""Site configuration validation: the real loader fuzzed (hypothesis) and each documented refusal.

The property for every input - a TOML document, any bytes, any nesting, any value for any documented key
from the file, the environment or the command line: ``load_config`` returns a config whose every number is
finite and within its key's range, or raises ConfigError with one line.  Never another exception.
"""

from __future__ import annotations

import json
import math
import string
import tempfile
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcpilot.config import MAX_SECONDS, SiteConfig, documented_keys, load_config, value_range
from hpcpilot.errors import ConfigError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = [(section, key) for section, key, _default, _doc in documented_keys()]
SECTIONS = sorted({section for section, _ in KEYS})
NO_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def site_file() -> Iterator[Path]:
    """One file rewritten by every example (hypothesis runs many examples per test function)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "site.toml"


def _load_bytes(path: Path, data: bytes, **kwargs: Any) -> SiteConfig | ConfigError:
    path.write_bytes(data)
    return _load(path, **kwargs)


def _load(path: Path | None, overrides: dict[str, dict[str, Any]] | None = None,
          environ: dict[str, str] | None = None) -> SiteConfig | ConfigError:
    """The loader's outcome; anything but a config or a ConfigError propagates and fails the test."""
    try:
        config = load_config(path, overrides, NO_ENV if environ is None else environ)
    except ConfigError as exc:
        _assert_one_line(exc)
        return exc
    _assert_in_range(config)
    return config


def _assert_one_line(exc: ConfigError) -> None:
    text = str(exc)
    assert text and text == text.strip() and len(text.splitlines()) == 1 and "\r" not in text, repr(text)
    assert "\0" not in text and len(text) < 1000, repr(text[:300])


def _assert_in_range(config: SiteConfig) -> None:
    for section_name, section in config.sections().items():
        for f in fields(section):
            value = getattr(section, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert value_range(section_name, f.name).admits(value), (section_name, f.name, value)


# ---- TOML text from values ------------------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return key if key and all(c in string.ascii_letters + string.digits + "_-" for c in key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    """A Python value as a TOML value (json.dumps spells strings as valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _toml_document(doc: dict[str, dict[str, Any]]) -> str:
    out = []
    for section, values in doc.items():
        out.append(f"[{_toml_key(section)}]")
        out += [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(out) + "\n"


def _numbers() -> st.SearchStrategy[Any]:
    """Numbers near every documented bound, and far beyond them."""
    edges = [0, 1, -1, MAX_SECONDS, MAX_SECONDS + 1, 10**6, 10**6 + 1, 10**12, 10**12 + 1, 2**63, 10**19, 10**30]
    return st.one_of(st.sampled_from(edges), st.integers(), st.floats(allow_nan=True, allow_infinity=True))


_scalars = st.one_of(_numbers(), st.booleans(), st.text(max_size=40),
                     st.sampled_from(["", "nan", "inf", "-0", "1e400", "0x10", " 7 ", "http://h", "ftp://x",
                                      "https://[::1]:99999", "a\0b", "\udcff"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10)
_key_names = st.one_of(st.sampled_from(KEYS), st.tuples(st.sampled_from(SECTIONS), st.text(max_size=12)),
                       st.tuples(st.text(max_size=12), st.text(max_size=12)))
_settings = st.lists(st.tuples(_key_names, _values), max_size=6)


def _nest(pairs: list[tuple[tuple[str, str], Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for (section, key), value in pairs:
        out.setdefault(section, {})[key] = value
    return out


# ---- the property, through every way in ----------------------------------------------------------------------


@FUZZ
@given(pairs=_settings)
def test_random_toml_documents_give_a_config_or_one_line(site_file: Path, pairs: list[Any]) -> None:
    doc = _nest([((s, k), v) for (s, k), v in pairs if not isinstance(v, str) or "\udcff" not in v])
    _load_bytes(site_file, _toml_document(doc).encode())


@FUZZ
@given(pairs=_settings)
def test_random_command_line_values_give_a_config_or_one_line(pairs: list[Any]) -> None:
    _load(None, overrides=_nest(pairs))


@FUZZ
@given(values=st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=30) | _numbers().map(str)), max_size=5))
def test_random_environment_values_give_a_config_or_one_line(values: list[tuple[tuple[str, str], str]]) -> None:
    environ = {f"HPCPILOT_{section.upper()}_{key.upper()}": value.replace("\0", "") for (section, key), value in values}
    _load(None, environ=environ)


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_give_a_config_or_one_line(site_file: Path, data: bytes) -> None:
    _load_bytes(site_file, data)


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1, 5000), opener=st.sampled_from(["[", "{a = "]), where=st.sampled_from(["top", "key"]))
def test_any_nesting_gives_a_config_or_one_line(site_file: Path, depth: int, opener: str, where: str) -> None:
    closer = "]" if opener == "[" else "}"
    value = opener * depth + ("1" if opener != "[" else "") + closer * depth
    text = f"x = {value}\n" if where == "top" else f"[monitor]\nreport_interval = {value}\n"
    outcome = _load_bytes(site_file, text.encode())
    assert isinstance(outcome, ConfigError)
    assert str(site_file) in str(outcome)


@FUZZ
@given(key=st.sampled_from(KEYS), value=_values)
def test_any_value_for_a_documented_key_is_typed_and_in_range_or_refused(site_file: Path, key: tuple[str, str],
                                                                        value: Any) -> None:
    section, name = key
    outcome = _load(None, overrides={section: {name: value}})
    if isinstance(outcome, ConfigError):
        assert f"'{section}.{name}'" in str(outcome)
    if isinstance(value, str) and "\udcff" in value:
        return  # not TOML text; the command line above covered it
    from_file = _load_bytes(site_file, _toml_document({section: {name: value}}).encode())
    if isinstance(from_file, ConfigError):
        assert str(site_file) in str(from_file)


# ---- each refusal named in issue 12, and what stays accepted -------------------------------------------------


@pytest.mark.parametrize(("text", "names"), [
    ("[monitor]\nreport_interval = nan\n", ["'monitor.report_interval'", "nan", "> 0"]),
    ("[monitor]\nreport_interval = 0\n", ["'monitor.report_interval'", "0", "> 0"]),
    ("[monitor]\nreport_interval = -inf\n", ["'monitor.report_interval'", "-inf"]),
    ("[monitor]\nlost_rank_intervals = 0\n", ["'monitor.lost_rank_intervals'", ">= 1"]),
    ("[eventservice]\nranges_per_request = 0\n", ["'eventservice.ranges_per_request'", "got 0", ">= 1"]),
    ("[panda]\njobs_per_fetch = 0\n", ["'panda.jobs_per_fetch'", ">= 1"]),
    ("[walltime]\nlimit = 12345678901234567890\n", ["'walltime.limit'", "12345678901234567890", f"<= {MAX_SECONDS}"]),
    ("[walltime]\nlimit = 60\n", ["'walltime.limit'", "walltime.margin", "600"]),
    ("[panda]\nserver = 'ftp://x'\n", ["'panda.server'", "'ftp://x'", "http"]),
    ("[panda]\nserver = 'not-a-url'\n", ["'panda.server'", "'not-a-url'"]),
    ("[panda]\nserver = 'http://'\n", ["'panda.server'", "'http://'"]),
    ("[panda]\nserver = 'http://h:99999'\n", ["'panda.server'", "99999"]),
    ('[site]\nlocal_scratch = "a\\u0000b"\n', ["'site.local_scratch'", "NUL"]),
    ("[site]\n\"a\\nb\" = 1\n", ["unknown key", "'a\\nb'"]),
    ("[container]\nruntime = 'docker'\n", ["'container.runtime'", "'docker'", "charliecloud"]),
    ("[container]\nimage = '--privileged'\n", ["'container.image'", "'--privileged'", "'-'"]),
    ("[container]\nimage = 'a b'\n", ["'container.image'", "'a b'"]),
    ("[container]\nbinds = ['cvmfs']\n", ["'container.binds'", "'cvmfs'", "absolute"]),
    ("[container]\nbinds = ['/a,/b']\n", ["'container.binds'", "'/a,/b'"]),
    ("[container]\nbinds = ['/a:/b:rw']\n", ["'container.binds'", "'/a:/b:rw'"]),
    ("[container]\noptions = '--env \"A=1'\n", ["'container.options'", "quotation"]),
    ("[container]\nexecutable = 'bin/ch-run'\n", ["'container.executable'", "'bin/ch-run'", "absolute"]),
])
def test_each_bad_value_is_refused_in_one_line_naming_file_key_and_value(tmp_path: Path, text: str,
                                                                         names: list[str]) -> None:
    path = tmp_path / "site.toml"
    outcome = _load_bytes(path, text.encode())
    assert isinstance(outcome, ConfigError)
    for name in [str(path), *names]:
        assert name in str(outcome), (name, str(outcome))


def test_credentials_in_the_server_url_are_refused_without_echoing_them(tmp_path: Path) -> None:
    outcome = _load_bytes(tmp_path / "s.toml", b"[panda]\nserver = 'https://user:s3cret@panda.example'\n")
    assert isinstance(outcome, ConfigError) and "s3cret" not in str(outcome) and "panda.example" in str(outcome)


def test_the_origin_named_is_the_layer_that_set_the_value(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[monitor]\nreport_interval = 2.0\n")
    env = _load(path, environ={"HPCPILOT_MONITOR_REPORT_INTERVAL": "nan"})
    assert str(env).startswith("environment HPCPILOT_MONITOR_REPORT_INTERVAL: key 'monitor.report_interval'")
    cli = _load(path, overrides={"panda": {"server": "not-a-url"}})
    assert str(cli).startswith("command line: key 'panda.server'") and "'not-a-url'" in str(cli)


def test_precedence_is_default_file_environment_command_line(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[monitor]\nreport_interval = 2.0\nstatus_interval = 7.0\nkill_grace = 3.0\n")
    config = load_config(path, {"monitor": {"kill_grace": "5"}},
                         {"HPCPILOT_MONITOR_STATUS_INTERVAL": "8", "HPCPILOT_MONITOR_KILL_GRACE": "4"})
    assert (config.monitor.report_interval, config.monitor.status_interval, config.monitor.kill_grace) == (2, 8, 5)
    assert config.monitor.looping_limit == SiteConfig().monitor.looping_limit


@pytest.mark.parametrize("setting", [
    {"panda": {"server": "https://pandaserver.example:25443/server/panda"}},
    {"panda": {"server": "http://127.0.0.1:25080"}},
    {"panda": {"server": "http://[::1]:8080/"}},
    {"eventservice": {"objstore_id": -1, "report_interval": 0}},
    {"monitor": {"kill_grace": 0, "max_workdir_mb": 0, "looping_limit": 0}},
    {"walltime": {"limit": MAX_SECONDS, "margin": 0}},
    {"site": {"stagger_seconds": "0"}},
    {"container": {"runtime": "charliecloud", "image": "/images/el9", "binds": ["/cvmfs", "/scratch:/data"],
                   "options": "--set-env=A='x y'", "executable": "/usr/bin/ch-run"}},
    {"container": {"runtime": "podman-hpc", "image": "docker.io/library/busybox:1.36"}},
])
def test_meaningful_edge_values_stay_accepted(setting: dict[str, dict[str, Any]]) -> None:
    assert isinstance(_load(None, overrides=setting), SiteConfig)


def test_every_default_and_shipped_site_is_within_its_range() -> None:
    for section, key, default, doc in documented_keys():
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert value_range(section, key).admits(default), (section, key, default)
            assert "allowed:" in doc
    for path in sorted((Path(__file__).resolve().parents[2] / "site_configs").glob("*.toml")):
        assert isinstance(_load(path), SiteConfig), path


def test_the_sites_that_run_payloads_in_containers_name_their_runtimes() -> None:
    sites = Path(__file__).resolve().parents[2] / "site_configs"
    runtimes = {name: load_config(sites / f"{name}.toml", environ=NO_ENV).container.runtime
                for name in ("perlmutter", "frontier", "generic-slurm")}
    assert runtimes == {"perlmutter": "podman-hpc", "frontier": "apptainer", "generic-slurm": "none"}
