"""node_info's free disk: measured where the directory will be, also before it exists."""

from __future__ import annotations

import shutil
from pathlib import Path

from hpcpilot.node import node_info


def test_free_disk_of_a_directory_not_made_yet_is_that_of_its_file_system(tmp_path: Path) -> None:
    # a worker's jobs directory on node-local scratch does not exist when the rank describes its node
    info = node_info(tmp_path / "scratch" / "jobs" / "rank3")
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    assert info["disk"] > 0
    assert abs(info["disk"] - free_mb) <= 64  # the same file system (other writers move it a little)
