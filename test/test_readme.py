"""The README's commands work as printed: its code blocks are read from README.md (so editing
the README changes what is tested) and each command line runs in a fresh ``bash`` (empty
environment, no rc files) that first runs the README's activation line.

The commands run from a temporary folder laid out like the repository root the README runs them
in: links to ``.venv`` and ``install`` and a copy of ``checkpoints/``, so nothing a line writes
lands in the checkout. Each README line gets one test, whose id says what is done with it:

* ``run``: ``bac demos|windows|profile|inspect|record`` (seconds each at the README's sizes) run
  in full, in README order; the test checks the exit status and what they wrote.
* ``parse``: ``bac eval|tune|train|distill`` take minutes to hours; in the fresh shell ``bac``
  must be found and the real ``bac_ros.cli`` parser must accept the arguments, and every input
  they name must exist once the lines before them ran.
* ``make``: ``make -n TARGET`` in the checkout (the target exists; nothing runs, since ``make
  test`` is this suite and ``make demo`` takes minutes).
* skipped, with the reason: ``bac convert model.ckpt`` (a user's own checkpoint) and the block
  for a robot's ROS 2 workspace.

A command line no rule covers fails, so a new kind of README line needs a decision here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bac_ros.cache.schedule import Schedule
from bac_ros.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

RUN = {"demos", "windows", "profile", "inspect", "record"}
PARSE = {"eval", "tune", "train", "distill"}
SKIP_LINE = {"convert": "needs a Chi et al. .ckpt the user brings (the README says where it "
                        "comes from); test_cli.py converts a fixture of that format"}
SKIP_SECTION = {"Build in an existing ROS 2 workspace": "needs a system ROS 2 with rosdep and "
                "a ROS workspace; this machine has ROS 2 only as wheels in the venv"}
#: Arguments that name what a command writes; every other path argument is an input.
OUTPUTS = {"out", "dst", "json", "report", "keep", "plots"}


@dataclass
class Line:
    text: str  # as printed; a continued line joined as bash joins it
    section: str
    lang: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def mode(self) -> str:
        if self.lang == "python":
            return "python"
        if any(self.section.startswith(s) for s in SKIP_SECTION):
            return "skip"
        argv = self.argv
        if argv[0] == "make":
            return "make"
        if argv[0] == ".":
            return "activate"
        if argv[0] == "bac" and len(argv) > 1:
            return ("run" if argv[1] in RUN else "parse" if argv[1] in PARSE
                    else "skip" if argv[1] in SKIP_LINE else "unknown")
        return "unknown"

    @property
    def reason(self) -> str:
        for s, why in SKIP_SECTION.items():
            if self.section.startswith(s):
                return why
        return SKIP_LINE.get(self.argv[1], "") if self.mode == "skip" else ""


def readme_lines() -> list[Line]:
    """Every command line of the README's code blocks, in order (``text`` blocks hold trees
    and printed output, not commands)."""
    lines, section = [], ""
    blocks = re.finditer(r"^(## [^\n]*)$|^```(\w*)\n(.*?)^```$", README.read_text(), re.M | re.S)
    for m in blocks:
        if m.group(1):
            section = m.group(1)[3:]
            continue
        lang, body = m.group(2), m.group(3)
        assert lang in ("sh", "python", "text"), f"README block without a known language: {body}"
        if lang == "python":
            lines.append(Line(body, section, lang))
        elif lang == "sh":
            for text in body.replace("\\\n", "").splitlines():
                if text.strip() and not text.lstrip().startswith("#"):
                    lines.append(Line(text.strip(), section, lang))
    return lines


LINES = readme_lines()
ACTIVATE = [ln.text for ln in LINES if ln.mode == "activate"]
COMMANDS = [ln for ln in LINES if ln.mode != "activate"]


def _id(line: Line) -> str:
    text = " ".join(line.text.split()) if line.lang == "sh" else "the Python block"
    return f"{line.mode}: {text[:70]}"


def fresh_bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` after the README's activation line, in a bash that inherits nothing of this
    test's environment (no venv, no install space on the path) but the DDS isolation. Torch
    runs one thread per command unless the caller sets ``OMP_NUM_THREADS``: no README line
    depends on it, and two threads on a shared 2-core machine burned four times the CPU."""
    env = {"HOME": os.environ.get("HOME", str(cwd)), "PATH": "/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "TMPDIR": str(cwd),
           **{k: v for k, v in os.environ.items() if k.startswith(("ROS_", "RMW_"))},
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run(["bash", "--noprofile", "--norc", "-c",
                           f"{ACTIVATE[0]} && {script}"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _paths(args, kinds: set[str], exclude: bool) -> dict[str, Path]:
    return {k: v for k, v in vars(args).items() if isinstance(v, Path) and (k in kinds) != exclude}


def _check_output(line: Line, work: Path, stdout: str) -> None:
    """What a fully run line wrote (or, for ``inspect``, printed) is there and valid."""
    args = build_parser().parse_args(line.argv[1:])
    outputs = _paths(args, OUTPUTS, exclude=False)
    assert outputs or args.command == "inspect", "names no output to check"
    for path in outputs.values():
        assert (work / path).exists(), f"did not write {path}"
    if args.command in ("demos", "windows"):
        with np.load(work / args.out) as f:
            assert f.files and all(len(f[k]) > 0 for k in f.files)
    if args.command == "profile":
        sched = Schedule.load(work / args.out)
        text = (work / args.out).read_text()
        src = work / (args.observations or args.bag)
        assert sched.provenance["source"] == src.name and str(work) not in text
        if src.is_file():
            assert sched.provenance["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    if args.command == "inspect":
        sched = Schedule.load(work / args.schedule)
        assert f"schedule {sched.id}:" in stdout, stdout
        assert f"sha256 {sched.provenance['sha256']}" in stdout, stdout
    plots = args.plots if args.command == "profile" else args.out
    if args.command in ("profile", "inspect") and plots:
        assert (work / plots / "updates.png").read_bytes()[:4] == b"\x89PNG"
    if args.command == "record":
        assert (work / args.out / "metadata.yaml").is_file()


def _run(line: Line, work: Path) -> str:
    """Run or parse one line; returns an error text, empty when the line passed."""
    if line.mode == "python":
        script = work / "readme_block.py"
        script.write_text(line.text + (
            "\nassert chunk.shape == (policy.n_action_steps, policy.action_dim)"
            "\nassert np.isfinite(chunk).all()\n"))
        out = fresh_bash("python3 readme_block.py", work)
    elif line.mode == "make":
        out = fresh_bash(f"make -n -C {shlex.quote(str(ROOT))} " + shlex.join(line.argv[1:]),
                         work)
    elif line.mode == "run":
        out = fresh_bash(line.text, work)
        if out.returncode == 0:
            try:
                _check_output(line, work, out.stdout)
            except AssertionError as e:
                return f"{line.text}: {e}"
    else:  # parse: the environment's bac is found and its parser takes the arguments
        parse = "import sys; from bac_ros.cli import build_parser; build_parser().parse_args(" \
                "sys.argv[1:])"
        out = fresh_bash(f"command -v bac && python3 -c {shlex.join([parse, *line.argv[1:]])}",
                         work)
        found = out.stdout.splitlines()[0] if out.stdout else ""
        if out.returncode == 0 and not found.endswith("/install/bac_ros/bin/bac"):
            return f"{line.text}: bac found at {found!r}, not in the install space"
        if out.returncode == 0:
            args = build_parser().parse_args(line.argv[1:])
            inputs = list(_paths(args, OUTPUTS, exclude=True).values())
            if str(getattr(args, "method", "")).startswith("bac:"):
                inputs.append(Path(args.method[4:]))
            missing = [str(p) for p in inputs if not (work / p).exists()]
            if missing:
                return f"{line.text}: inputs missing after the lines before it: {missing}"
    if out.returncode != 0:
        return f"{line.text}\nexit {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return ""


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict[str, str]:
    """All README lines once, in README order (later lines use what earlier ones wrote)."""
    work = tmp_path_factory.mktemp("readme")
    for name in (".venv", "install"):
        (work / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "checkpoints", work / "checkpoints",
                    ignore=shutil.ignore_patterns("*.profile.npz"))
    return {_id(ln): _run(ln, work) for ln in COMMANDS if ln.mode not in ("skip", "unknown")}


def test_readme_has_one_activation_line_and_a_rule_for_every_command():
    assert len(set(ACTIVATE)) == 1, f"expected one activation line in the README, got {ACTIVATE}"
    unknown = [ln.text for ln in COMMANDS if ln.mode == "unknown"]
    assert not unknown, f"README command lines with no rule in test_readme.py: {unknown}"
    modes = [ln.mode for ln in COMMANDS]
    assert len({_id(ln) for ln in COMMANDS}) == len(COMMANDS), "a README line printed twice"
    assert modes.count("run") >= 5 and modes.count("python") == 1, modes


@pytest.mark.parametrize("line", COMMANDS, ids=_id)
def test_readme_line(line, walkthrough):
    if line.mode == "skip":
        pytest.skip(line.reason)
    assert walkthrough[_id(line)] == ""
