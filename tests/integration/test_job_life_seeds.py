"""The rest of the seeds' job life (issue 16), provoked through real single-rank pilots with real payloads:
several transformations, outputs from the jobReport with spill-over files, catalogs, direct access,
credentials and AthenaMT relative output paths."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from tests.pilotrun import REPO, finish, make_access_point, make_job, run_pilot, start_pilot
from tests.unit.test_credentials import make_proxy

WORKDIR = Path("work") / "jobs" / "rank0"


def _sh(script: str) -> str:
    """One jobPars line for /bin/sh: ``-c '<script>'`` (the script has no single quotes)."""
    assert "'" not in script and "\n" not in script
    return f"-c '{script}'"


@pytest.mark.parametrize("ranks", [0, pytest.param(2, marks=pytest.mark.mpi)], ids=["single", "mpi2"])
def test_two_transformations_run_in_order_and_the_second_failure_ends_the_job(tmp_path: Path, ranks: int) -> None:
    job = make_job(1601, "", ["b.txt"], transformation="/bin/sh\n/bin/sh",
                   jobPars=_sh("echo one > a.txt; sleep 0.3") + "\n" + _sh("test -f a.txt && cp a.txt b.txt && exit 7"),
                   homepackage="AtlasOffline/24.0.1")
    ok = make_job(1602, "", ["d.txt"], transformation="/bin/sh\n/bin/sh",
                  jobPars=_sh("echo x > c.txt") + "\n" + _sh("cat c.txt c.txt > d.txt"),
                  homepackage="Rel/1\nRel/2")
    bad = make_job(1603, "", transformation="/bin/sh\n/bin/sh", jobPars=_sh("true"))
    run = run_pilot(tmp_path, [job, ok, bad], ranks=ranks)
    assert run.returncode == 0, run.stderr[-3000:]
    failed = run.jobs[1601]
    assert failed["state"] == "failed" and failed["pilotErrorCode"] == 1305
    assert failed["transExitCode"] == 7
    assert failed["pilotErrorDiag"] == "step 2 of 2 (sh) exited with code 7"
    workdir = tmp_path / "work" / "jobs" / f"rank{failed['rank']}" / "PandaJob_1601"
    assert (workdir / "b.txt").read_text() == "one\n"  # the second step saw the first's file: same workdir
    assert (workdir / "payload_steps.txt").read_text().split("\n")[:2] == ["1 0", "2 7"]
    assert len(failed["pilotTiming"].split("|")) == 6
    finished = run.jobs[1602]
    assert finished["state"] == "finished", finished
    assert (tmp_path / "outputs" / "d.txt").read_text() == "x\nx\n"
    assert run.jobs[1603]["pilotErrorCode"] == 1312
    assert "jobPars has 1 line(s) but transformation has 2" in run.jobs[1603]["pilotErrorDiag"]


def test_several_transformations_cover_cpu_time_of_all_steps(tmp_path: Path) -> None:
    burn = _sh("i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done")
    job = make_job(1604, "", transformation="/bin/sh\n/bin/sh", jobPars=f"{burn}\n{burn}")
    single = make_job(1605, "", transformation="/bin/sh", jobPars=burn)
    run = run_pilot(tmp_path, [job, single])
    assert run.returncode == 0, run.stderr[-3000:]
    both, one = run.jobs[1604], run.jobs[1605]
    assert both["state"] == one["state"] == "finished"
    assert one["cpuConsumptionTime"] >= 1
    assert both["cpuConsumptionTime"] >= 2 * one["cpuConsumptionTime"] - 1  # whole seconds, rounded


def _python_job(tmp: Path, panda_id: int, code: str, outputs: list[str], **extra: object) -> dict[str, object]:
    """A job whose payload is the Python script ``code``, written into ``tmp``."""
    script = tmp / f"payload_{panda_id}.py"
    script.write_text("import json, pathlib, sys\n" + code)
    return make_job(panda_id, "", outputs, transformation=sys.executable, jobPars=str(script), **extra)


def _report(*names: str, guids: dict[str, str] | None = None) -> str:
    """Python that writes a jobReport.json listing ``names`` as outputs (with their GUIDs where given)."""
    subs = [{"name": n, "file_guid": (guids or {}).get(n, ""), "nentries": 5} for n in names]
    return f"pathlib.Path('jobReport.json').write_text(json.dumps({{'exitCode': 0, 'files': " \
           f"{{'output': [{{'subFiles': {subs!r}}}]}}}}))\n"


def test_outputs_come_from_the_job_report_with_spill_over_files(tmp_path: Path) -> None:
    spill_guid = "5a1f0e2c-0000-4000-8000-000000000001"
    spill = _python_job(
        tmp_path, 1611,
        "for n in ('x.pool.root._001', 'x.pool.root._002'): pathlib.Path(n).write_text(n * 10)\n"
        + _report("x.pool.root._001", "x.pool.root._002", "stray.root", guids={"x.pool.root._001": spill_guid}),
        ["x.pool.root"], destinationDblock="dest.x_sub01,dest.log_sub01",
        destinationDBlockToken="ATLASDATADISK,ATLASDATADISK", realDatasets="ds.x,ds.log")
    dropped = _python_job(tmp_path, 1612, "pathlib.Path('a.txt').write_text('a')\n" + _report("a.txt"),
                          ["a.txt", "b.txt"], allowNoOutput="True")
    missing = _python_job(tmp_path, 1613, "pathlib.Path('a.txt').write_text('a')\n" + _report("a.txt"),
                          ["a.txt", "b.txt"])
    run = run_pilot(tmp_path, [spill, dropped, missing])
    assert run.returncode == 0, run.stderr[-3000:]
    record = run.jobs[1611]
    assert record["state"] == "finished", record
    report = record["xml"]
    assert set(report) == {"x.pool.root._001", "x.pool.root._002", "log.1611.tgz"}
    for name in ("x.pool.root._001", "x.pool.root._002"):
        entry = report[name]
        assert entry["spillOverOf"] == "x.pool.root" and entry["dataset"] == "ds.x"
        assert entry["destinationDblock"] == "dest.x_sub01" and entry["destinationDBlockToken"] == "ATLASDATADISK"
        assert entry["scope"] == "test"
        assert (tmp_path / "outputs" / name).read_text() == name * 10
    assert report["x.pool.root._001"]["guid"] == spill_guid
    assert not (tmp_path / "outputs" / "stray.root").exists()
    assert record["nEvents"] == 15
    assert run.jobs[1612]["state"] == "finished" and set(run.jobs[1612]["xml"]) == {"a.txt", "log.1612.tgz"}
    assert run.jobs[1613]["pilotErrorCode"] == 1165
    assert "b.txt" in run.jobs[1613]["pilotErrorDiag"]


CATALOG_PAYLOAD = """
import xml.etree.ElementTree as ET
root = ET.parse('PoolFileCatalog.xml').getroot()
inputs = {f.find('logical/lfn').get('name'): (f.get('ID'), f.find('physical/pfn').get('name'))
          for f in root.iter('File')}
guid, pfn = inputs['EVNT.cat.1']
pathlib.Path('seen.txt').write_text(guid + ' ' + pfn)
pathlib.Path('HITS.cat.1').write_text(pathlib.Path(pfn).read_text() * 2)
pathlib.Path('other.cat.1').write_text('other')
out = ET.SubElement(root, 'File', ID='%s')
ET.SubElement(ET.SubElement(out, 'logical'), 'lfn', name='HITS.cat.1')
ET.ElementTree(root).write('PoolFileCatalog.xml')
"""


def test_catalogs_inputs_for_the_payload_and_output_guids_from_its_catalog(tmp_path: Path) -> None:
    own_guid = "c0ffee00-1234-4abc-8def-00000000beef"
    data = b"event\n" * 10
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "EVNT.cat.1").write_bytes(data)
    job = _python_job(tmp_path, 1621, CATALOG_PAYLOAD % own_guid, ["HITS.cat.1", "other.cat.1"],
                      inFiles="EVNT.cat.1", fsize=str(len(data)), checksum="",
                      GUID="11111111-2222-4333-8444-555555555555", scopeIn="test")
    run = run_pilot(tmp_path, [job], settings=["stage.arc_output_files=true"])
    assert run.returncode == 0, run.stderr[-3000:]
    record = run.jobs[1621]
    assert record["state"] == "finished", record
    workdir = tmp_path / WORKDIR / "PandaJob_1621"
    guid, pfn = (workdir / "seen.txt").read_text().split()
    assert guid == "11111111-2222-4333-8444-555555555555" and Path(pfn) == workdir / "EVNT.cat.1"
    report = record["xml"]
    assert report["HITS.cat.1"]["guid"] == own_guid  # the payload's catalog names it
    made = report["other.cat.1"]["guid"]
    assert len(made) == 36 and made not in (own_guid, guid)  # not named: the pilot made one
    dump = json.loads((tmp_path / "access_point" / "event_status.dump.json").read_text())  # one job: at the top
    assert own_guid in {entry["guid"] for entry in dump["1621"]}
    out_catalog = (workdir / "OutPutFileCatalog.xml").read_text()
    assert f'ID="{own_guid}"' in out_catalog and f'ID="{made}"' in out_catalog and "log.1621.tgz" in out_catalog
    arc = (workdir / "OutputFiles.xml").read_text()
    assert "<outputfiles>" in arc and f"<guid>{own_guid}</guid>" in arc and "<lfn>HITS.cat.1</lfn>" in arc


def test_athenamt_relative_and_absolute_output_paths_both_finish_their_ranges(tmp_path: Path) -> None:
    panda_id, total = 1671, 12
    job = make_job(panda_id, "unused", eventService="True", transformation=sys.executable,
                   jobPars=f"{REPO / 'examples' / 'es_payload.py'} --ms-per-event 1 --relative-every 2")
    access_point = make_access_point(tmp_path / "access_point", [job])
    ranges = [{"eventRangeID": f"1-{panda_id}-1-{i}-1", "startEvent": i, "lastEvent": i, "LFN": "EVNT.es.root",
               "GUID": "G-es", "scope": "test"} for i in range(1, total + 1)]
    (access_point / "JobsEventRanges.json").write_text(json.dumps({str(panda_id): ranges}))
    run = finish(start_pilot(tmp_path, access_point, ["eventservice.payload_mode=protocol", "harvester.feed_timeout=0",
                                                      "eventservice.bundle_events=4"]), tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.jobs[panda_id]["state"] == "finished" and run.jobs[panda_id]["nEvents"] == total
    entries = json.loads((access_point / "event_status.dump.json").read_text())[str(panda_id)]
    by_range = {e["eventRangeID"]: e for e in entries if "eventRangeID" in e}
    assert set(by_range) == {r["eventRangeID"] for r in ranges}
    assert {e["eventStatus"] for e in by_range.values()} == {"finished"}
    members = []
    for path in {e["path"] for e in by_range.values()}:
        with zipfile.ZipFile(path) as archive:
            members += archive.namelist()
    assert len(members) == total
    rank_dirs = list((tmp_path / "work" / "jobs").glob(f"PandaJob_{panda_id}/rank*"))
    assert (rank_dirs[0] / "athenamt").is_dir()  # every 2nd range was answered relative to it (moved into zips)


ARGS_PAYLOAD = """
import xml.etree.ElementTree as ET
pfns = [pfn.get('name') for pfn in ET.parse('PoolFileCatalog.xml').getroot().iter('pfn')]
pathlib.Path('args.json').write_text(json.dumps({'argv': sys.argv[1:], 'pfns': pfns,
                                                 'data': [pathlib.Path(p).read_text() for p in pfns]}))
"""


def _staged_input(tmp: Path, name: str) -> dict[str, str]:
    data = f"events of {name}\n".encode()
    (tmp / "inputs").mkdir(exist_ok=True)
    (tmp / "inputs" / name).write_bytes(data)
    return {"inFiles": name, "fsize": str(len(data)), "checksum": "", "GUID": "G-1", "scopeIn": "test"}


def test_direct_access_adds_direct_in_and_staged_inputs_lose_it(tmp_path: Path) -> None:
    staged = _python_job(tmp_path, 1631, ARGS_PAYLOAD, [], **_staged_input(tmp_path, "EVNT.da.1"))
    staged["jobPars"] += " --directIn --keep --usePFCTurl"
    direct = _python_job(tmp_path, 1632, ARGS_PAYLOAD, [], transferType="direct",
                         **_staged_input(tmp_path, "EVNT.da.2"))
    missing = _python_job(tmp_path, 1633, ARGS_PAYLOAD, [], transferType="direct", inFiles="EVNT.none",
                          fsize="1", checksum="", GUID="G-1", scopeIn="test")
    run = run_pilot(tmp_path, [staged, direct, missing], settings=["stage.direct_access=true"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.jobs[1631]["state"] == run.jobs[1632]["state"] == "finished"
    seen = json.loads((tmp_path / WORKDIR / "PandaJob_1631" / "args.json").read_text())
    assert seen["argv"] == ["--keep"]  # every input staged in: the payload is not told to read turls
    assert seen["pfns"] == [str(tmp_path / WORKDIR / "PandaJob_1631" / "EVNT.da.1")]
    workdir = tmp_path / WORKDIR / "PandaJob_1632"
    seen = json.loads((workdir / "args.json").read_text())
    assert seen["argv"][-2:] == ["--usePFCTurl", "--directIn"]
    assert seen["pfns"] == [str(tmp_path / "inputs" / "EVNT.da.2")] and seen["data"] == ["events of EVNT.da.2\n"]
    assert not (workdir / "EVNT.da.2").exists()  # read in place, not copied
    assert run.jobs[1633]["pilotErrorCode"] == 1099 and "EVNT.none" in run.jobs[1633]["pilotErrorDiag"]


def test_direct_access_needs_the_site_switch(tmp_path: Path) -> None:
    job = _python_job(tmp_path, 1634, ARGS_PAYLOAD, [], transferType="direct", **_staged_input(tmp_path, "EVNT.da.4"))
    run = run_pilot(tmp_path, [job])
    assert run.jobs[1634]["state"] == "finished", run.jobs[1634]
    workdir = tmp_path / WORKDIR / "PandaJob_1634"
    assert json.loads((workdir / "args.json").read_text())["argv"] == []
    assert (workdir / "EVNT.da.4").exists()


@pytest.mark.parametrize("ranks", [0, pytest.param(3, marks=pytest.mark.mpi)], ids=["single", "mpi3"])
def test_a_proxy_with_ten_minutes_left_leases_nothing_1382(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          ranks: int) -> None:
    make_proxy(tmp_path / "x509up", 600)
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "x509up"))
    run = run_pilot(tmp_path, [make_job(1661, "echo never > o.txt", ["o.txt"])], ranks=ranks)
    assert run.returncode == 4, run.stderr[-3000:]  # the pilot gave up on its job source, saying why
    assert run.jobs == {}  # nothing leased, nothing run
    gave_up = run.summary["pilot"]["gave_up"]
    assert gave_up.startswith("credentials: PROXYTOOSHORT (1382): X.509 proxy") and "leasing nothing" in gave_up
    assert "PROXYTOOSHORT (1382)" in run.stdout + run.stderr
    assert not list((tmp_path / "work").glob("jobs/*/PandaJob_1661"))


def test_a_proxy_that_lasts_lets_the_pilot_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_proxy(tmp_path / "x509up", 3 * 3600)
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "x509up"))
    run = run_pilot(tmp_path, [make_job(1662, "echo ok > o.txt", ["o.txt"])])
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.jobs[1662]["state"] == "finished" and run.summary["pilot"]["gave_up"] is None
