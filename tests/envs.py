"""Small Gymnasium envs the tests serve: nested spaces, images, every dtype, failures."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlmesh.tensor import WIRE_DTYPES


class DictTupleEnv(gym.Env):
    """Dict and Tuple observations and a Dict action; episodes end after 20 steps."""

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {
                "position": spaces.Box(-1.0, 1.0, (3,), np.float32),
                "flags": spaces.MultiBinary(4),
                "pair": spaces.Tuple((spaces.Discrete(5), spaces.Box(0.0, 10.0, (2,), np.float64))),
            }
        )
        self.action_space = spaces.Dict({"move": spaces.Box(-1.0, 1.0, (2,), np.float32), "jump": spaces.Discrete(2)})
        self._t = 0

    def _observation(self) -> dict[str, Any]:
        rng = self.np_random
        return {
            "position": rng.uniform(-1, 1, 3).astype(np.float32),
            "flags": rng.integers(0, 2, 4).astype(np.int8),
            "pair": (int(rng.integers(5)), rng.uniform(0, 10, 2)),
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._t = 0
        return self._observation(), {"t": 0, "note": "reset"}

    def step(self, action: Any) -> Any:
        self._t += 1
        reward = float(np.sum(action["move"])) + float(action["jump"])
        return self._observation(), reward, self._t >= 20, False, {"t": self._t, "nested": {"a": (1, 2)}}


class ImageEnv(gym.Env):
    """84x84x4 uint8 observations, Discrete(4) actions, rgb_array rendering; 50-step episodes."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(0, 255, (84, 84, 4), np.uint8)
        self.action_space = spaces.Discrete(4)
        self.render_mode = render_mode
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._t = 0
        return self.np_random.integers(0, 256, (84, 84, 4), dtype=np.uint8), {}

    def step(self, action: Any) -> Any:
        self._t += 1
        obs = self.np_random.integers(0, 256, (84, 84, 4), dtype=np.uint8)
        obs[0, 0, 0] = action
        return obs, float(action), False, self._t >= 50, {}

    def render(self) -> Any:
        frame = np.zeros((32, 48, 3), dtype=np.uint8)
        frame[:, :, 0] = self._t
        return frame


class EchoEnv(gym.Env):
    """Observes the action it was given: one Box of each of the 12 wire dtypes."""

    def __init__(self) -> None:
        boxes = {}
        for name in WIRE_DTYPES:
            dtype = np.dtype(name)
            if dtype.kind == "b":
                boxes[name] = spaces.Box(0, 1, (2, 3), dtype)
            elif dtype.kind in "iu":
                info = np.iinfo(dtype)
                boxes[name] = spaces.Box(info.min, info.max, (2, 3), dtype)
            else:
                boxes[name] = spaces.Box(-1000, 1000, (2, 3), dtype)
        self.observation_space = spaces.Dict(boxes)
        self.action_space = spaces.Dict(boxes)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> Any:
        return action, 0.0, False, False, {"dtypes": {k: str(v.dtype) for k, v in action.items()}}


class CrashingEnv(gym.Env):
    """CartPole-like spaces; ``step`` raises on its third call."""

    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self) -> None:
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(4, np.float32), {}

    def step(self, action: Any) -> Any:
        self._t += 1
        if self._t == 3:
            raise RuntimeError("boom at step 3")
        return np.zeros(4, np.float32), 1.0, False, False, {}


class UnencodableInfoEnv(CrashingEnv):
    """Puts an arbitrary Python object into ``info``."""

    def step(self, action: Any) -> Any:
        return np.zeros(4, np.float32), 1.0, False, False, {"obj": object(), "ok": 1}


class CountingEnv(gym.Env):
    """A 256 KiB float32 observation filled with the step count; ``info_bytes`` pads info.

    Values tell which step produced an array, so a buffer reused too early shows up.
    """

    metadata = {"render_modes": []}

    def __init__(self, info_bytes: int = 0) -> None:
        self.observation_space = spaces.Box(0.0, 1e9, (256, 256), np.float32)
        self.action_space = spaces.Discrete(2)
        self.info_bytes = int(info_bytes)
        self._t = 0

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"t": self._t}
        if self.info_bytes:
            info["padding"] = np.full(self.info_bytes, self._t % 251, np.uint8)
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._t = 0
        return np.zeros((256, 256), np.float32), self._info()

    def step(self, action: Any) -> Any:
        self._t += 1
        return np.full((256, 256), self._t, np.float32), float(action), False, False, self._info()


class CloseCounter:
    """A factory that counts how often the envs it made were closed."""

    def __init__(self, env_id: str = "CartPole-v1") -> None:
        self.env_id = env_id
        self.made = 0
        self.closes: list[int] = []

    def __call__(self) -> gym.Env:
        self.made += 1
        env = gym.make(self.env_id)
        index = self.made
        original = env.close

        def close() -> None:
            self.closes.append(index)
            original()

        env.close = close  # type: ignore[method-assign]
        return env


def make_dict_env() -> gym.Env:
    """Factory used through ``rlmesh serve envs:make_dict_env``."""
    return DictTupleEnv()


def make_image_env(render_mode: str | None = None) -> gym.Env:
    """Factory used through ``rlmesh serve envs:make_image_env``."""
    return ImageEnv(render_mode=render_mode)


class SleepyEnv(CrashingEnv):
    """CartPole-like spaces; action 1 sleeps half a second, action 0 returns at once."""

    def step(self, action: Any) -> Any:
        if int(action) == 1:
            time.sleep(0.5)
        return np.zeros(4, np.float32), 1.0, False, False, {}


class ThreadReportingEnv(gym.Env):
    """Counts its steps (the observation) and names the thread that stepped it (``info``).

    Action 1 takes 0.1 s: longer than a server serves on its own thread.
    """

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0.0, 1e9, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(1, np.float32), {"thread": threading.current_thread().name}

    def step(self, action: Any) -> Any:
        if int(action) == 1:
            time.sleep(0.1)
        self._t += 1
        return np.full(1, self._t, np.float32), 0.0, False, False, {"thread": threading.current_thread().name}


class ExitingEnv(CrashingEnv):
    """CartPole-like spaces; action 1 ends the whole process with ``os._exit(1)``."""

    def step(self, action: Any) -> Any:
        if int(action) == 1:
            os._exit(1)
        return np.zeros(4, np.float32), 1.0, False, False, {"pid": os.getpid()}


def make_exiting_env() -> gym.Env:
    """Picklable factory for process isolation tests."""
    return ExitingEnv()
