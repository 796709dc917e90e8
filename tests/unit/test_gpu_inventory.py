"""GPU inventory on captured and built nodes (tests/fixtures/gpu/README.md names each one's source).

The vendor tools are not here: a tool is a shell script on PATH that prints a capture (``cat``), so the real
subprocess path runs -- found on PATH, started, its output parsed.  Node roots stand for ``/`` through
HPCPILOT_GPUINV_ROOT.  The vendor libraries (NVML, amdsmi) are not installed here; what is tested of them is that
they are neither imported nor needed where sysfs shows no GPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpilot.gpu import amd, intel, nvidia
from hpcpilot.gpu.arch import architecture
from hpcpilot.gpu.inventory import ROOT_VAR, SOURCES_VAR, take_inventory
from hpcpilot.gpu.model import NodeGpus
from hpcpilot.gpu.source import BadData, pci_address

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"
ROOTS = FIXTURES / "roots"
NVIDIA_XML = FIXTURES / "nvidia-smi-q-x.a100-sxm4-80gb-mig.xml"
ROCM_JSON = FIXTURES / "rocm-smi-a-json.mi250.json"
XPU_JSON = FIXTURES / "xpu-smi-discovery-j.docs.json"


def tool(bindir: Path, name: str, body: str) -> Path:
    """A stand-in for a vendor tool: a shell script on PATH (the real subprocess path runs)."""
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def environ(root: Path, bindir: Path | None = None, **extra: str) -> dict[str, str]:
    path = f"{bindir}{os.pathsep}/usr/bin:/bin" if bindir else "/usr/bin:/bin"
    return {"PATH": path, ROOT_VAR: str(root), **extra}


# --- the parsers on captures -------------------------------------------------------------------------------

def test_nvidia_smi_xml_capture_of_an_a100_in_mig_mode() -> None:
    (gpu,) = nvidia.parse_smi_xml(NVIDIA_XML.read_text())
    assert (gpu.vendor, gpu.index, gpu.model) == ("NVIDIA", 0, "NVIDIA A100-SXM4-80GB")
    assert gpu.vram_mb == 81920  # the GPU's, not a MIG slice's 19968
    assert gpu.uuid == "GPU-513536b6-7d19-9063-b049-1e69664bb298"
    assert gpu.pci_bus == "0000:01:00.0"
    assert (gpu.architecture, gpu.driver_version, gpu.framework, gpu.framework_version) == \
        ("Ampere", "535.54.03", "CUDA", "12.2")


def test_rocm_smi_json_capture_of_an_mi250_gcd() -> None:
    (gpu,) = amd.parse_rocm_smi_json(ROCM_JSON.read_text(), "6.0.2")
    assert (gpu.vendor, gpu.index, gpu.model) == ("AMD", 0, "AMD INSTINCT MI250 (MCM) OAM AC MBA")
    assert (gpu.architecture, gpu.pci_bus, gpu.uuid) == ("CDNA2", "0000:2f:00.0", "0x719d230578348e8c")
    assert (gpu.driver_version, gpu.framework, gpu.framework_version, gpu.vram_mb) == ("6.2.4", "ROCm", "6.0.2", 0)


def test_xpu_smi_discovery_json_from_intels_documentation() -> None:
    (gpu,) = intel.parse_discovery_json(XPU_JSON.read_text())
    assert (gpu.vendor, gpu.index, gpu.model, gpu.pci_bus) == ("Intel", 0, "Intel(R) Graphics [0x020a]", "0000:4d:00.0")


@pytest.mark.parametrize(("parse", "text", "said"), [
    (nvidia.parse_smi_xml, "NVIDIA-SMI has failed because it couldn't communicate", "not XML"),
    (nvidia.parse_smi_xml, "<html><body>502</body></html>", "not <nvidia_smi_log>"),
    (nvidia.parse_smi_xml, "<nvidia_smi_log><gpu><product_name>X</product_name><pci><pci_bus_id>zz</pci_bus_id>"
                           "</pci></gpu></nvidia_smi_log>", "not a PCI address"),
    (nvidia.parse_smi_xml, "<nvidia_smi_log><gpu id='00000000:01:00.0'><product_name>X</product_name>"
                           "<fb_memory_usage><total>lots</total></fb_memory_usage></gpu></nvidia_smi_log>", "MiB"),
    (amd.parse_rocm_smi_json, "WARNING: AMD GPU device(s) is/are in a low-power state", "not JSON"),
    (amd.parse_rocm_smi_json, '["card0"]', "not a JSON object"),
    (amd.parse_rocm_smi_json, '{"card0": {"GPU ID": "0x740c"}}', "names no model"),
    (amd.parse_rocm_smi_json, '{"card0": {"Card series": "MI250", "VRAM Total Memory (B)": "64G"}}', "byte count"),
    (intel.parse_discovery_json, "{", "not JSON"),
    (intel.parse_discovery_json, '{"devices": []}', "no device_list"),
    (intel.parse_discovery_json, '{"device_list": [{"device_name": "Max"}]}', "no device_id"),
])
def test_garbage_from_a_tool_is_bad_data_naming_the_problem(parse: object, text: str, said: str) -> None:
    with pytest.raises(BadData, match=said):
        parse(text)  # type: ignore[operator]


@pytest.mark.parametrize(("vendor", "model", "arch"), [
    ("NVIDIA", "NVIDIA A100-SXM4-40GB", "Ampere"), ("NVIDIA", "NVIDIA A10", "Ampere"),
    ("NVIDIA", "NVIDIA H100 80GB HBM3", "Hopper"), ("NVIDIA", "NVIDIA H200", "Hopper"),
    ("NVIDIA", "NVIDIA GH200 480GB", "Grace Hopper"), ("NVIDIA", "NVIDIA L4", "Ada Lovelace"),
    ("NVIDIA", "NVIDIA L40S", "Ada Lovelace"), ("NVIDIA", "Tesla T4", "Turing"),
    ("NVIDIA", "Tesla V100S-PCIE-32GB", "Volta"),
    ("NVIDIA", "Tesla P100-SXM2-16GB", "Pascal"), ("NVIDIA", "Tesla M10", "Maxwell"), ("NVIDIA", "Tesla K80", "Kepler"),
    ("NVIDIA", "NVIDIA GeForce RTX 4090", ""), ("AMD", "AMD Instinct MI100", "CDNA"),
    ("AMD", "AMD INSTINCT MI250 (MCM) OAM AC MBA", "CDNA2"), ("AMD", "AMD Instinct MI250X", "CDNA2"),
    ("AMD", "AMD Instinct MI300A", "CDNA3"), ("AMD", "AMD Instinct MI300X", "CDNA3"),
    ("AMD", "AMD Instinct MI355X", "CDNA4"),
    ("Intel", "Intel(R) Data Center GPU Max 1550", "Xe-HPC"), ("Intel", "Intel(R) Data Center GPU Flex 170", "Xe-HPG"),
])
def test_architecture_names_match_whole_product_tokens(vendor: str, model: str, arch: str) -> None:
    assert architecture(vendor, model) == arch


@pytest.mark.parametrize(("text", "address"), [
    ("00000000:07:00.0", "0000:07:00.0"), ("0000:C1:00.0", "0000:c1:00.0"), ("07:00.0", "0000:07:00.0")])
def test_pci_addresses_of_every_vendor_spelling_are_one(text: str, address: str) -> None:
    assert pci_address(text) == address


# --- whole inventories: sysfs, tools, both ------------------------------------------------------------------

def test_captured_desktop_sysfs_counts_the_radeon_and_not_the_integrated_intel(tmp_path: Path) -> None:
    node = take_inventory(environ(ROOTS / "desktop-vega-igpu"))
    assert node.source == "sysfs"
    assert [(g.vendor, g.index, g.vram_mb, g.pci_bus) for g in node.gpus] == [("AMD", 0, 8176, "0000:09:00.0")]


def test_nvidia_node_from_the_drivers_proc_files_in_bus_order_without_the_bmc_video() -> None:
    node = take_inventory(environ(ROOTS / "nvidia-a100x4"))
    assert node.source == "sysfs"
    assert [(g.index, g.pci_bus) for g in node.gpus] == [
        (0, "0000:68:00.0"), (1, "0000:9e:00.0"), (2, "0000:c2:00.0"), (3, "0000:d4:00.0")]
    assert {(g.model, g.architecture, g.driver_version) for g in node.gpus} == {
        ("NVIDIA A100-SXM4-80GB", "Ampere", "555.42.02")}
    assert node.gpus[3].uuid == "GPU-011b2cfe-2b8e-1cb0-19e1-1b764e854dfc"


def test_a_gpu_the_nvidia_driver_excludes_is_not_counted(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(ROOTS / "nvidia-a100x4", root)
    info = root / "proc/driver/nvidia/gpus/0000:9e:00.0/information"
    info.write_text(info.read_text().replace("GPU Excluded:\t No", "GPU Excluded:\t Yes"))
    node = take_inventory(environ(root))
    assert [(g.index, g.pci_bus[5:7]) for g in node.gpus] == [(0, "68"), (1, "c2"), (2, "d4")]


def test_frontier_node_numbers_its_eight_gcds_by_bus_not_by_card_number() -> None:
    node = take_inventory(environ(ROOTS / "amd-mi250x-frontier"))
    assert [g.pci_bus[5:7] for g in node.gpus] == ["c1", "c6", "c9", "ce", "d1", "d6", "d9", "de"]
    assert [g.index for g in node.gpus] == list(range(8))
    assert {(g.architecture, g.vram_mb, g.driver_version) for g in node.gpus} == {("CDNA2", 65520, "6.3.6")}


def test_intel_max_node_counts_two_tiles_per_card() -> None:
    node = take_inventory(environ(ROOTS / "intel-max1550x4-stampede3"))
    assert [(g.index, g.tiles, g.architecture) for g in node.gpus] == [(i, 2, "Xe-HPC") for i in range(4)]


def test_nvidia_smi_on_path_answers_for_the_node_and_sysfs_fills_nothing_it_said(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    tool(bindir, "nvidia-smi", f'[ "$*" = "-q -x" ] || exit 3\ncat {NVIDIA_XML}')
    node = take_inventory(environ(tmp_path / "no-sysfs", bindir))  # a container without /sys: tools are tried
    assert node.source == "nvidia-smi"
    (gpu,) = node.gpus
    assert (gpu.model, gpu.vram_mb, gpu.framework_version) == ("NVIDIA A100-SXM4-80GB", 81920, "12.2")


def test_rocm_smi_answers_and_sysfs_adds_the_memory_it_did_not_say(tmp_path: Path) -> None:
    root = tmp_path / "root"
    device = root / "sys/class/drm/card0/device"
    device.mkdir(parents=True)
    (device / "uevent").write_text("DRIVER=amdgpu\nPCI_CLASS=38000\nPCI_ID=1002:740C\nPCI_SLOT_NAME=0000:2f:00.0\n")
    (device / "mem_info_vram_total").write_text("68702699520\n")
    bindir = tmp_path / "bin"
    tool(bindir, "rocm-smi", f"cat {ROCM_JSON}")
    node = take_inventory(environ(root, bindir))
    assert node.source == "rocm-smi"
    (gpu,) = node.gpus
    assert (gpu.model, gpu.vram_mb, gpu.architecture) == ("AMD INSTINCT MI250 (MCM) OAM AC MBA", 65520, "CDNA2")


def test_xpu_smi_answers_and_sysfs_adds_the_tiles(tmp_path: Path) -> None:
    root = tmp_path / "root"
    card = root / "sys/class/drm/card1"
    (card / "device").mkdir(parents=True)
    (card / "device/uevent").write_text("DRIVER=i915\nPCI_CLASS=38000\nPCI_ID=8086:020A\nPCI_SLOT_NAME=0000:4d:00.0\n")
    for tile in ("gt0", "gt1"):
        (card / "gt" / tile).mkdir(parents=True)
    bindir = tmp_path / "bin"
    tool(bindir, "xpu-smi", f"cat {XPU_JSON}")
    node = take_inventory(environ(root, bindir))
    assert node.source == "xpu-smi"
    assert [(g.index, g.tiles, g.pci_bus) for g in node.gpus] == [(0, 2, "0000:4d:00.0")]


def test_a_tool_that_fails_leaves_the_node_to_sysfs(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    tool(bindir, "nvidia-smi", "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\""
                               "\nexit 9")
    node = take_inventory(environ(ROOTS / "nvidia-a100x4", bindir))
    assert (node.source, len(node.gpus)) == ("sysfs", 4)


def test_sources_can_be_limited_to_sysfs(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    tool(bindir, "nvidia-smi", f"touch {tmp_path / 'ran'}\ncat {NVIDIA_XML}")
    node = take_inventory(environ(ROOTS / "nvidia-a100x4", bindir, **{SOURCES_VAR: "sysfs"}))
    assert (node.source, len(node.gpus)) == ("sysfs", 4)
    assert not (tmp_path / "ran").exists()


# --- a CPU node: nothing tried, nothing imported ------------------------------------------------------------

def test_cpu_node_runs_no_tool_and_imports_no_vendor_library(tmp_path: Path) -> None:
    """A CPU node whose sysfs shows only the BMC's video, with nvidia-smi on PATH and a ``pynvml`` importable:
    neither is touched (each would leave a file), and the node is a CPU node."""
    bindir = tmp_path / "bin"
    tool(bindir, "nvidia-smi", f"touch {tmp_path / 'tool-ran'}")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "pynvml.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n")
    code = ("from hpcpilot.gpu.inventory import take_inventory; import sys; "
            "n = take_inventory(); print(n.source, len(n.gpus), 'pynvml' in sys.modules)")
    env = {**os.environ, **environ(ROOTS / "cpu-bmc-only", bindir),
           "PYTHONPATH": os.pathsep.join([str(lib), *sys.path])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["none", "0", "False"], done.stderr
    assert not (tmp_path / "tool-ran").exists() and not (tmp_path / "imported").exists()


# --- bad data: one line, a CPU node -------------------------------------------------------------------------

def test_garbage_from_nvidia_smi_is_one_line_and_a_cpu_node(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bindir = tmp_path / "bin"
    tool(bindir, "nvidia-smi", "echo 'Segmentation fault (core dumped)'")
    with caplog.at_level(logging.WARNING, logger="hpcpilot.gpu"):
        node = take_inventory(environ(ROOTS / "nvidia-a100x4", bindir))
    assert node == NodeGpus()
    assert [r.getMessage() for r in caplog.records] == [
        "GPU inventory: nvidia-smi -q -x: output is not XML (syntax error: line 1, column 0): "
        "this node counts as a CPU node"]


def test_an_unreadable_sysfs_file_is_one_line_and_a_cpu_node(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    device = tmp_path / "root/sys/class/drm/card0/device"
    (device / "vendor").mkdir(parents=True)  # reading it fails (EISDIR), even as root
    with caplog.at_level(logging.WARNING, logger="hpcpilot.gpu"):
        node = take_inventory(environ(tmp_path / "root"))
    assert node == NodeGpus()
    (record,) = caplog.records
    assert record.getMessage().startswith(f"GPU inventory: {device / 'vendor'}: cannot be read (Is a directory)")
    assert record.exc_info is None


def test_nvidia_proc_file_without_a_model_is_bad_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    info = tmp_path / "root/proc/driver/nvidia/gpus/0000:07:00.0/information"
    info.parent.mkdir(parents=True)
    info.write_text("IRQ: 42\n")
    with caplog.at_level(logging.WARNING, logger="hpcpilot.gpu"):
        assert take_inventory(environ(tmp_path / "root")) == NodeGpus()
    assert "no 'Model:' line" in caplog.records[0].getMessage()
