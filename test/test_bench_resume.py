"""`make bench --resume`: a stopped run goes on with what it lacks, and only the same run
(bac_ros.sim.resume, which bench/run_bench.py calls)."""

import json
import shutil
from pathlib import Path

import pytest

from bac_ros.policy.policy import Policy
from bac_ros.sim import resume

REPO = Path(__file__).resolve().parents[1]
ARM = REPO / "checkpoints" / "arm_lowdim"
#: `make bench BENCH_ARGS=--quick`'s options that a row depends on.
QUICK = {"episodes": 20, "seed": 100_000, "repeats": 5, "error_obs": 16, "fidelity_obs": 8,
         "fidelity_samples": 16, "quick": True, "device": "cpu"}


def _stopped_run(path: Path, rows: list[dict], elapsed_s: float = 321.0) -> None:
    path.write_text(json.dumps({"results": [{"checkpoint": "checkpoints/arm_lowdim",
                                             "rows": rows}],
                                "settings": resume.run_settings(QUICK, [ARM]),
                                "elapsed_s": elapsed_s}))


def test_only_the_missing_evaluations_are_run_again(tmp_path):
    partial = tmp_path / "partial_quick.json"
    tick_ms = Policy.from_pretrained(ARM, device="cpu").dt * 1e3
    done = {"success_rate": 0.5, "ci95": [0.2, 0.8], "collision_rate": 0.0, "wall_s": 1.0}
    rows = [{"name": "slow, lockstep done", "method": "full", "median_ms": 2 * tick_ms,
             "success_lockstep": done},
            {"name": "slow, nothing done", "method": "ddim:10", "median_ms": 3 * tick_ms},
            {"name": "on time, done", "method": "ddim:16", "median_ms": tick_ms / 2,
             "success_lockstep": done, "success_realtime": dict(done, same_as_lockstep=True)},
            {"name": "on time, nothing done", "method": "ddim:25", "median_ms": tick_ms / 2}]
    _stopped_run(partial, rows)
    sections, elapsed = resume.resumed_sections(partial, resume.run_settings(QUICK, [ARM]))
    assert elapsed == 321.0 and list(sections) == ["arm_lowdim"]
    jobs = resume.success_jobs(sections["arm_lowdim"]["rows"], tick_ms / 1e3, ARM, seed=7,
                               episodes=3, device="cpu")
    left = [(row["name"], cell.mode, cell.latency_ms) for row, _, cell in jobs]
    assert left == [("slow, lockstep done", "realtime", 2 * tick_ms),
                    ("slow, nothing done", "lockstep", 3 * tick_ms),
                    ("slow, nothing done", "realtime", 3 * tick_ms),
                    ("on time, nothing done", "lockstep", tick_ms / 2)]
    assert [on_time for _, on_time, _ in jobs] == [False, False, False, True]
    assert all((cell.episodes, cell.seed, cell.checkpoint, cell.method) ==
               (3, 7, str(ARM), row["method"]) for row, _, cell in jobs)


def test_a_run_with_other_settings_is_refused(tmp_path):
    partial = tmp_path / "partial_quick.json"
    _stopped_run(partial, rows=[])
    with pytest.raises(ValueError, match=r"other settings \(episodes\)"):
        resume.resumed_sections(partial, resume.run_settings(QUICK | {"episodes": 7}, [ARM]))
    with pytest.raises(ValueError, match=r"other settings \(checkpoints\)"):
        resume.resumed_sections(partial, resume.run_settings(
            QUICK, [REPO / "checkpoints" / "arm_image"]))


def test_resume_without_a_stopped_run_says_so(tmp_path):
    with pytest.raises(ValueError, match="found no stopped run"):
        resume.resumed_sections(tmp_path / "partial.json", resume.run_settings(QUICK, [ARM]))


def test_a_resumed_section_runs_the_stopped_runs_schedules_anywhere(tmp_path):
    """The stopped run's schedule files stay behind with its machine; the partial file carries
    them, and a resumed run writes them back and runs those, on the same weights only."""
    policy = Policy.from_pretrained(ARM, device="cpu")
    measured = tmp_path / "stopped" / "bac_s10_k5.yaml"
    measured.parent.mkdir()
    shutil.copy(ARM / "bac_s10_k5.yaml", measured)
    section = {"checkpoint": "checkpoints/arm_lowdim", "model": policy.fingerprint,
               "rows": [{"name": "full (DDPM-100)", "method": "full"},
                        {"name": "BAC S=10 k=5", "method": f"bac:{measured}"}]}
    resume.keep_schedules(section)
    saved = json.loads(json.dumps(section))  # as the partial file holds it
    shutil.rmtree(measured.parent)
    here = tmp_path / "here"
    resume.restore_section(saved, policy.fingerprint, here)
    assert [r["method"] for r in saved["rows"]] == ["full", f"bac:{here / 'bac_s10_k5.yaml'}"]
    assert (here / "bac_s10_k5.yaml").read_bytes() == (ARM / "bac_s10_k5.yaml").read_bytes()
    policy.set_schedule(saved["rows"][1]["method"].split(":", 1)[1])  # loads for these weights
    other = json.loads(json.dumps(section)) | {"model": "0" * 16}
    with pytest.raises(ValueError, match="with other weights"):
        resume.restore_section(other, policy.fingerprint, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()
