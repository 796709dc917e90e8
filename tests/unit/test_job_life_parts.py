"""The pure parts of the seeds' job life: splitting transformations, choosing outputs, direct-access options,
catalogs (issue 16; the real runs are in tests/integration/test_job_life_seeds.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcpilot.catalogs import catalog_guids, write_pool_catalog
from hpcpilot.directaccess import adjust_step
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.jobsteps import Step, job_steps
from hpcpilot.outputs import choose_outputs, listed_outputs, spill_over_of
from hpcpilot.records import FileSpec, JobSpec
from tests.pilotrun import make_job


def _spec(**extra: object) -> JobSpec:
    return JobSpec.from_wire(make_job(1, "true", ["x.pool.root", "y.txt"], **extra))


def test_one_transformation_keeps_its_multi_line_parameters() -> None:
    steps = job_steps(_spec(transformation="/bin/sh", jobPars="-c 'echo a\necho b'", homepackage="Rel/1"))
    assert steps == [Step("/bin/sh", "-c 'echo a\necho b'", "Rel/1")]


@pytest.mark.parametrize(("pars", "home", "message"), [
    ("a\nb\nc", "", "jobPars has 3 line(s) but transformation has 2"),
    ("a\nb", "R/1\nR/2\nR/3", "homepackage has 3 line(s) but transformation has 2"),
])
def test_steps_that_do_not_line_up_fail_1312(pars: str, home: str, message: str) -> None:
    with pytest.raises(PilotError) as caught:
        job_steps(_spec(transformation="t1\nt2", jobPars=pars, homepackage=home))
    assert caught.value.code == ErrorCode.NOTSAMELENGTH and message in caught.value.diag


def test_one_release_serves_every_step_and_homepackage_must_be_text() -> None:
    steps = job_steps(_spec(transformation="t1\nt2", jobPars="a\nb", homepackage="R/1"))
    assert [s.homepackage for s in steps] == ["R/1", "R/1"]
    with pytest.raises(PilotError) as caught:
        job_steps(_spec(homepackage=["R/1"]))
    assert caught.value.code == ErrorCode.CONVERSIONFAILURE


def test_direct_access_options_are_added_or_removed_as_whole_words() -> None:
    step = Step("trf", "--inputEVNTFile=x --directIn --usePFCTurl --directInFoo")
    assert adjust_step(step, direct=False).job_pars == "--inputEVNTFile=x --directInFoo"
    assert adjust_step(Step("trf", "--a"), direct=True).job_pars == "--a --usePFCTurl --directIn"
    assert adjust_step(Step("trf", "--a --directIn"), direct=True).job_pars == "--a --usePFCTurl --directIn"


def test_spill_over_names_match_their_definition_entry() -> None:
    defined = {"x.pool.root": FileSpec("x.pool.root", dataset="ds")}
    assert spill_over_of("x.pool.root._001", defined) == defined["x.pool.root"]
    assert spill_over_of("x.pool.root._1", defined) is None
    assert spill_over_of("y.pool.root._001", defined) is None


def test_listed_outputs_of_a_report() -> None:
    assert listed_outputs("") is None and listed_outputs("[1]") is None and listed_outputs("{not json") is None
    text = '{"files": {"output": [{"subFiles": [{"name": "a"}, {"name": "b"}, {"name": "a"}, {"x": 1}]}, 7]}}'
    assert listed_outputs(text) == ["a", "b"]


def test_choose_outputs(tmp_path: Path) -> None:
    (tmp_path / "x.pool.root._002").write_text("x")
    (tmp_path / "y.txt").write_text("y")
    chosen = choose_outputs(_spec(), ["x.pool.root._002", "unknown"], tmp_path)
    assert [(o.lfn, o.entry.lfn) for o in chosen] == [("x.pool.root._002", "x.pool.root"), ("y.txt", "y.txt")]
    (tmp_path / "y.txt").write_text("")
    with pytest.raises(PilotError) as caught:
        choose_outputs(_spec(), ["x.pool.root._002"], tmp_path)
    assert caught.value.code == ErrorCode.ZEROFILESIZE
    assert [o.lfn for o in choose_outputs(_spec(allowNoOutput="true"), None, tmp_path)] == []


def test_catalog_guids_take_only_uuids(tmp_path: Path) -> None:
    good = "0a1b2c3d-0000-4000-8000-00000000abcd"
    write_pool_catalog(tmp_path / "c.xml", [(good, "a.root", "/p/a.root"), ("not-a-guid", "b.root", "/p/b")])
    assert catalog_guids(tmp_path / "c.xml") == {"a.root": good}
    (tmp_path / "bad.xml").write_text("<POOLFILECATALOG><File")
    assert catalog_guids(tmp_path / "bad.xml") == {} and catalog_guids(tmp_path / "none.xml") == {}
