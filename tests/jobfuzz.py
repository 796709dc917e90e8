"""Seeded, deterministic mutations of a real getJob dict, for the fuzz tests of job-definition parsing.

The base is the job a panda-server 0.8.1 handed out (``tests/fixtures/panda/getJob-4.json``), with its
own file names per PandaID and a trivial payload (``echo`` into its one output).  Each mutated job gets
one to three mutations: wrong types, NUL bytes, unicode (lone surrogates included), unequal per-file
lists, hostile file names, absurd numbers, bad flags, missing fields, nested junk under unknown keys.
The PandaID itself stays readable (``PandaID`` mutations keep the number; the server keys jobs by it).
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcpilot.errors import PilotError
from hpcpilot.records import JobSpec

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "panda" / "getJob-4.json"
_TEMPLATE_NAME = "hpcpilot-81e09722-82dc-4b88-b026-c2f76f3df49f"

INT_FIELDS = ("attemptNr", "coreCount", "minRamCount", "maxWalltime", "taskID", "jobsetID")
TEXT_FIELDS = ("transformation", "jobPars", "scopeOut", "scopeLog", "logGUID", "realDatasets", "ddmEndPointOut",
               "destinationDblock", "cloud", "jobName")
NAME_FIELDS = ("outFiles", "logFile", "inFiles")
FLAG_FIELDS = ("loopingCheck", "allowNoOutput", "debug", "eventService")
PER_INPUT = ("GUID", "fsize", "checksum", "scopeIn", "realDatasetsIn", "ddmEndPointIn")

WRONG_TYPES: tuple[Any, ...] = (
    {"nested": 0}, [], [1, "a"], {"a": {"b": [None]}}, True, False, 1.5, -0.0, 1.0, "NaN", "nan", "inf",
    float("nan"), float("inf"), "\u0661\u0662", "1_000", " ", "NULL", None, "", "0x10", "1e5", "+5", " 7 ",
    "\u00e9t\u00e9", "\U0001f4a5", "\udc80", "x\0y", "a\nb",
)
ABSURD_NUMBERS: tuple[Any, ...] = (
    -1, -(2**63) + 1, 2**63 - 1, 2**62, 0, 2**31, 10**12, "99999999999999999999999", 1e308, -1e308, 10**30,
    "-0", "00000000000000000000000000007",
)
HOSTILE_NAMES: tuple[str, ...] = (
    "../../etc/passwd", "/etc/passwd", "-rf", "a/b", ".", "..", "x" * 300, "a\nb", "a\\b", ",", " , ",
    "pandaJob.json", "job_setup.sh", "a\x7fb", "a\0b", "\udc80.root", "\u202eevil.txt", "..\u2215x", "~root",
)
FLAG_VALUES: tuple[Any, ...] = ("True", "False", "maybe", 1, 0, 2, [], {"x": 1}, "yes", "", None, 1.0)
UNICODE_SAMPLES: tuple[str, ...] = ("\u00e9", "\u4e2d\u6587", "\U0001f600", "\u0000", "\udcff", "\u2028",
                                    "\u200b", "\ufeff", "\x1b[31m", "\r\n")


def base_job(panda_id: int) -> dict[str, Any]:
    """The captured real job, with its own PandaID and file names; its payload echoes into its output."""
    text = FIXTURE.read_text().replace(_TEMPLATE_NAME, f"fuzz-{panda_id}")
    job = json.loads(text)
    job.pop("StatusCode", None)
    job.update(PandaID=panda_id, attemptNr=1, logGUID=f"00000000-0000-4000-8000-{panda_id:012d}")
    return job


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def _wrong_type(rng: random.Random, job: dict[str, Any]) -> None:
    job[rng.choice(INT_FIELDS + TEXT_FIELDS + NAME_FIELDS + FLAG_FIELDS + PER_INPUT)] = rng.choice(WRONG_TYPES)


def _absurd_number(rng: random.Random, job: dict[str, Any]) -> None:
    key, value = rng.choice(INT_FIELDS), rng.choice(ABSURD_NUMBERS)
    if key == "attemptNr" and value in (10**30, "99999999999999999999999"):
        value = 2**62  # the server keeps attemptNr in a 64-bit column: a real one is never larger
    job[key] = value


def _nul_byte(rng: random.Random, job: dict[str, Any]) -> None:
    key = rng.choice(TEXT_FIELDS + NAME_FIELDS)
    text = job.get(key) if isinstance(job.get(key), str) else "x"
    at = rng.randrange(len(text) + 1)
    job[key] = text[:at] + "\0" + text[at:]


def _unicode(rng: random.Random, job: dict[str, Any]) -> None:
    key = rng.choice(TEXT_FIELDS + NAME_FIELDS + ("prodUserID", "homepackage"))
    text = job.get(key) if isinstance(job.get(key), str) else ""
    job[key] = text + "".join(rng.choice(UNICODE_SAMPLES) for _ in range(rng.randint(1, 3)))


def _unequal_lists(rng: random.Random, job: dict[str, Any]) -> None:
    n = rng.randint(1, 3)
    job["inFiles"] = ",".join(f"in{i}.root" for i in range(n))
    for key in rng.sample(PER_INPUT, rng.randint(1, 3)):
        job[key] = ",".join(f"{i}" for i in range(n + rng.choice((-1, 1, 2)) if n > 1 else n + 1))
    if rng.random() < 0.5:
        job["realDatasets"] = "ds"  # one entry for two outputs


def _hostile_name(rng: random.Random, job: dict[str, Any]) -> None:
    key = rng.choice(NAME_FIELDS)
    name = rng.choice(HOSTILE_NAMES)
    if key == "outFiles":
        name = f"{name},{job['logFile']}" if isinstance(job.get("logFile"), str) else name
    job[key] = name


def _bad_flag(rng: random.Random, job: dict[str, Any]) -> None:
    job[rng.choice(FLAG_FIELDS)] = rng.choice(FLAG_VALUES)


def _missing(rng: random.Random, job: dict[str, Any]) -> None:
    job.pop(rng.choice(("transformation", "jobPars", "logFile", "outFiles", "attemptNr", "coreCount")), None)


def _junk_key(rng: random.Random, job: dict[str, Any]) -> None:
    job[rng.choice(("x" * 200, "\u00fc\u00df", "a\0b", "\udc80", "nested"))] = _nested(rng.randint(1, 60))


def _panda_id_form(rng: random.Random, job: dict[str, Any]) -> None:
    job["PandaID"] = rng.choice((str(job["PandaID"]), f" {job['PandaID']} ", job["PandaID"]))


def _long_text(rng: random.Random, job: dict[str, Any]) -> None:
    job[rng.choice(("jobPars", "cloud", "jobName", "logGUID"))] = "y" * rng.choice((1000, 70_000, 300_000))


MUTATIONS: tuple[Callable[[random.Random, dict[str, Any]], None], ...] = (
    _wrong_type, _wrong_type, _absurd_number, _nul_byte, _unicode, _unequal_lists, _hostile_name, _bad_flag,
    _missing, _junk_key, _panda_id_form, _long_text,
)


def mutated_jobs(n: int, seed: int, first_id: int = 100_000, clean_share: float = 0.1) -> list[dict[str, Any]]:
    """``n`` jobs, PandaIDs ``first_id``.. in order; about ``clean_share`` of them left unmutated."""
    rng = random.Random(seed)
    jobs = []
    for i in range(n):
        job = base_job(first_id + i)
        if rng.random() >= clean_share:
            for mutate in rng.sample(MUTATIONS, rng.randint(1, 3)):
                mutate(rng, job)
        jobs.append(job)
    return jobs


def through_json(job: dict[str, Any]) -> dict[str, Any]:
    """The job as the pilot sees it after a JSON hop (server reply or access-point file)."""
    return json.loads(json.dumps(copy.deepcopy(job)))


FINAL = ("finished", "failed")


def final_updates(server: Any) -> Counter[int]:
    """How many final updateJob requests a PandaTestServer accepted for each job."""
    finals: Counter[int] = Counter()
    for request in server.requests("updateJob"):
        fields = request["fields"]
        if request["http_status"] == 200 and fields.get("state", fields.get("job_status")) in FINAL:
            finals[int(fields.get("jobId", fields.get("job_id")))] += 1
    return finals


def refusal(job: dict[str, Any]) -> int | None:
    """The code the pilot must fail ``job`` with at parse time, or None if it parses."""
    try:
        JobSpec.from_wire(through_json(job))
    except PilotError as exc:
        return int(exc.code)
    return None
