"""`make bench --resume`: a stopped run goes on with what it lacks, and only the same run."""

import importlib.util
import json
from pathlib import Path

import pytest

from bac_ros.policy.policy import Policy

REPO = Path(__file__).resolve().parents[1]
ARM = REPO / "checkpoints" / "arm_lowdim"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("run_bench", REPO / "bench" / "run_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(bench, tmp_path: Path, *extra: str):
    args = bench.parse_args(["--quick", "--resume", *extra])
    args.partial, args.elapsed_before = tmp_path / "partial_quick.json", 0.0
    return args


def _stopped_run(bench, args, rows: list[dict], elapsed_s: float = 321.0) -> None:
    args.partial.write_text(json.dumps({"results": [{"checkpoint": "checkpoints/arm_lowdim",
                                                     "rows": rows}],
                                        "settings": bench.run_settings(args, [ARM]),
                                        "elapsed_s": elapsed_s}))


def test_only_the_missing_evaluations_are_run_again(bench, tmp_path):
    args = _args(bench, tmp_path)
    policy = Policy.from_pretrained(ARM, device="cpu")
    tick_ms = policy.dt * 1e3
    done = {"success_rate": 0.5, "ci95": [0.2, 0.8], "collision_rate": 0.0, "wall_s": 1.0}
    rows = [{"name": "slow, lockstep done", "method": "full", "median_ms": 2 * tick_ms,
             "success_lockstep": done},
            {"name": "slow, nothing done", "method": "ddim:10", "median_ms": 3 * tick_ms},
            {"name": "on time, done", "method": "ddim:16", "median_ms": tick_ms / 2,
             "success_lockstep": done, "success_realtime": dict(done, same_as_lockstep=True)},
            {"name": "on time, nothing done", "method": "ddim:25", "median_ms": tick_ms / 2}]
    _stopped_run(bench, args, rows)
    sections = bench.resumed_sections(args, [ARM])
    assert args.elapsed_before == 321.0
    jobs = bench.success_jobs(sections["arm_lowdim"]["rows"], policy, ARM, args)
    left = [(row["name"], cell.mode, cell.latency_ms) for row, _, cell in jobs]
    assert left == [("slow, lockstep done", "realtime", 2 * tick_ms),
                    ("slow, nothing done", "lockstep", 3 * tick_ms),
                    ("slow, nothing done", "realtime", 3 * tick_ms),
                    ("on time, nothing done", "lockstep", tick_ms / 2)]
    assert all(cell.episodes == args.episodes and cell.seed == args.seed for _, _, cell in jobs)


def test_a_run_with_other_settings_is_refused(bench, tmp_path):
    _stopped_run(bench, _args(bench, tmp_path), rows=[])
    with pytest.raises(SystemExit, match=r"other settings \(episodes\)"):
        bench.resumed_sections(_args(bench, tmp_path, "--episodes", "7"), [ARM])
    with pytest.raises(SystemExit, match=r"other settings \(checkpoints\)"):
        bench.resumed_sections(_args(bench, tmp_path), [REPO / "checkpoints" / "arm_image"])


def test_resume_without_a_stopped_run_says_so(bench, tmp_path):
    with pytest.raises(SystemExit, match="found no stopped run"):
        bench.resumed_sections(_args(bench, tmp_path), [ARM])
