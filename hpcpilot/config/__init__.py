"""Site configuration: one TOML file per site, typed, validated at load, overridable.

Every default the pilot uses lives in the dataclasses of ``schema`` (pilot3's defaults, from its
``default.cfg``), so a site file only names what differs.  Precedence, lowest first:
dataclass default < site TOML < ``HPCPILOT_<SECTION>_<KEY>`` environment variable < command
line.  The whole configuration is validated before anything starts: types, choices, every number finite and
within its key's ``Range`` (intervals > 0, counts >= 1, limits bounded), text without NUL, panda.server an http(s)
URL.  Each refusal is one line naming the file (or environment variable, or command line), the key, the value and
what was expected.

One module per job, each name importable from here:

* ``schema``: the sections and keys, their defaults and documentation, ``SiteConfig`` and what it renders;
* ``rules``: what a value must be (types, choices, ranges, text, the server URL) and ``validate_key``;
* ``load``: the layers and their precedence, ``load_config`` and ``parse_overrides`` (``--set``).
"""

from hpcpilot.config.load import ENV_PREFIX, Layer, load_config, parse_overrides
from hpcpilot.config.rules import (
    COUNT,
    DEFAULT_RANGE,
    DURATION,
    INT64,
    INTERVAL,
    MAX_COUNT,
    MAX_FETCHES_IN_FLIGHT,
    MAX_PERCENT,
    MAX_SECONDS,
    MAX_SENDERS,
    MAX_SIZE,
    PERCENT,
    SIZE,
    Range,
    value_range,
)
from hpcpilot.config.schema import (
    ContainerConfig,
    EventServiceConfig,
    HarvesterConfig,
    LauncherConfig,
    MonitorConfig,
    PandaConfig,
    SiteConfig,
    SiteSection,
    StageConfig,
    WalltimeConfig,
    documented_keys,
    replace,
    resolve_path,
)

__all__ = [
    "COUNT",
    "DEFAULT_RANGE",
    "DURATION",
    "ENV_PREFIX",
    "INT64",
    "INTERVAL",
    "MAX_COUNT",
    "MAX_FETCHES_IN_FLIGHT",
    "MAX_PERCENT",
    "MAX_SECONDS",
    "MAX_SENDERS",
    "MAX_SIZE",
    "PERCENT",
    "SIZE",
    "ContainerConfig",
    "EventServiceConfig",
    "HarvesterConfig",
    "LauncherConfig",
    "Layer",
    "MonitorConfig",
    "PandaConfig",
    "Range",
    "SiteConfig",
    "SiteSection",
    "StageConfig",
    "WalltimeConfig",
    "documented_keys",
    "load_config",
    "parse_overrides",
    "replace",
    "resolve_path",
    "value_range",
]
