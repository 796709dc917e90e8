"""Rank 0's aggregated stage-out of event-service outputs, and of the job's log at its end.

A bundle is a zip of finished ranges' outputs (stored, not deflated: event outputs are
compressed already).  It is written to ``<name>.part`` and renamed, so a crash mid-bundle
leaves no zip that could be mistaken for a complete one; it is then copied with the site's
copy tool and verified (size and checksum at the destination) -- or, when Harvester stages
(``harvester.stage``), verified and declared where it is, for Harvester to transfer, with one
GUID that every range in it is reported with.  Only after that are the
per-range outputs removed and the ranges reported finished; a pilot killed before the report
leaves the ranges in the journal, and the next run reports them failed (the server hands
them out again), so no range is ever reported finished without its output saved.

These functions run in rank 0's stage-out thread, never in its message loop.
"""

from __future__ import annotations

import logging
import os
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

from hpcpilot.config import SiteConfig
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.eventservice.messages import BundleStaged, CloseEsJob, EsJobClosed, MakeBundle
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.sources import OutputBundle
from hpcpilot.stageio import checksum, files, staging

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundles"


def bundle_lfn(updates: Sequence[EventRangeUpdate]) -> str:
    """pilot3's name for pre-merge outputs, after the first range in the bundle, as a zip."""
    return f"EventService_premerge_{updates[0].event_range_id}.zip"


def write_zip(updates: Sequence[EventRangeUpdate], path: Path) -> None:
    """Zip the outputs, each under its own name (prefixed by its range ID when two share one)."""
    part = path.with_name(path.name + ".part")
    seen: set[str] = set()
    with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for update in updates:
            name = Path(update.output).name
            arcname = name if name not in seen else f"{update.event_range_id}/{name}"
            seen.add(arcname)
            archive.write(update.output, arcname)
    with open(part, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(part, path)


def stage_bundle(job: JobSpec, updates: Sequence[EventRangeUpdate], num_events: int, job_dir: Path,
                 output_dir: Path, config: SiteConfig) -> OutputBundle:
    """Write, copy and verify one bundle; PilotError (with its stage-out code) if that fails."""
    lfn = bundle_lfn(updates)
    files.check_lfn(lfn)
    local = job_dir / BUNDLE_DIR / lfn
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_zip(updates, local)
    except OSError as exc:
        raise PilotError(ErrorCode.STAGEOUTFAILED,
                         f"cannot write bundle {lfn}: {exc.strerror or exc}") from None
    try:
        entry = staging.stage_out([(local, lfn)], output_dir, config)[lfn]
    except OSError as exc:
        raise PilotError(ErrorCode.STAGEOUTFAILED, f"cannot create {output_dir}: {exc.strerror or exc}") from None
    adler = entry.get("adler32") or checksum.adler32(entry["surl"])
    for update in updates:
        _remove(Path(update.output))
    if not staging.harvester_stages(config):
        _remove(local)  # the copy is verified; a zip declared in place is what Harvester transfers
    es = config.eventservice
    return OutputBundle(lfn=lfn, fsize=int(entry["fsize"]), adler32=adler, num_events=num_events,
                        objstore_id=es.objstore_id, path_convention=es.path_convention, path=entry["surl"],
                        range_ids=tuple(u.event_range_id for u in updates), guid=str(uuid.uuid4()))


def stage_job_log(job: JobSpec, record: JobRecord, job_dir: Path, output_dir: Path, config: SiteConfig) -> None:
    """Tar the shared job directory (without inputs and bundles) and stage it out into the record."""
    log_spec = job.log_file
    if log_spec is None or not job_dir.is_dir():
        return
    tarball = job_dir.parent / log_spec.lfn
    try:
        files.check_lfn(log_spec.lfn)
        inputs = [f.lfn for f in job.inputs]
        files.make_log_tarball(job_dir, tarball, exclude=[BUNDLE_DIR, *inputs])
        report = staging.stage_out([(tarball, log_spec.lfn)], output_dir, config)
    except PilotError as exc:
        log.error("job %d: log not staged out: %s", job.panda_id, exc.diag)
        record.fail(exc.code, f"log not staged out: {exc.diag}")
        return
    except OSError as exc:
        log.error("job %d: log not staged out: %s", job.panda_id, exc)
        return
    report[log_spec.lfn]["guid"] = log_spec.guid
    record.output_report = report


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError as exc:
        log.debug("could not remove %s: %s", path, exc)


def bundle_staged(action: MakeBundle, job_dir: Path, output_dir: Path, config: SiteConfig) -> BundleStaged:
    """Make and stage out one bundle (rank 0's stage-out thread), never raising: a bundle that fails
    comes back with its ranges and the failure, so they are reported failed instead of vanishing."""
    job = action.job
    try:
        staged = stage_bundle(job, action.updates, action.num_events, job_dir, output_dir, config)
    except PilotError as exc:
        log.error("job %d: bundle of %d range(s) not staged out: %s", job.panda_id, len(action.updates), exc.diag)
        return BundleStaged(job.panda_id, action.updates, None, (int(exc.code), exc.diag))
    except Exception as exc:  # the ranges must come back failed, not vanish with the thread
        log.error("job %d: bundle failed: %s", job.panda_id, exc)
        return BundleStaged(job.panda_id, action.updates, None, (int(ErrorCode.STAGEOUTFAILED), str(exc)))
    log.info("job %d: bundle %s (%d events, %d bytes) staged out", job.panda_id, staged.lfn, staged.num_events,
             staged.fsize)
    return BundleStaged(job.panda_id, action.updates, staged)


def job_log_staged(action: CloseEsJob, job_dir: Path, output_dir: Path, config: SiteConfig) -> EsJobClosed:
    """Stage the job's log out (rank 0's stage-out thread), never raising: the final report follows."""
    try:
        stage_job_log(action.job, action.record, job_dir, output_dir, config)
    except Exception as exc:  # the job must still get its final report
        log.error("job %d: log stage-out failed: %s", action.job.panda_id, exc)
    return EsJobClosed(action.record)
