"""Loading a site configuration: the layers and their precedence, lowest first: dataclass default < site TOML
< ``HPCPILOT_<SECTION>_<KEY>`` environment variable < command line (``--set SECTION.KEY=VALUE``).

The merged layers are validated as a whole before anything starts (``hpcpilot.config.rules``), each value
remembering where it came from, so a refusal names the file, environment variable or command line.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from hpcpilot.config.rules import shown_name, shown_value, validate_key
from hpcpilot.config.schema import SiteConfig
from hpcpilot.errors import ConfigError

ENV_PREFIX = "HPCPILOT_"
Layer = dict[str, dict[str, tuple[Any, str]]]  # section -> key -> (value, where it came from)


def _env_overrides(environ: Mapping[str, str]) -> Layer:
    """``HPCPILOT_MONITOR_LOOPING_LIMIT=60`` -> {"monitor": {"looping_limit": ("60", "environment HPCPILOT_...")}}."""
    out: Layer = {}
    section_names = [f.name for f in fields(SiteConfig) if f.name != "source"]
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX):].lower()
        for section in section_names:
            if rest.startswith(section + "_"):
                out.setdefault(section, {})[rest[len(section) + 1:]] = (value, f"environment {shown_name(key)}")
                break
    return out


def _tagged(layer: Mapping[str, Any], origin: str) -> Layer:
    """A file's or the command line's sections with their origin; a section that is not a table is refused."""
    out: Layer = {}
    for section, values in layer.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"{origin}: '{shown_name(section)}' must be a table of keys, got {shown_value(values)}")
        out[section] = {key: (value, origin) for key, value in values.items()}
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _read_toml(path: str | os.PathLike[str], origin: str) -> dict[str, Any]:
    """The parsed file; every way reading it can fail is one ConfigError line naming the file.

    Beyond syntax that covers bytes that are not UTF-8, nesting deeper than the parser's recursion limit and
    integers longer than Python converts: tomllib raises UnicodeDecodeError, RecursionError and ValueError
    for those, not TOMLDecodeError.
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{origin}: no such site config file") from None
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read site config ({exc.strerror or _one_line(exc)})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{origin}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
                          ) from None
    except RecursionError:
        raise ConfigError(f"{origin}: not usable TOML (arrays or tables nested too deeply)") from None
    except ValueError as exc:  # TOMLDecodeError, or a number of thousands of digits
        raise ConfigError(f"{origin}: not valid TOML ({_one_line(exc)})") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SiteConfig:
    """Load a site config file (or defaults), apply environment and command-line overrides, validate the whole.

    Every refusal is a ConfigError of one line naming where the value came from (file, environment variable or
    command line), the key, the value and what was expected.
    """
    raw: dict[str, Any] = {}
    origin = "<defaults>"
    if path is not None:
        origin = shown_name(str(path))
        raw = _read_toml(path, origin)
    merged: Layer = {}
    env = _env_overrides(os.environ if environ is None else environ)
    for layer in (_tagged(raw, origin), env, _tagged(overrides or {}, "command line")):
        for section, entries in layer.items():
            merged.setdefault(section, {}).update(entries)
    config = _assemble(merged, origin)
    _check_walltime(config, merged)
    return config


def _assemble(merged: Layer, origin: str) -> SiteConfig:
    section_types = {f.name: f.default_factory for f in fields(SiteConfig) if f.name != "source"}  # type: ignore[misc]
    built: dict[str, Any] = {}
    for section, entries in merged.items():
        if section not in section_types:
            first_origin = next(iter(entries.values()))[1] if entries else origin
            raise ConfigError(f"{first_origin}: unknown section '{shown_name(section)}' "
                              f"(known: {', '.join(section_types)})")
        cls = section_types[section]
        values = {key: validate_key(cls, section, key, value, key_origin)
                  for key, (value, key_origin) in entries.items()}
        built[section] = cls(**values)
    return SiteConfig(**built, source=origin)


def _check_walltime(config: SiteConfig, merged: Layer) -> None:
    """A set walltime.limit must exceed walltime.margin: else the guard winds the pilot down before any job."""
    limit, margin = config.walltime.limit, config.walltime.margin
    if limit and margin >= limit:
        given = merged.get("walltime", {})
        limit_origin = given.get("limit", (limit, config.source))[1]
        margin_origin = given.get("margin", (margin, "the default"))[1]
        raise ConfigError(f"{limit_origin}: key 'walltime.limit': expected more than walltime.margin "
                          f"({margin} s, from {margin_origin}), got {limit}")


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, str]]:
    """``--set monitor.looping_limit=30`` pairs as nested overrides: the command-line layer of ``load_config``,
    parsed here once for every command that takes ``--set`` (run, check-config, render-sbatch, deliver)."""
    out: dict[str, dict[str, str]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set {pair!r}: expected SECTION.KEY=VALUE")
        out.setdefault(section, {})[name] = value
    return out
