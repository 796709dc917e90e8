"""Where things are in a Harvester access point, and reading the job definitions Harvester wrote.

Harvester writes a worker's jobs one of two ways (its "mappings"), and reads every per-job file
back from the matching place:

* one job per worker: the job-spec file at the top, ``AP/HPCJobs.json``; the job's files
  (attributes, job report, event statuses, event requests) are in ``AP/`` itself;
* several jobs per worker (MultiJobs): ``AP/worker_pandaids.json`` lists the PandaIDs and each
  job's spec is in ``AP/<PandaID>/HPCJobs.json``, with nothing at the top; each job's files are
  in ``AP/<PandaID>/``.

A hand-made access point with several jobs in the top file (hpcpilot's examples) is treated
as the second mapping, so no two jobs share a file.  The job-spec file is JSON
``{PandaID: getJob dict}`` or, with ``job_spec_format = "cgi"``, one job's bare URL-encoded
getJob string.  Per-worker files (requests for jobs, heartbeat, kill) are always at the top.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from hpcpilot.config import HarvesterConfig
from hpcpilot.errors import ConfigError
from hpcpilot.harvester.files import load_json_object

log = logging.getLogger(__name__)

PANDA_IDS_FILE = "worker_pandaids.json"
"""Harvester names this file itself (no payload_interaction key)."""

FILE_NAME_KEYS = tuple(f.name for f in fields(HarvesterConfig) if f.name.endswith("_file"))


@dataclass(frozen=True)
class FoundJob:
    """A job definition read from the access point, and the directory of its per-job files."""

    key: str
    job: dict[str, Any]
    job_dir: Path


class AccessPoint:
    """The access point's directory and file names (from the site config's ``[harvester]``)."""

    def __init__(self, path: Path, config: HarvesterConfig) -> None:
        if not path.is_dir():
            raise ConfigError(f"{path}: the Harvester access point is not a directory")
        for key in FILE_NAME_KEYS:
            name = getattr(config, key)
            if not name or name in (".", "..") or "/" in name or "\0" in name:
                raise ConfigError(f"key 'harvester.{key}': expected a plain file name, got {name!r}")
        self.dir = path.absolute()
        self.config = config

    def top(self, name: str) -> Path:
        return self.dir / name

    def read_jobs(self, seen: set[str], strict: bool) -> list[FoundJob]:
        """The jobs in the access point whose key is not in ``seen``.

        ``strict`` (at start): anything unreadable is a ConfigError and an access point without
        a job-spec file or worker_pandaids.json is refused.  Otherwise (reading a feed) a file
        that does not parse is logged and skipped: it is read again at the next look.
        """
        spec_name, found = self.config.job_spec_file, []
        top, ids = self.top(spec_name), self.top(PANDA_IDS_FILE)
        if strict and not top.exists() and not ids.exists():
            raise ConfigError(f"{top}: no {spec_name} (nor {PANDA_IDS_FILE}) in the access point")
        if top.exists():
            jobs = self._guarded(lambda: self.read_spec_file(top), strict)
            one_job = len(jobs) == 1
            found += [FoundJob(k, job, self.dir if one_job else self.dir / k) for k, job in jobs.items()
                      if k not in seen]
        if ids.exists():
            keys = {f.key for f in found}  # a set: thousands of jobs in worker_pandaids.json
            for key in self._guarded(lambda: self.read_panda_ids(ids), strict):
                if key in seen or key in keys:
                    continue
                job_dir = self.dir / key
                jobs = self._guarded(lambda d=job_dir: self.read_spec_file(d / spec_name), strict)
                found += [FoundJob(k, job, job_dir) for k, job in jobs.items() if k not in seen]
                keys.update(jobs)
        return found

    @staticmethod
    def _guarded(read: Any, strict: bool) -> Any:
        try:
            return read()
        except ConfigError as exc:
            if strict:
                raise
            log.warning("access point: %s; looking again later", exc)
            return {}

    def read_spec_file(self, path: Path) -> dict[str, dict[str, Any]]:
        """``{PandaID: job dict}`` from one job-spec file, in the configured format."""
        name = self.config.job_spec_file
        if self.config.job_spec_format == "cgi":
            try:
                text = path.read_text().strip()
            except FileNotFoundError:
                raise ConfigError(f"{path}: no {name} in the access point") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read {name} ({exc})") from None
            job = dict(parse_qsl(text, keep_blank_values=True))
            if "PandaID" not in job:
                raise ConfigError(f"{path}: {name} is not a URL-encoded job with a PandaID (cgi format)")
            return {str(job["PandaID"]): job}
        jobs = load_json_object(path, name)
        out = {}
        for key, value in jobs.items():
            job = dict(parse_qsl(value, keep_blank_values=True)) if isinstance(value, str) else value
            if isinstance(job, dict):
                job = dict(job)
                job.setdefault("PandaID", key)  # Harvester keys the file by PandaID; the dict may omit it
            out[str(key)] = job
        return out

    @staticmethod
    def read_panda_ids(path: Path) -> list[str]:
        try:
            ids = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read {PANDA_IDS_FILE} ({str(exc).splitlines()[0]})") from None
        if not isinstance(ids, list):
            raise ConfigError(f"{path}: {PANDA_IDS_FILE} must be a JSON list of PandaIDs")
        return [str(i) for i in ids]
