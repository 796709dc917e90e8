"""The Harvester access point without processes: the file hand-overs, the source's late binding on a
fake clock, the mappings and formats, Harvester-placed inputs and outputs declared in place."""

from __future__ import annotations

import json
import os
import random
import zlib
from pathlib import Path
from urllib.parse import urlencode

import pytest

from hpcpilot.config import HarvesterConfig, load_config, replace
from hpcpilot.errors import ConfigError, ErrorCode, PilotError
from hpcpilot.harvester import HarvesterSource
from hpcpilot.harvester.catalog import place_inputs
from hpcpilot.harvester.files import EventStatusFile
from hpcpilot.harvester.source import FETCH_AWAITING_FEED, FETCH_OK
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.sources import FetchOutcome, OutputBundle
from hpcpilot.stageio import staging
from hpcpilot.states import EventRangeStatus, JobState
from tests.pilotrun import make_job

DUMP = "event_status.dump.json"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _source(ap: Path, clock: Clock | None = None, **config: object) -> HarvesterSource:
    return HarvesterSource(ap, HarvesterConfig(**{"feed_timeout": 30.0, **config}), clock or Clock())


def _top(ap: Path, *jobs: dict) -> Path:
    ap.mkdir(exist_ok=True)
    (ap / "HPCJobs.json").write_text(json.dumps({str(j["PandaID"]): j for j in jobs}))
    return ap


# ---- event_status.dump.json ----------------------------------------------------------------


def test_event_status_holds_only_what_harvester_has_not_taken(tmp_path: Path) -> None:
    status = EventStatusFile(tmp_path / DUMP)
    status.add({"1": [{"eventRangeID": "a"}]})
    status.add({"1": [{"eventRangeID": "b"}], "2": [{"eventRangeID": "c"}]})
    assert json.loads((tmp_path / DUMP).read_text()) == {"1": [{"eventRangeID": "a"}, {"eventRangeID": "b"}],
                                                         "2": [{"eventRangeID": "c"}]}
    os.rename(tmp_path / DUMP, tmp_path / f"{DUMP}.read")  # Harvester takes it
    status.add({"1": [{"eventRangeID": "d"}]})
    assert json.loads((tmp_path / DUMP).read_text()) == {"1": [{"eventRangeID": "d"}]}


def test_a_claim_left_by_a_killed_pilot_is_merged(tmp_path: Path) -> None:
    (tmp_path / f".{DUMP}.merging").write_text(json.dumps({"7": [{"eventRangeID": "left"}]}))
    EventStatusFile(tmp_path / DUMP).add({"7": [{"eventRangeID": "new"}]})
    assert json.loads((tmp_path / DUMP).read_text()) == {"7": [{"eventRangeID": "left"}, {"eventRangeID": "new"}]}
    assert not (tmp_path / f".{DUMP}.merging").exists()


def test_every_entry_reaches_harvester_exactly_once_whatever_the_interleaving(tmp_path: Path) -> None:
    rng = random.Random(13)
    status = EventStatusFile(tmp_path / DUMP)
    taken: list[str] = []
    for n in range(400):
        status.add({"5": [{"eventRangeID": str(n)}]})
        if rng.random() < 0.3 and (tmp_path / DUMP).exists():
            os.rename(tmp_path / DUMP, tmp_path / "read")
            taken += [e["eventRangeID"] for e in json.loads((tmp_path / "read").read_text())["5"]]
            assert (tmp_path / "read").stat().st_size < 40 * 60  # the file never carries what was taken
    taken += [e["eventRangeID"] for e in json.loads((tmp_path / DUMP).read_text())["5"]]
    assert taken == [str(n) for n in range(400)]


# ---- jobs: mappings, formats, secrets, late binding ------------------------------------------


def test_one_job_at_the_top_writes_its_files_there(tmp_path: Path) -> None:
    ap = _top(tmp_path / "ap", make_job(11, "true", pilotSecrets="s3cret-value", secrets="other-s3cret"))
    source = _source(ap)
    [job] = source.fetch_jobs(4).leased
    assert "pilotSecrets" not in job and "secrets" not in job
    assert source.job_secrets(11) == {"pilotSecrets": "s3cret-value", "secrets": "other-s3cret"}
    record = JobRecord(11, state=JobState.FINISHED, output_report={"o": {"fsize": 1, "adler32": "00000001",
                                                                        "surl": "/x/o", "guid": "G"}})
    source.update_job(record, final=True)
    attributes = json.loads((ap / "worker_attributes.json").read_text())
    assert attributes["jobStatus"] == "finished" and "xml" not in attributes
    assert json.loads((ap / DUMP).read_text())["11"] == [
        {"eventStatus": "finished", "path": "/x/o", "type": "output", "fsize": 1, "chksum": "00000001", "guid": "G"}]
    assert (ap / "jobReport.json").exists()


def test_multijobs_worker_reads_per_job_directories_in_cgi(tmp_path: Path) -> None:
    ap = tmp_path / "ap"
    for panda_id in (21, 22):
        (ap / str(panda_id)).mkdir(parents=True)
        (ap / str(panda_id) / "pandaJobData.out").write_text(urlencode(make_job(panda_id, "true")))
    (ap / "worker_pandaids.json").write_text("[21, 22]")
    source = _source(ap, job_spec_file="pandaJobData.out", job_spec_format="cgi")
    assert sorted(int(j["PandaID"]) for j in source.fetch_jobs(4).leased) == [21, 22]
    source.update_job(JobRecord(22, state=JobState.RUNNING), final=False)
    assert json.loads((ap / "22" / "worker_attributes.json").read_text())["jobStatus"] == "running"
    source.update_event_ranges(JobSpec.from_wire(make_job(22, "true")),
                               [EventRangeUpdate("r1", EventRangeStatus.FAILED, 1220)])
    assert json.loads((ap / "22" / DUMP).read_text())["22"][0]["eventRangeID"] == "r1"
    assert not (ap / DUMP).exists() and not (ap / "worker_attributes.json").exists()


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("HPCJobs.json", None, "no HPCJobs.json"),
    ("HPCJobs.json", "{not json", "not valid JSON"),
    ("worker_pandaids.json", "[31]", "31/HPCJobs.json: no HPCJobs.json"),
])
def test_an_unreadable_access_point_is_refused_at_start(tmp_path: Path, name: str, content: str | None,
                                                        expected: str) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match=expected):
        _source(tmp_path)


def test_late_binding_asks_for_jobs_and_gives_up_after_the_feed_timeout(tmp_path: Path) -> None:
    ap, clock = _top(tmp_path / "ap", make_job(41, "true")), Clock()
    source = _source(ap, clock)
    assert len(source.fetch_jobs(3).leased) == 1
    request = ap / "worker_requestjob.json"
    assert source.fetch_jobs(2) == FetchOutcome([], FETCH_AWAITING_FEED)
    assert json.loads(request.read_text()) == {"nJobs": 2}
    _top(ap, make_job(42, "true"))  # Harvester writes the feed while its request is still there ...
    assert source.fetch_jobs(2) == FetchOutcome([], FETCH_AWAITING_FEED)  # ... so it is not read yet
    request.unlink()  # ... and deletes the request when it is done
    outcome = source.fetch_jobs(2)
    assert [j["PandaID"] for j in outcome.leased] == [42] and outcome.status == FETCH_OK
    assert source.fetch_jobs(1) == FetchOutcome([], FETCH_AWAITING_FEED) and request.exists()
    clock.now += 30
    assert source.fetch_jobs(1) == FetchOutcome([], FETCH_OK)  # none is coming: the pilot ends
    assert not request.exists()
    source.close()
    assert (ap / "kill_worker.json").exists()


def test_feed_timeout_zero_never_asks(tmp_path: Path) -> None:
    ap = _top(tmp_path / "ap", make_job(51, "true"))
    source = _source(ap, feed_timeout=0.0)
    assert len(source.fetch_jobs(2).leased) == 1
    assert source.fetch_jobs(2) == FetchOutcome([], FETCH_OK)
    assert not (ap / "worker_requestjob.json").exists()


def test_event_ranges_are_asked_ahead_and_each_feed_is_taken_once(tmp_path: Path) -> None:
    job = make_job(61, "true", eventService="True", taskID=7, jobsetID=3)
    ap, clock = _top(tmp_path / "ap", job), Clock()
    ranges = [{"eventRangeID": f"r{i}", "startEvent": i, "lastEvent": i} for i in range(10)]
    (ap / "JobsEventRanges.json").write_text(json.dumps({"61": ranges[:6]}))
    source, spec = _source(ap, clock), JobSpec.from_wire(job)
    assert not (ap / "JobsEventRanges.json").exists()  # taken aside at start
    assert [r["eventRangeID"] for r in source.fetch_event_ranges(spec, 4).leased] == ["r0", "r1", "r2", "r3"]
    request = ap / "worker_requestevents.json"
    assert json.loads(request.read_text()) == {"61": {"nRanges": 4, "pandaID": 61, "taskID": 7, "jobsetID": 3}}
    (ap / "JobsEventRanges.json").write_text(json.dumps({"61": ranges[6:]}))
    assert len(source.fetch_event_ranges(spec, 4).leased) == 2  # the feed is not taken while the request is there
    request.unlink()
    assert [r["eventRangeID"] for r in source.fetch_event_ranges(spec, 4).leased] == ["r6", "r7", "r8", "r9"]
    assert source.fetch_event_ranges(spec, 4) == FetchOutcome([], FETCH_AWAITING_FEED)
    (ap / "JobsEventRanges.json").write_text(json.dumps({"61": []}))  # Harvester has no more
    request.unlink()
    assert source.fetch_event_ranges(spec, 4) == FetchOutcome([], FETCH_OK)
    assert len(list(ap.glob("JobsEventRanges.json.taken.*"))) == 3


def test_no_range_feed_within_the_timeout_ends_the_job(tmp_path: Path) -> None:
    job = make_job(71, "true", eventService="True")
    ap, clock = _top(tmp_path / "ap", job), Clock()
    source, spec = _source(ap, clock), JobSpec.from_wire(job)
    assert source.fetch_event_ranges(spec, 2) == FetchOutcome([], FETCH_AWAITING_FEED)
    clock.now += 31
    assert source.fetch_event_ranges(spec, 2) == FetchOutcome([], FETCH_OK)
    assert not (ap / "worker_requestevents.json").exists()


def test_zip_ranges_share_the_bundle_guid(tmp_path: Path) -> None:
    job = make_job(81, "true", eventService="True")
    source = _source(_top(tmp_path / "ap", job))
    bundle = OutputBundle("z.zip", 10, "0000000a", 2, -1, 1000, path="/b/z.zip", range_ids=("a", "b"), guid="G-1")
    updates = [EventRangeUpdate(r, EventRangeStatus.FINISHED) for r in ("a", "b")]
    source.update_event_ranges(JobSpec.from_wire(job), updates, bundle)
    entries = json.loads((tmp_path / "ap" / DUMP).read_text())["81"]
    assert {(e["type"], e["path"], e["guid"]) for e in entries} == {("zip_output", "/b/z.zip", "G-1")}


# ---- inputs Harvester placed, outputs declared in place ------------------------------------


def _catalog(path: Path, lfn: str, pfn: str) -> None:
    path.write_text('<?xml version="1.0" ?>\n<!DOCTYPE POOLFILECATALOG SYSTEM "InMemory">\n<POOLFILECATALOG>\n'
                    f'<File ID="G"><physical><pfn name="{pfn}"/></physical><logical><lfn name="{lfn}"/></logical>'
                    "</File>\n</POOLFILECATALOG>\n")


def test_placed_inputs_from_paths_catalog_or_links(tmp_path: Path) -> None:
    _catalog(tmp_path / "cat.xml", "b", "file:///store/b")
    (tmp_path / "c").write_text("linked")
    job = {"inFiles": "a,b,c,d", "inFilePaths": "/given/a,,,"}
    place_inputs(job, tmp_path, [tmp_path / "cat.xml", tmp_path / "missing.xml"])
    assert job["inFilePaths"] == f"/given/a,/store/b,{tmp_path / 'c'},"


def _config(stage: str) -> object:
    return replace(load_config(None, environ={}), "harvester", stage=stage)


def test_placed_input_is_linked_and_checked(tmp_path: Path) -> None:
    data = b"event data\n"
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "in.root").write_bytes(data)
    wire = make_job(91, "true", inputs=[("in.root", len(data), f"ad:{zlib.adler32(data):08x}")],
                    inFilePaths=str(tmp_path / "store" / "in.root"))
    for name in ("w1", "w2", "w3"):
        (tmp_path / name).mkdir()
    [path] = staging.stage_in(JobSpec.from_wire(wire), tmp_path / "nowhere", tmp_path / "w1", _config("harvester"))
    assert path.is_symlink() and path.read_bytes() == data
    (tmp_path / "store" / "in.root").write_bytes(data.upper())
    with pytest.raises(PilotError) as bad:
        staging.stage_in(JobSpec.from_wire(wire), tmp_path, tmp_path / "w2", _config("harvester"))
    assert bad.value.code == ErrorCode.GETADMISMATCH
    wire["inFilePaths"] = ""
    with pytest.raises(PilotError) as missing:
        staging.stage_in(JobSpec.from_wire(wire), tmp_path, tmp_path / "w3", _config("harvester"))
    assert missing.value.code == ErrorCode.STAGEINFAILED and "not placed by Harvester" in missing.value.diag


def test_outputs_declared_in_place_are_not_copied(tmp_path: Path) -> None:
    (tmp_path / "out.root").write_bytes(b"output")
    report = staging.stage_out([(tmp_path / "out.root", "out.root")], tmp_path / "outputs", _config("harvester"))
    assert report == {"out.root": {"fsize": 6, "adler32": f"{zlib.adler32(b'output'):08x}",
                                   "surl": str(tmp_path / "out.root")}}
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(PilotError) as empty:
        staging.stage_out([(tmp_path / "empty", "empty")], tmp_path / "outputs", _config("harvester"))
    assert empty.value.code == ErrorCode.ZEROFILESIZE
    copied = staging.stage_out([(tmp_path / "out.root", "out.root")], tmp_path / "outputs", _config("pilot"))
    assert copied["out.root"]["surl"] == str(tmp_path / "outputs" / "out.root")


def test_a_jobs_report_carries_its_nodes_maps_as_pilot3s_does(tmp_path: Path) -> None:
    """``worker_node`` and ``worker_node_gpus`` in jobReport.json, where panda-server's Adder reads them (there is
    no GPU here: the rank's node info is written as its inventory would write it)."""
    from hpcpilot.gpu.model import NODE_GPUS_KEY, RANK_GPUS_KEY, Gpu, NodeGpus, RankGpus

    ap = _top(tmp_path / "ap", make_job(12, "true"), make_job(13, "true"))
    source = HarvesterSource(ap, HarvesterConfig(feed_timeout=30.0), Clock(), site="PERLMUTTER", queue="NERSC_Q")
    gpus = NodeGpus(tuple(Gpu("NVIDIA", i, "NVIDIA A100-SXM4-40GB", 40960, architecture="Ampere",
                              framework="CUDA", framework_version="12.9", driver_version="575.51.03")
                          for i in range(4)), "nvml")
    node = {"node": "nid001", "cpu_model": "AMD EPYC 7763", "cores": 128, "mem": 257000, "cpu": 2450,
            NODE_GPUS_KEY: gpus.to_dict(), RANK_GPUS_KEY: RankGpus(("1",), {}, "auto").to_dict()}
    source.rank_ready(3, node)
    source.fetch_jobs(4)
    source.update_job(JobRecord(12, state=JobState.FINISHED, rank=3,
                                meta_data=json.dumps({"exitCode": 0, "files": {}})), final=True)
    report = json.loads((ap / "12" / "jobReport.json").read_text()) if (ap / "12").is_dir() else \
        json.loads((ap / "jobReport.json").read_text())
    assert report["exitCode"] == 0  # the payload's own report, with the maps merged in
    assert report["worker_node"] == {"site": "PERLMUTTER", "host_name": "nid001", "cpu_model": "AMD EPYC 7763",
                                     "panda_queue": "NERSC_Q", "n_logical_cpus": 128, "clock_speed": 2450,
                                     "total_memory": 257000, "cpu_architecture": report["worker_node"]
                                     ["cpu_architecture"]}
    assert report["worker_node_gpus"] == {"site": "PERLMUTTER", "host_name": "nid001", "vendor": "NVIDIA",
                                          "model": "NVIDIA A100-SXM4-40GB", "count": 4, "vram": 40960,
                                          "architecture": "Ampere", "framework": "CUDA",
                                          "framework_version": "12.9", "driver_version": "575.51.03"}
