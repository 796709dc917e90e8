"""The Harvester source at a million ranges, by counting (never timing): what an event_status report
writes does not grow with what waits in the file, a feed is not held in memory, a lease looks at a
constant number of places, and statuses gather for an interval without being lost at the end."""

from __future__ import annotations

import io
import json
import os
import random
import tracemalloc
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from hpcpilot.config import HarvesterConfig
from hpcpilot.errors import ConfigError
from hpcpilot.harvester import HarvesterSource, files, jsonstream, source
from hpcpilot.harvester.files import EventStatusFile
from hpcpilot.harvester.jsonstream import Cursor, JsonError, NotAnObject, members
from hpcpilot.records import EventRangeUpdate, JobRecord, JobSpec
from hpcpilot.sources import OutputBundle
from hpcpilot.states import EventRangeStatus, JobState
from tests.pilotrun import make_job

DUMP = "event_status.dump.json"
FEED = "JobsEventRanges.json"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every write to an event_status file (files._write_at is the only writer)."""
    sizes: list[int] = []
    real = files._write_at

    def counting(path: Path, data: bytes, offset: int | None) -> None:
        sizes.append(len(data))
        real(path, data, offset)

    monkeypatch.setattr(files, "_write_at", counting)
    return sizes


def _report(first: int, n: int = 100) -> dict[str, list[dict[str, Any]]]:
    return {"7": [{"eventRangeID": f"1-7-1-{i}-1", "eventStatus": "finished", "path": "/w/z.zip",
                   "type": "zip_output", "fsize": 123456, "chksum": "0badcafe"} for i in range(first, first + n)]}


def _es_job(panda_id: int = 7) -> dict[str, Any]:
    return make_job(panda_id, "true", eventService="True", taskID=3, jobsetID=2)


def _access_point(tmp_path: Path, panda_id: int = 7) -> Path:
    ap = tmp_path / "ap"
    ap.mkdir()
    (ap / "HPCJobs.json").write_text(json.dumps({str(panda_id): _es_job(panda_id)}))
    return ap


# ---- event_status.dump.json: a report costs what it adds --------------------------------------


def test_a_report_writes_the_same_bytes_whether_10_or_20000_entries_wait(tmp_path: Path,
                                                                         written: list[int]) -> None:
    def own_bytes(report: dict[str, list[dict[str, Any]]]) -> int:  # its entries, their commas and "]}"
        return len(",".join(json.dumps(e) for e in report["7"]).encode()) + 3

    status = EventStatusFile(tmp_path / DUMP)
    status.add(_report(0, 10))
    written.clear()
    status.add(_report(10))
    assert written == [own_bytes(_report(10))]
    for first in range(110, 20_110, 1000):  # Harvester keeps an earlier .read: nothing is taken
        status.add(_report(first, 1000))
    written.clear()
    status.add(_report(20_110))
    assert written == [own_bytes(_report(20_110))]  # one write, of the report's own bytes
    assert written[0] < (tmp_path / DUMP).stat().st_size / 100
    ids = [e["eventRangeID"] for e in json.loads((tmp_path / DUMP).read_text())["7"]]
    assert ids == [f"1-7-1-{i}-1" for i in range(20_210)]  # every entry once, in order


def test_appending_keeps_every_key_and_a_key_that_is_not_last_is_still_merged(tmp_path: Path) -> None:
    status = EventStatusFile(tmp_path / DUMP)
    for batch in ({"1": [{"n": 1}]}, {"1": [{"n": 2}], "2": [{"n": 3}]}, {"2": [{"n": 4}], "3": [{"n": 5}]},
                  {"1": [{"n": 6}]}, {"3": [], "4": [{"n": "é"}]}):
        status.add(batch)
    assert json.loads((tmp_path / DUMP).read_text()) == {"1": [{"n": 1}, {"n": 2}, {"n": 6}], "2": [{"n": 3}, {"n": 4}],
                                                         "3": [{"n": 5}], "4": [{"n": "é"}]}


def test_entries_reach_harvester_exactly_once_when_it_takes_between_appends(tmp_path: Path) -> None:
    rng, status, taken = random.Random(5), EventStatusFile(tmp_path / DUMP), []
    for n in range(300):
        status.add({str(n % 3): [{"id": n}]})
        if rng.random() < 0.2 and (tmp_path / DUMP).exists():
            os.rename(tmp_path / DUMP, tmp_path / "read")
            taken += [e["id"] for items in json.loads((tmp_path / "read").read_text()).values() for e in items]
    taken += [e["id"] for items in json.loads((tmp_path / DUMP).read_text()).values() for e in items]
    assert sorted(taken) == list(range(300))


def test_a_claim_cut_short_mid_append_keeps_every_whole_entry(tmp_path: Path) -> None:
    status = EventStatusFile(tmp_path / DUMP)
    status.add({"7": [{"id": 1}, {"id": 2}]})
    os.rename(tmp_path / DUMP, tmp_path / f".{DUMP}.merging")  # killed after claiming, half-way through its write
    with open(tmp_path / f".{DUMP}.merging", "r+b") as claim:
        claim.seek(-2, os.SEEK_END)
        claim.write(b',{"id": 3},{"id": 4')
    restarted = EventStatusFile(tmp_path / DUMP)
    restarted.add({"7": [{"id": 5}]})
    assert json.loads((tmp_path / DUMP).read_text()) == {"7": [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 5}]}
    assert len(list(tmp_path.glob(f".{DUMP}.merging.unreadable.*"))) == 1  # the cut file, kept for a look
    assert not (tmp_path / f".{DUMP}.merging").exists()


# ---- the source: statuses gather for an interval, and are all written at the end ------------------


def test_statuses_are_written_once_per_interval_and_at_close(tmp_path: Path, written: list[int]) -> None:
    ap, clock = _access_point(tmp_path), Clock()
    harvester = HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0, status_interval=5.0), clock)
    spec = JobSpec.from_wire(_es_job())
    for n in range(50):  # 50 reports in 4.9 s
        harvester.update_event_ranges(spec, [EventRangeUpdate(f"r{n}", EventRangeStatus.FINISHED)])
        harvester.poll(clock.now)
        clock.now += 0.1
    assert len(written) == 1  # the first report at once, the others gathered
    clock.now += 0.05
    harvester.poll(clock.now)
    assert len(written) == 2
    harvester.update_event_ranges(spec, [EventRangeUpdate("last", EventRangeStatus.FAILED, 1220)])
    assert len(written) == 2
    harvester.close()
    ids = [e["eventRangeID"] for e in json.loads((ap / DUMP).read_text())["7"]]
    assert ids == [f"r{n}" for n in range(50)] + ["last"] and len(written) == 3
    assert (ap / "kill_worker.json").exists()


def test_a_final_job_update_writes_its_ranges_then_its_outputs_at_once(tmp_path: Path) -> None:
    ap, clock = _access_point(tmp_path), Clock()
    harvester = HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0, status_interval=60.0), clock)
    spec = JobSpec.from_wire(_es_job())
    for name in ("a", "b"):
        harvester.update_event_ranges(spec, [EventRangeUpdate(name, EventRangeStatus.FINISHED)])
    record = JobRecord(7, state=JobState.FINISHED, output_report={"log.tgz": {"fsize": 9, "adler32": "00000009",
                                                                              "surl": "/w/log.tgz", "guid": "G"}})
    harvester.update_job(record, final=True)
    entries = json.loads((ap / DUMP).read_text())["7"]
    assert [e["eventRangeID"] if "eventRangeID" in e else e["type"] for e in entries] == ["a", "b", "output"]


def test_a_bundle_of_many_ranges_is_not_searched_once_per_range(tmp_path: Path) -> None:
    class CountingTuple(tuple):
        searched = 0

        def __contains__(self, item: object) -> bool:
            CountingTuple.searched += 1
            return super().__contains__(item)

    ap = _access_point(tmp_path)
    harvester = HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0, status_interval=0.0), Clock())
    ids = [f"r{n}" for n in range(5000)]
    bundle = OutputBundle("z.zip", 10, "0000000a", 5000, -1, 1000, path="/b/z.zip",
                          range_ids=CountingTuple(ids[:4000]), guid="G")
    harvester.update_event_ranges(JobSpec.from_wire(_es_job()),
                                  [EventRangeUpdate(i, EventRangeStatus.FINISHED) for i in ids], bundle)
    assert CountingTuple.searched == 0
    entries = json.loads((ap / DUMP).read_text())["7"]
    assert sum(e.get("type") == "zip_output" for e in entries) == 4000 and len(entries) == 5000


# ---- range feeds: streamed, not held ----------------------------------------------------------


def _write_feed(path: Path, panda_id: int, count: int, first: int = 0) -> None:
    with path.open("w") as out:
        out.write(f'{{"{panda_id}": [')
        for i in range(first, first + count):
            out.write(("," if i > first else "") + json.dumps(
                {"eventRangeID": f"1-{panda_id}-1-{i}-1", "startEvent": i, "lastEvent": i, "LFN": "EVNT.pool.root",
                 "GUID": "5C2F6B5E-4D7C-4F2A-9B1E-0D3C2A1B4E5F", "scope": "mc23", "PFN": "/data/EVNT.pool.root"}))
        out.write("]}")


def test_after_a_200k_range_feed_the_source_holds_what_was_leased_and_one_chunk(tmp_path: Path) -> None:
    ap, total, prefetch = _access_point(tmp_path), 200_000, 128
    _write_feed(ap / FEED, 7, total)
    harvester = HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0), Clock())
    spec = JobSpec.from_wire(_es_job())
    taken = harvester.fetch_event_ranges(spec, prefetch).leased + harvester.fetch_event_ranges(spec, prefetch).leased
    assert [r["startEvent"] for r in taken] == list(range(2 * prefetch))
    stock = harvester.ranges[7]
    assert stock.count == total - 2 * prefetch and len(stock.lists) == 1  # a count and a place in the file
    cursor = stock.lists[0].cursor
    assert cursor is not None and len(cursor.buf) <= jsonstream.CHUNK  # undecoded text: one chunk, not the feed
    harvester.close()
    assert stock.lists == deque() and stock.count == 0


def test_reading_a_feed_peaks_at_a_chunk_not_at_the_feed(tmp_path: Path) -> None:
    ap, total = _access_point(tmp_path), 20_000
    _write_feed(ap / FEED, 7, total)
    size = (ap / FEED).stat().st_size
    tracemalloc.start()
    try:
        harvester = HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0), Clock())
        assert len(harvester.fetch_event_ranges(JobSpec.from_wire(_es_job()), 100).leased) == 100
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 4  # parsed whole, the feed held about 5x its size (930 B a range)


def test_ranges_come_in_feed_order_across_feeds_and_chunks(tmp_path: Path) -> None:
    ap = _access_point(tmp_path)
    _write_feed(ap / FEED, 7, 1000)
    harvester = HarvesterSource(ap, HarvesterConfig(feed_timeout=30.0), Clock())
    spec = JobSpec.from_wire(_es_job())
    got = [r["startEvent"] for r in harvester.fetch_event_ranges(spec, 999).leased]
    (ap / "worker_requestevents.json").unlink()  # Harvester answers the request opened ahead of need ...
    _write_feed(ap / FEED, 7, 500, first=1000)  # ... with the next feed
    while len(got) < 1500:
        taken = harvester.fetch_event_ranges(spec, 7).leased
        assert taken
        got += [r["startEvent"] for r in taken]
        (ap / "worker_requestevents.json").unlink(missing_ok=True)
    assert got == list(range(1500)) and harvester.ranges[7].count == 0


def test_a_malformed_feed_gets_the_one_line_json_error_and_a_bad_range_is_handed_up(tmp_path: Path) -> None:
    ap = _access_point(tmp_path)
    text = '{"7": [{"eventRangeID": "a"}, {"eventRangeID": "b"} {"eventRangeID": "c"}]}'
    (ap / FEED).write_text(text)
    with pytest.raises(ValueError) as loads:
        json.loads(text)
    with pytest.raises(ConfigError) as refused:
        HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0), Clock())
    assert str(refused.value).endswith(f"{FEED} is not valid JSON ({loads.value})") and "\n" not in str(refused.value)
    (ap / FEED).write_text('[{"eventRangeID": "a"}]')
    with pytest.raises(ConfigError, match=r"must be a JSON object \{PandaID: \.\.\.\}, got list"):
        HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0), Clock())
    (ap / FEED).write_text('{"7": ["not a range", {"eventRangeID": "x"}], "8": 5}')
    harvester = HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0), Clock())
    leased = harvester.fetch_event_ranges(JobSpec.from_wire(_es_job()), 5).leased
    assert leased == ["not a range", {"eventRangeID": "x"}]


def test_a_lease_looks_in_two_directories_however_many_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ap = tmp_path / "ap"
    ids = list(range(100, 400))
    for panda_id in ids:
        (ap / str(panda_id)).mkdir(parents=True)
        (ap / str(panda_id) / "HPCJobs.json").write_text(json.dumps({str(panda_id): _es_job(panda_id)}))
    (ap / "worker_pandaids.json").write_text(json.dumps(ids))
    harvester = HarvesterSource(ap, HarvesterConfig(feed_timeout=0.0), Clock())
    looked: list[Path] = []
    real = source.take_aside
    monkeypatch.setattr(source, "take_aside", lambda path: looked.append(path) or real(path))
    _write_feed(ap / "250" / FEED, 250, 3)
    assert len(harvester.fetch_event_ranges(JobSpec.from_wire(_es_job(250)), 8).leased) == 3
    assert sorted(looked) == sorted([ap / FEED, ap / "250" / FEED])


# ---- the streaming reader says what json.loads says -------------------------------------------


def _streamed(data: bytes, chunk: int) -> Any:
    return {m.key: list(m.items) if m.offset >= 0 else m.value for m in members(Cursor(io.BytesIO(data), chunk=chunk))}


def test_the_streaming_reader_agrees_with_json_loads_at_any_chunk_size() -> None:
    rng = random.Random(11)
    for _ in range(400):
        doc = {f"k{k}é": [{"id": f"r{i}", "x": rng.random(), "s": "中" * rng.randint(0, 3), "n": 10**12 + i}
                          for i in range(rng.randint(0, 6))] if rng.random() < 0.9 else 5
               for k in range(rng.randint(0, 3))}
        text = json.dumps(doc, indent=rng.choice([None, 1]))
        if rng.random() < 0.5:
            cut = rng.randrange(len(text))
            text = text[:cut] + rng.choice([",", ":", "]", "}", '"', " x", ""]) + text[cut + 1:]
        try:
            expected: Any = json.loads(text)
        except ValueError as exc:
            expected = str(exc)
        for chunk in (1, 3, 64):
            try:
                got: Any = _streamed(text.encode(), chunk)
            except JsonError as exc:
                got = str(exc)
            except NotAnObject as exc:
                got = f"not an object: {exc}"
            if isinstance(expected, dict | str):
                assert got == expected, (text, chunk)
            else:
                assert got == f"not an object: {type(expected).__name__}", text
