"""bench/metaworld_table.py, run as a user runs it: a rerun measures only the schedules that are
new or changed since the last run, and keeps every other row as it was measured."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "metaworld_drawer_open_lowdim"


def _table(ck: Path, out: Path) -> tuple[str, dict]:
    done = subprocess.run(
        [sys.executable, "bench/metaworld_table.py", "--checkpoint", str(ck), "--episodes", "1",
         "--repeats", "1", "--fidelity-obs", "2", "--fidelity-samples", "2", "--device", "cpu",
         "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(out.with_suffix(".partial.json").read_text())["rows"]


def test_a_rerun_measures_only_new_and_changed_schedules(tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(CHECKPOINT, ck)
    tuned = (ck / "tuned_x5.yaml").read_text()
    (ck / "tuned_x5.yaml").unlink()
    out = tmp_path / "table.md"
    _, first = _table(ck, out)
    assert "bac tune (tuned_x5)" not in first and "| BAC S=10 k=5 |" in out.read_text()

    (ck / "tuned_x5.yaml").write_text(tuned)  # written since: measured now
    bac = ck / "bac_s10_k5.yaml"
    bac.write_text(bac.read_text() + "# re-profiled\n")  # changed: measured again
    log, second = _table(ck, out)
    assert "resuming from" in log
    assert "| bac tune (tuned_x5) |" in out.read_text()
    assert second["BAC S=10 k=5"]["schedule_sha256"] != first["BAC S=10 k=5"]["schedule_sha256"]
    for name in ("scripted expert", "full (DDPM-100)", "DDIM-10", "DDPM-10", "uniform:10"):
        assert second[name] == first[name]  # kept, not measured again
