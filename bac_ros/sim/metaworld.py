"""Meta-World (MuJoCo, Sawyer arm) tasks behind the same interface as the bundled arm.

Meta-World 3.x gives each task 50 fixed start setups when built through gymnasium: too few for
200 distinct evaluation seeds. :func:`make_env` therefore builds the task's class directly and
unfreezes its random start vector, so ``reset(seed)`` draws a distinct, reproducible start for
every seed. That relies on private attributes of ``SawyerXYZEnv``; the function checks they
exist so a release that renames them fails loudly (and ``test_metaworld.py`` checks the starts).

Observation (what a policy may read, per step):
* ``state`` ``float32 (39,)``: Meta-World's full observation (hand xyz, gripper opening, object
  poses, the previous step's copy of those, goal xyz; goal visible),
* ``proprio`` ``float32 (4,)``: hand xyz and gripper opening (the camera policy's low-dim input),
* ``goal`` ``float32 (3,)``: the goal position, the task's command (the camera policy reads it:
  the goal marker is a 2.5-3 px sphere in the 96 px ``corner`` frame, a 2-D projection that
  leaves goals up to 15 cm apart on the same pixel),
* ``image`` ``uint8 (H, W, 3)``: an upright offscreen render (only with ``render_images``).
Action: ``float32 (4,)`` end-effector delta xyz (x 1 cm per step) and gripper effort, in [-1, 1].
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

# MuJoCo picks its GL backend when it is first imported: offscreen EGL works without a display
# (Mesa's llvmpipe on a CPU-only machine). Set before metaworld (which imports mujoco) loads.
os.environ.setdefault("MUJOCO_GL", "egl")

#: The tasks this package makes demonstrations and trains policies for, easiest first
#: (difficulty from Meta-World's own grading and DESIGN.md §6b); which of them ship a
#: checkpoint is docs/METAWORLD.md's table.
TASKS = ("drawer-open", "button-press-topdown", "coffee-push", "hammer", "peg-insert-side",
         "pick-place", "disassemble", "shelf-place")
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
ACTION_TYPE = "ee_delta"  # end-effector position deltas + gripper effort, not joint positions
ACTION_LOW = [-1.0, -1.0, -1.0, -1.0]
ACTION_HIGH = [1.0, 1.0, 1.0, 1.0]
STATE_DIM = 39
PROPRIO_DIM = 4
GOAL = slice(STATE_DIM - 3, STATE_DIM)  # the goal's columns of the state
#: The Sawyer's arm joints in the MuJoCo model (``joint_states`` publishes these).
JOINT_NAMES = [f"right_j{i}" for i in range(7)]
CAMERA = "corner"
#: What a policy reads per training variant (the camera policy gets the hand's own state and the
#: goal command too).
OBS_VARIANTS = {
    "lowdim": {"state": {"shape": [STATE_DIM], "type": "low_dim"}},
    "image": {"image": {"shape": [3, 96, 96], "type": "rgb"},
              "proprio": {"shape": [PROPRIO_DIM], "type": "low_dim"},
              "goal": {"shape": [3], "type": "low_dim"}},
}


@dataclass(frozen=True)
class MetaWorldTaskConfig:
    """One Meta-World task as the package runs it; a checkpoint records it in its config."""

    task: str = "drawer-open"
    max_steps: int = 500  # Meta-World's own episode limit (max_path_length)
    image_size: int = 96
    camera: str = CAMERA

    @property
    def env_name(self) -> str:
        return self.task if self.task.endswith("-v3") else f"{self.task}-v3"

    @property
    def dt(self) -> float:
        """Simulated seconds per control step (frame_skip 5 x MuJoCo's 2.5 ms)."""
        return 0.0125


def task_record(config: MetaWorldTaskConfig) -> dict:
    """The task as a checkpoint's config records it (``task_from_record`` reads it back)."""
    return {"family": "metaworld", "task": config.task, "max_steps": config.max_steps,
            "image_size": config.image_size, "camera": config.camera}


def task_from_record(record: dict) -> MetaWorldTaskConfig:
    if record.get("family") != "metaworld":
        raise ValueError(f"not a Meta-World task record: {record}")
    return MetaWorldTaskConfig(**{k: v for k, v in record.items() if k != "family"})


def _env_class(env_name: str):
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    if env_name not in ALL_V3_ENVIRONMENTS:
        raise ValueError(f"unknown Meta-World task {env_name!r}; expected one of "
                         f"{sorted(n[:-3] for n in ALL_V3_ENVIRONMENTS)}")
    return ALL_V3_ENVIRONMENTS[env_name]


def camera_names(model) -> list[str]:
    """The cameras of a Meta-World MuJoCo model (``corner``, ``gripperPOV``, ...)."""
    return [model.camera(i).name for i in range(model.ncam)]


def make_env(config: MetaWorldTaskConfig):
    """The task's MuJoCo env with per-seed random starts (``env.seed(s)`` then ``reset``)."""
    env = _env_class(config.env_name)()
    cameras = camera_names(env.model)
    if config.camera not in cameras:
        raise ValueError(f"camera {config.camera!r} is not in the {config.task} model; expected "
                         f"one of {cameras}")
    for attr in ("_freeze_rand_vec", "seeded_rand_vec", "_partially_observable",
                 "_set_task_called", "_last_rand_vec"):
        if not hasattr(env, attr):
            raise RuntimeError(
                f"this metaworld release has no SawyerXYZEnv.{attr}; bac_ros needs it for "
                "distinct seeded starts (tested with metaworld 3.1.1)")
    env._freeze_rand_vec = False  # draw a new start at every reset ...
    env.seeded_rand_vec = True  # ... from env.np_random, which env.seed() sets
    if env._partially_observable:
        env._partially_observable = False  # the goal position is part of the observation
        del env.sawyer_observation_space  # a cached property of the observability
    env._set_task_called = True  # the start is drawn per seed instead of from a Task
    return env


def expert_policy(config: MetaWorldTaskConfig):
    """Meta-World's scripted expert for the task (a deterministic function of the state)."""
    import metaworld.policies as policies

    words = config.env_name[:-3].split("-")
    name = "Sawyer" + "".join(w.capitalize() for w in words) + "V3Policy"
    alias = {"SawyerPegInsertSideV3Policy": "SawyerPegInsertionSideV3Policy"}
    cls = getattr(policies, alias.get(name, name), None)
    if cls is None:
        raise ValueError(f"metaworld.policies has no scripted expert for {config.task!r}")
    return cls()


class Renderer:
    """Offscreen camera frames, upright, at ``size`` pixels; cheap settings for a CPU (EGL).

    Shadows, reflections and offscreen anti-aliasing are off: on Mesa's llvmpipe they cost
    ~8x the frame time and the policy needs none of them.
    """

    def __init__(self, env, size: int, camera: str):
        import mujoco

        env.model.vis.quality.offsamples = 0
        self._renderer = mujoco.Renderer(env.model, height=size, width=size)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            self._renderer.scene.flags[flag] = 0
        self._env, self._camera = env, camera

    def frame(self) -> np.ndarray:
        self._renderer.update_scene(self._env.data, camera=self._camera)
        return np.ascontiguousarray(self._renderer.render()[::-1, ::-1])

    def close(self) -> None:
        self._renderer.close()


class MetaWorldEnv:
    """One Meta-World task as a step-by-step environment: ``reset(seed)``, ``step(action)``."""

    def __init__(self, config: MetaWorldTaskConfig | None = None, render_images: bool = False):
        self.config = config or MetaWorldTaskConfig()
        self.render_images = render_images
        self._env = make_env(self.config)
        self._renderer = (Renderer(self._env, self.config.image_size, self.config.camera)
                          if render_images else None)
        self._obs = np.zeros(STATE_DIM)
        self.steps, self.done, self.success = 0, True, False
        self.gripper = -1.0  # last commanded gripper effort (holding keeps it)

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Start a new episode; the same seed always gives the same start."""
        self._env.seed(int(seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._obs, _ = self._env.reset()
        # Meta-World moves the goal marker after its last kinematics pass: without this the
        # first frame draws it where the previous start put it (positions only; no dynamics).
        import mujoco

        mujoco.mj_kinematics(self._env.model, self._env.data)
        self.steps, self.done, self.success, self.gripper = 0, False, False, -1.0
        return self.observation()

    def observation(self) -> dict[str, np.ndarray]:
        obs = {"state": self._obs.astype(np.float32),
               "proprio": self._obs[:PROPRIO_DIM].astype(np.float32),
               "goal": self._obs[GOAL].astype(np.float32)}
        if self._renderer is not None:
            obs["image"] = self._renderer.frame()
        return obs

    def state(self) -> np.ndarray:
        return self._obs.astype(np.float32)

    def joint_positions(self) -> np.ndarray:
        """The Sawyer's seven arm joint angles (rad), read from the MuJoCo model."""
        return np.array([self._env.data.joint(n).qpos[0] for n in JOINT_NAMES])

    def hold_action(self) -> np.ndarray:
        """What the robot does with no fresh action: stay put, gripper as last commanded."""
        return np.array([0.0, 0.0, 0.0, self.gripper], dtype=np.float32)

    def clip_action(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,):
            raise ValueError(f"action must have shape (4,) (dx, dy, dz, gripper), got "
                             f"{action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action.tolist()}")
        return np.clip(action, ACTION_LOW, ACTION_HIGH)

    def step(self, action: np.ndarray, observe: bool = True
             ) -> tuple[dict[str, np.ndarray] | None, bool, dict]:
        """One control step; returns ``(obs, done, info)`` with ``success``, ``timeout``,
        ``collision`` (always False: contact is physics here, not a failure) and ``steps``;
        ``obs`` is None with ``observe=False`` (a frame no one reads is not rendered)."""
        if self.done:
            raise RuntimeError("step() called on a finished episode; call reset(seed) first")
        action = self.clip_action(action)
        self.gripper = float(action[3])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._obs, _, _, _, info = self._env.step(action.astype(np.float32))
        self.steps += 1
        success = self.success = bool(info["success"])
        timeout = not success and self.steps >= self.config.max_steps
        self.done = success or timeout
        out = {"success": success, "collision": False, "timeout": timeout, "steps": self.steps,
               "effector_error": float(info.get("obj_to_target", np.nan))}
        return (self.observation() if observe else None), self.done, out

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
        self._env.close()


def expert_action(expert, env: MetaWorldEnv) -> np.ndarray:
    """The scripted expert's action for the current state, inside the action space."""
    with warnings.catch_warnings():  # the experts warn whenever their gain saturates
        warnings.simplefilter("ignore")
        return np.clip(expert.get_action(env.state().astype(np.float64)), -1.0, 1.0)


def _expert_episode(env: MetaWorldEnv, expert, seed: int, noise: float):
    """One seeded expert episode, step by step: yields ``(obs, clean_action)`` before each
    step, then executes the action with Gaussian noise of std ``noise`` (seeded by the
    episode); ``env.success`` says how it ended."""
    obs = env.reset(seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    while not env.done:
        clean = expert_action(expert, env)
        yield obs, clean.astype(np.float32)
        executed = clean + noise * rng.standard_normal(4) if noise > 0 else clean
        obs, _, _ = env.step(np.clip(executed, -1.0, 1.0))


def rollout_expert(env: MetaWorldEnv, expert, seed: int, noise: float = 0.0,
                   keys: tuple[str, ...] = ("state", "proprio")) -> tuple[dict, bool]:
    """One seeded expert episode. With ``noise`` > 0 the executed action gets Gaussian noise
    (std ``noise``, seeded by the episode) while the recorded label stays the expert's clean
    action: the demonstrations then visit states off the expert's own path and say how to get
    back (DART-style), which a deterministic expert alone never shows."""
    records: dict[str, list[np.ndarray]] = {k: [] for k in (*keys, "action")}
    for obs, clean in _expert_episode(env, expert, seed, noise):
        for k in keys:
            records[k].append(obs[k])
        records["action"].append(clean)
    return {k: np.stack(v) for k, v in records.items()}, env.success


def scene_frames(config: MetaWorldTaskConfig, seeds, noise: float, every: int,
                 progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Camera frames and the states they show along noisy expert episodes from reset ``seeds``:
    starts, reaches, grasped, carried and dropped objects. Each episode draws its own noise std
    in [0, ``noise``] and a phase, then keeps every ``every``-th step (consecutive frames are
    near copies, and rendering is the cost). Returns uint8 (n, S, S, 3) and float32 (n, 39);
    ``progress(1)`` after each episode."""
    env, expert = MetaWorldEnv(config), expert_policy(config)
    renderer = Renderer(env._env, config.image_size, config.camera)
    images, states = [], []
    try:
        for seed in seeds:
            draw = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
            std, phase = noise * draw.random(), int(draw.integers(every))
            for t, (obs, _) in enumerate(_expert_episode(env, expert, int(seed), std)):
                if t % every == phase:
                    images.append(renderer.frame())
                    states.append(obs["state"])
            if progress is not None:
                progress(1)
    finally:
        renderer.close()
        env.close()
    return np.stack(images), np.stack(states)


def generate_demos(config: MetaWorldTaskConfig, n_episodes: int, seed: int = 0,
                   noise: float = 0.1, with_images: bool = False) -> dict[str, np.ndarray]:
    """``n_episodes`` successful expert episodes from reset seeds ``seed, seed + 1, ...``, in
    the replay-buffer layout of :mod:`bac_ros.sim.demos` (failed episodes are skipped and the
    seeds used listed in ``episode_seeds``)."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1, got {n_episodes}")
    env = MetaWorldEnv(config, render_images=with_images)
    expert = expert_policy(config)
    keys = ("state", "proprio", "goal", "image") if with_images else ("state", "proprio", "goal")
    episodes, seeds = [], []
    attempt = 0
    try:
        while len(episodes) < n_episodes:
            if attempt >= 2 * n_episodes + 10:
                raise RuntimeError(f"the {config.task} expert succeeded on only {len(episodes)} "
                                   f"of {attempt} seeds from {seed}")
            steps, success = rollout_expert(env, expert, seed + attempt, noise, keys)
            if success:
                episodes.append(steps)
                seeds.append(seed + attempt)
            attempt += 1
    finally:
        env.close()
    data = {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}
    data["episode_ends"] = np.cumsum([len(e["action"]) for e in episodes]).astype(np.int64)
    data["episode_seeds"] = np.array(seeds, dtype=np.int64)
    if with_images:
        data["camera"] = np.array(config.camera)  # whose view the frames are
    return data


def demos_camera(data: dict) -> str:
    """The camera of demonstrations' frames (recorded since cameras could be chosen; before,
    every frame was ``corner``'s)."""
    return str(data["camera"]) if "camera" in data else CAMERA


def expert_outcomes(config: MetaWorldTaskConfig, seeds) -> list[bool]:
    """The scripted expert's success on each seeded episode (the reference for a policy)."""
    env, expert = MetaWorldEnv(config), expert_policy(config)
    try:
        return [rollout_expert(env, expert, int(s), keys=())[1] for s in seeds]
    finally:
        env.close()
