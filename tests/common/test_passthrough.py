"""A passed-through child: its output shown and kept, its exit status, nothing left behind."""

from __future__ import annotations

import os
import time

from common.passthrough import run_passing_through


def test_output_status_and_no_orphans(tmp_path, capsys) -> None:
    pid_file = tmp_path / "orphan.pid"
    script = f"sleep 60 & echo $! > {pid_file}; echo started; echo 'Failed to activate'; exit 7"
    start = time.monotonic()
    status, tail = run_passing_through(["bash", "-c", script], dict(os.environ))
    assert time.monotonic() - start < 10  # not held open by the background sleep
    assert status == 7 and tail == "started\nFailed to activate\n"
    assert "Failed to activate" in capsys.readouterr().out
    orphan = int(pid_file.read_text())
    time.sleep(0.2)
    try:
        os.kill(orphan, 0)
        with open(f"/proc/{orphan}/stat") as fh:
            assert fh.read().split()[2] == "Z", "the child's background process still runs"
    except ProcessLookupError:
        pass
