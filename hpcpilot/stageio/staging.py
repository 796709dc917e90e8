"""Who moves a job's files: the pilot, with the site's copy tools, or Harvester.

``harvester.stage = "pilot"`` (and every PanDA-server run) copies inputs from ``stage.input_dir``
and outputs to ``stage.output_dir`` (``copytools``).  ``harvester.stage = "harvester"``, the
default for an access point, leaves the transfers to Harvester's stager, which would otherwise
move every file a second time:

* inputs are used where Harvester placed them -- the job's ``inFilePaths``, which rank 0 filled
  in from Harvester's catalog (``hpcpilot.harvester.catalog``) -- linked into the job workdir
  and checked by size and checksum as if they had been copied;
* outputs are verified (a non-empty regular file, its size and checksum) and declared where the
  job wrote them, with the same report a copy gives (``surl`` is that path); Harvester reads
  them from ``event_status.dump.json`` and transfers them.  The files must therefore stay: a
  workdir on node-local scratch (``site.local_scratch``) must be one Harvester can read.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from hpcpilot.config import SiteConfig
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.records import FileSpec, JobSpec, is_null
from hpcpilot.stageio import checksum, copytools
from hpcpilot.stageio.copytools import _local_output, _transfer
from hpcpilot.stageio.files import check_lfn, check_not_reserved, safe_join, safe_unzip, show_name

IN_FILE_PATHS = "inFilePaths"
"""The job field with the paths of the inputs Harvester placed, aligned with inFiles."""


def harvester_stages(config: SiteConfig) -> bool:
    """True when Harvester moves the files (the CLI sets ``harvester.stage = "pilot"`` for a PanDA server)."""
    return config.harvester.stage == "harvester"


def stage_in(spec: JobSpec, input_dir: Path, workdir: Path, config: SiteConfig,
             reserved: Collection[str] = ()) -> list[Path]:
    """The job's inputs in its workdir, verified; aligned with ``spec.inputs`` (see ``copytools.stage_in``)."""
    if not harvester_stages(config):
        return copytools.stage_in(spec.inputs, input_dir, workdir, config.stage, reserved=reserved)
    placed = placed_paths(spec)
    return [_link_placed(fspec, placed[i] if i < len(placed) else "", workdir, config, reserved)
            for i, fspec in enumerate(spec.inputs)]


def placed_paths(spec: JobSpec) -> list[str]:
    value = spec.wire.get(IN_FILE_PATHS)
    return [] if is_null(value) else [item.strip() for item in str(value).split(",")]


def _link_placed(fspec: FileSpec, placed: str, workdir: Path, config: SiteConfig,
                 reserved: Collection[str]) -> Path:
    check_lfn(fspec.lfn)
    check_not_reserved(fspec.lfn, reserved, "input")
    if not placed or not os.path.isfile(placed):
        where = f"at {show_name(placed)}" if placed else f"in {config.harvester.pool_catalog_file} or inFilePaths"
        raise PilotError(ErrorCode.STAGEINFAILED, f"input {show_name(fspec.lfn)} was not placed by Harvester "
                                                  f"(no file {where})")
    dst = safe_join(workdir, fspec.lfn, code=ErrorCode.STAGEINFAILED)
    _transfer(copytools.get_copytool("symlink"), Path(placed), dst, config.stage.timeout_base,
              (ErrorCode.STAGEINFAILED, ErrorCode.STAGEINTIMEOUT))
    checksum.verify_input(dst, fspec)
    if fspec.lfn.endswith(".zip"):
        safe_unzip(dst, workdir, reserved)
    return dst


def stage_out(files: Sequence[tuple[Path, str]], output_dir: Path, config: SiteConfig) -> dict[str, dict[str, Any]]:
    """``{lfn: {"fsize", "adler32" | "md5sum", "surl"}}`` for each (local path, LFN): copied, or declared in place.

    Raises PilotError like ``copytools.stage_out``; OSError only when ``output_dir`` cannot be made.
    """
    if not harvester_stages(config):
        if files:
            output_dir.mkdir(parents=True, exist_ok=True)
        return copytools.stage_out(files, output_dir, config.stage)
    return {lfn: _declare(Path(local), lfn, config) for local, lfn in files}


def _declare(local: Path, lfn: str, config: SiteConfig) -> dict[str, Any]:
    check_lfn(lfn)
    size = _local_output(local, lfn)
    algo = checksum.algorithm(config.stage.checksum_type)
    key = "adler32" if algo == checksum.ADLER32 else "md5sum"
    return {"fsize": size, key: checksum.compute(local, algo), "surl": os.path.abspath(local)}
