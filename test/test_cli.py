"""The `bac` command line end to end: convert, profile, inspect (as a user runs them)."""

import subprocess
import sys

import numpy as np
import pytest
import yaml
from chi_fixtures import OBS_DIM, TO, LowdimPolicy, lowdim_cfg, write_workspace_ckpt

import bac_ros
from bac_ros.cli import main
from bac_ros.policy.observations import save_observations


@pytest.fixture
def native(tmp_path):
    src = tmp_path / "chi.ckpt"
    write_workspace_ckpt(src, lowdim_cfg(), LowdimPolicy())
    assert main(["convert", str(src), str(tmp_path / "native")]) == 0
    return tmp_path / "native"


def test_convert_profile_inspect(native, tmp_path, capsys):
    rng = np.random.default_rng(0)
    obs = [{"obs": rng.normal(size=(TO, OBS_DIM)).astype(np.float32)} for _ in range(6)]
    save_observations(tmp_path / "obs.npz", obs)
    out = tmp_path / "sched" / "bac.yaml"
    rc = main(["profile", "--checkpoint", str(native), "--observations", str(tmp_path / "obs.npz"),
               "--out", str(out), "-S", "3", "-k", "2", "--device", "cpu",
               "--plots", str(tmp_path / "plots")])
    assert rc == 0
    data = yaml.safe_load(out.read_text())
    assert data["method"]["budget"] == 3 and data["provenance"]["observations"] == 6
    assert (tmp_path / "sched" / "bac.profile.npz").is_file()
    for png in ("updates.png", "similarity_cosine.png", "block_errors.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["inspect", str(out), "--out", str(tmp_path / "again")]) == 0
    text = capsys.readouterr().out
    assert "decoder.layers.0.self_attn" in text and "[BUA]" in text
    assert (tmp_path / "again" / "similarity_cosine.png").is_file()


def test_user_errors_are_one_sentence(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bac inspect: error:") and "does not exist" in err
    assert len(err.splitlines()) == 1
    assert main(["train", "--attn-dropout", "1.5", "--out", str(tmp_path / "ck")]) == 1
    err = capsys.readouterr().err.strip()
    assert "--attn-dropout must be in [0, 1), got 1.5" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ck").exists()


def test_flags_that_would_be_ignored_are_refused(native, tmp_path, capsys):
    """Each flag below does nothing in the combination given, so the command refuses it in one
    sentence before any work (and writes nothing)."""
    obs = tmp_path / "obs.npz"
    save_observations(obs, [{"obs": np.zeros((TO, OBS_DIM), np.float32)}] * 2)
    out = str(tmp_path / "out.yaml")
    demos = tmp_path / "d.npz"
    cases = [
        (["profile", "--checkpoint", str(native), "--observations", str(obs), "--out", out,
          "--joint-names", "a", "b"], "--joint-names picks joints from a bag's joint_states"),
        (["tune", "--checkpoint", str(native), "--observations", str(obs), "--speedup", "2",
          "--out", out,
          "--joint-names", "a"], "--joint-names picks joints from a bag's joint_states"),
        (["profile", "--checkpoint", str(native), "--observations", str(obs), "--out", out,
          "--max-observations", "-1"], "--max-observations is -1; expected 0 (all)"),
        (["demos", "--noise", "0.2", "--episodes", "1", "--out", str(demos)],
         "--noise perturbs a Meta-World expert's actions"),
        (["train", "--demos", str(demos), "--episodes", "5", "--out", str(tmp_path / "ck")],
         "--episodes records demonstrations; --demos gives them already"),
        (["train", "--episodes", "0", "--out", str(tmp_path / "ck")],
         "--episodes is 0; expected a positive count"),
    ]
    for argv, words in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out.yaml").exists() and not demos.exists()
    assert not (tmp_path / "ck").exists()


def test_top_level_help_shows_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["no-such-command"])  # argparse names every subcommand it has
    err = capsys.readouterr().err
    commands = {c.strip(" '") for c in err.split("choose from", 1)[1].strip(" ()\n").split(",")}
    assert {"convert", "windows", "distill", "eval", "tune"} <= commands
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out.split("positional arguments", 1)[0]
    assert {line.split()[1] for line in usage.splitlines() if line.startswith("    bac ")} == \
        commands


def test_installed_executable_runs():
    """What `ros2 run bac_ros bac` executes."""
    from ament_index_python.packages import get_package_prefix

    exe = f"{get_package_prefix('bac_ros')}/lib/bac_ros/bac"
    out = subprocess.run([sys.executable, exe, "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == f"bac_ros {bac_ros.__version__}"
