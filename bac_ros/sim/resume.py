"""A benchmark run saved as it goes (``make bench``'s ``bench.partial.json``): which closed-loop
evaluations its rows still lack, and whether a command may go on with it.

A stopped run is continued only with the checkpoints and settings it was started with, on the
same weights: its rows would otherwise be reported beside rows measured differently. Each row
keeps the latency its real-time runs wait out, so what is measured after the stop uses the
latency measured before it. The file carries the text of every schedule its rows ran (a resumed
run may be a fresh checkout on another machine, where the stopped run's files are not), and
:func:`restore_section` writes them back.
"""

from __future__ import annotations

import json
from pathlib import Path

from bac_ros.sim.cluster import Cell

#: The settings a saved run (``--keep``, ``--resume``) must share with this one to be reported
#: with it.
SAME_SETTINGS = ("episodes", "seed", "repeats", "error_obs", "fidelity_obs", "fidelity_samples")


def run_settings(settings: dict, ckpts: list[Path]) -> dict:
    """What a stopped run must share with the command that resumes it: ``settings`` (the
    command's options by name) narrowed to those that change a row, and the checkpoints."""
    return {**{k: settings[k] for k in (*SAME_SETTINGS, "quick", "device")},
            "checkpoints": [Path(c).resolve().name for c in ckpts]}


def success_jobs(rows: list[dict], dt_s: float, ckpt: Path, seed: int, episodes: int,
                 device: str) -> list[tuple[dict, bool, Cell]]:
    """The closed-loop evaluations ``rows`` still lack, as ``(row, on_time, cell)``.

    A method whose median latency fits in one control tick (``dt_s``) is on time: its real-time
    run is its lockstep run, so it gets one cell; a slower one gets a real-time cell too.
    """
    jobs = []
    for row in rows:
        on_time = row["median_ms"] < dt_s * 1e3
        for mode in ("lockstep",) if on_time else ("lockstep", "realtime"):
            if f"success_{mode}" not in row:
                # lockstep reports the side-by-side median; real time waits it out
                jobs.append((row, on_time, Cell(str(ckpt), row["method"], mode, seed, episodes,
                                                row["median_ms"], device)))
    return jobs


def keep_schedules(section: dict) -> None:
    """Put the file name and text of every ``bac:`` row's schedule into ``section``."""
    section["schedules"] = {
        row["name"]: {"file": Path(path).name, "text": Path(path).read_text()}
        for row in section["rows"] if row["method"].startswith("bac:")
        for path in [row["method"].split(":", 1)[1]]}


def restore_section(section: dict, fingerprint: str, folder: Path) -> None:
    """Make a stopped run's section runnable here: refused (:class:`ValueError`) unless it was
    measured on the weights with this ``fingerprint``; its schedules are written into ``folder``
    and its rows pointed at them."""
    if section.get("model") != fingerprint:
        raise ValueError(f"the stopped run measured {section['checkpoint']} with other weights "
                         f"(model {section.get('model')}, now {fingerprint}); run without "
                         "--resume to measure it again.")
    folder.mkdir(parents=True, exist_ok=True)
    for row in section["rows"]:
        kept = section["schedules"].get(row["name"])
        if kept is not None:
            path = folder / kept["file"]
            path.write_text(kept["text"])
            row["method"] = f"bac:{path}"


def resumed_sections(partial: Path, settings: dict) -> tuple[dict, float]:
    """The sections of the stopped run saved in ``partial``, by checkpoint folder name, and the
    seconds it ran; :class:`ValueError` (one sentence) when there is none, or when it was
    started with settings other than ``settings`` (from :func:`run_settings`)."""
    if not partial.is_file():
        raise ValueError(f"--resume found no stopped run at {partial}; run without --resume "
                         "to start one.")
    saved = json.loads(partial.read_text())
    differ = [k for k, v in settings.items() if saved.get("settings", {}).get(k) != v]
    if differ:
        raise ValueError(f"the stopped run in {partial} was started with other settings "
                         f"({', '.join(differ)}); resume it with the same command, or run "
                         "without --resume to start again.")
    return {Path(res["checkpoint"]).name: res for res in saved["results"]}, saved["elapsed_s"]
