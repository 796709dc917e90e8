"""POOL file catalogs in the job workdir (004 steps 14, 15 and 17a).

* ``PoolFileCatalog.xml``: the staged-in inputs (GUID, LFN, and the local path, or the turl for direct
  access), written after stage-in for the payload, which reads its inputs from it;
* output GUIDs: a payload (Athena) writes its outputs' GUIDs into ``PoolFileCatalog.xml``; the pilot takes
  them from there (after those the jobReport names) and makes a GUID only for a file neither names;
* ``OutPutFileCatalog.xml``: the outputs to stage out (GUID, LFN, local path), written before stage-out for
  copy tools that read it;
* ``OutputFiles.xml`` (``stage.arc_output_files``, NorduGrid-flavoured sites): the staged outputs for ARC,
  one ``<file>`` per output with ``lfn``, ``guid``, ``surl``, ``size`` and ``adler32`` (or ``md5sum``).

The payload's catalog is untrusted input: it is read only up to ``MAX_CATALOG_BYTES``, a GUID is used only if
it parses as a UUID, and a catalog that does not parse names nothing (logged).
"""

from __future__ import annotations

import logging
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INPUT_CATALOG = "PoolFileCatalog.xml"
OUTPUT_CATALOG = "OutPutFileCatalog.xml"
ARC_OUTPUT_FILES = "OutputFiles.xml"
CATALOG_FILES = (INPUT_CATALOG, OUTPUT_CATALOG, ARC_OUTPUT_FILES)
"""The catalog names the pilot writes in a job workdir: no input may replace them."""
MAX_CATALOG_BYTES = 16 * 1024 * 1024
_HEADER = '<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n' \
          '<!DOCTYPE POOLFILECATALOG SYSTEM "InMemory">\n'


def write_pool_catalog(path: Path, files: Iterable[tuple[str, str, str]]) -> None:
    """A POOL catalog of ``(guid, lfn, pfn)`` entries at ``path`` (written whole, then renamed into place)."""
    root = ET.Element("POOLFILECATALOG")
    for guid, lfn, pfn in files:
        entry = ET.SubElement(root, "File", ID=guid)
        ET.SubElement(ET.SubElement(entry, "physical"), "pfn", filetype="ROOT_All", name=pfn)
        ET.SubElement(ET.SubElement(entry, "logical"), "lfn", name=lfn)
    ET.indent(root)
    _write(path, _HEADER + ET.tostring(root, encoding="unicode") + "\n")


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """One ``(guid, lfn, pfn)`` of a POOL catalog, as written there ('' where a part is missing)."""

    guid: str
    lfn: str
    pfn: str


def read_pool_catalog(path: Path) -> list[PoolEntry]:
    """The entries of a POOL catalog (``<File ID><physical><pfn name/></physical><logical><lfn name/>``);
    [] when there is no file.  Raises ValueError naming the problem for a file that is too large (it is
    untrusted input) or that does not parse."""
    try:
        if path.stat().st_size > MAX_CATALOG_BYTES:
            raise ValueError(f"larger than {MAX_CATALOG_BYTES} bytes")
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        return []
    except (OSError, ET.ParseError) as exc:
        raise ValueError(str(exc)) from None
    entries = []
    for entry in root.iter("File"):
        pfn = entry.find(".//pfn")
        for lfn in entry.iter("lfn"):
            entries.append(PoolEntry(entry.get("ID") or "", lfn.get("name") or "",
                                     (pfn.get("name") if pfn is not None else "") or ""))
    return entries


def catalog_guids(path: Path) -> dict[str, str]:
    """``{lfn: guid}`` of a POOL catalog a payload may have written; {} when there is none or it is unusable."""
    try:
        entries = read_pool_catalog(path)
    except ValueError as exc:
        log.warning("%s is not a usable POOL file catalog (%s); its GUIDs are not used", path, exc)
        return {}
    guids: dict[str, str] = {}
    for entry in entries:
        guid = _uuid(entry.guid)
        if guid and entry.lfn:
            guids.setdefault(entry.lfn, guid)
    return guids


def _uuid(text: str | None) -> str:
    """``text`` as a GUID if it is one (the server stores it as such), else ''."""
    try:
        return str(uuid.UUID(text)) if text and len(text) == 36 else ""
    except ValueError:
        return ""


def write_arc_output_files(path: Path, report: Mapping[str, Mapping[str, Any]]) -> None:
    """ARC's ``OutputFiles.xml`` of the output report ``{lfn: {guid, fsize, adler32|md5sum, surl}}``."""
    root = ET.Element("outputfiles")
    for lfn, entry in report.items():
        item = ET.SubElement(root, "file")
        for tag, value in (("lfn", lfn), ("guid", entry.get("guid", "")), ("surl", entry.get("surl", "")),
                           ("size", entry.get("fsize", "")), ("adler32", entry.get("adler32")),
                           ("md5sum", entry.get("md5sum"))):
            if value is not None:
                ET.SubElement(item, tag).text = str(value)
    ET.indent(root)
    _write(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_input_catalog(workdir: Path, inputs: Iterable[Any], pfns: Iterable[str]) -> None:
    """``PoolFileCatalog.xml`` of the job's inputs (FileSpecs) at ``pfns`` (local paths or turls), if it has any."""
    entries = [(fspec.guid, fspec.lfn, pfn) for fspec, pfn in zip(inputs, pfns, strict=True)]
    if entries:
        write_pool_catalog(workdir / INPUT_CATALOG, entries)


def output_guids(workdir: Path, report_guids: Mapping[str, str], lfns: Iterable[str]) -> dict[str, str]:
    """Each output's GUID: the jobReport's, else the payload's catalog's, else a new one."""
    catalog = catalog_guids(workdir / INPUT_CATALOG)
    return {lfn: report_guids.get(lfn) or catalog.get(lfn) or str(uuid.uuid4()) for lfn in lfns}
