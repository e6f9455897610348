"""rlmesh.checks: compiled action/observation checks for pytrees against a SpaceSpec."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces as gs
from gymnasium.vector.utils import batch_space

from rlmesh.checks import make_action_checker, make_observation_checker
from rlmesh.errors import InvalidActionError
from rlmesh.spaces import spec_from_gymnasium_space
from rlmesh.specs import (
    BoxSpec,
    DictSpec,
    DiscreteSpec,
    MultiBinarySpec,
    MultiDiscreteSpec,
    TextSpec,
    TupleSpec,
)
from rlmesh.tensor import Tensor

BOX = BoxSpec((4,), "float32", -1.0, 1.0)
DISCRETE = DiscreteSpec(3, 2)
ARM = BoxSpec((3,), "float32", [-1.0, -2.0, -3.0], [1.0, 2.0, 3.0])
TEXT = TextSpec(4, 1, "abc")
NESTED = DictSpec({"arm": ARM, "grip": DISCRETE, "more": TupleSpec([TEXT, MultiBinarySpec((2,))])})

GYM_SPACES = {
    "box": gs.Box(-1.0, 1.0, (2, 3), np.float32),
    "box_inf": gs.Box(-np.inf, np.inf, (5,), np.float64),
    "box_half": gs.Box(np.array([0.0, -np.inf], np.float32), np.array([np.inf, 1.0], np.float32)),
    "box_int": gs.Box(0, 255, (4, 4), np.uint8),
    "discrete": gs.Discrete(5, start=-2),
    "multi_binary": gs.MultiBinary((2, 3)),
    "multi_discrete": gs.MultiDiscrete([3, 4, 5], start=[0, 1, -1]),
    "text": gs.Text(6, min_length=2, charset="xyz"),
    "dict": gs.Dict({"a": gs.Discrete(2), "b": gs.Box(0, 1, (2,), np.float32)}),
    "tuple": gs.Tuple((gs.Discrete(3), gs.Dict({"c": gs.MultiBinary(3)}))),
}


def _message(check: object, value: object) -> str:
    with pytest.raises(ValueError) as error:
        check(value)  # type: ignore[operator]
    return str(error.value)


# -- acceptance agrees with gymnasium ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GYM_SPACES))
def test_accepts_gymnasium_samples(name: str) -> None:
    space = GYM_SPACES[name]
    space.seed(0)
    check = make_action_checker(spec_from_gymnasium_space(space))
    for _ in range(20):
        check(space.sample())


@pytest.mark.parametrize("name", sorted(GYM_SPACES))
def test_accepts_batched_gymnasium_samples(name: str) -> None:
    batched = batch_space(GYM_SPACES[name], 3)
    batched.seed(0)
    check = make_action_checker(spec_from_gymnasium_space(GYM_SPACES[name]), num_envs=3)
    for _ in range(10):
        check(batched.sample())


def test_accepts_jax_values() -> None:
    make_action_checker(BOX)(jnp.zeros(4, jnp.float32))
    make_action_checker(BOX)(jnp.ones(4, jnp.int32))  # integer values fit a float Box
    make_action_checker(DISCRETE)(jnp.int32(4))
    make_action_checker(DISCRETE, num_envs=2)(jnp.array([2, 4], jnp.int32))
    make_action_checker(NESTED)({"arm": jnp.array([0.5, -2.0, 3.0]), "grip": 2, "more": ("ab", jnp.array([0, 1]))})
    make_action_checker(BOX)(Tensor.from_numpy(np.zeros(4, np.float32)))
    make_action_checker(BOX)([0.0, 0.5, 1.0, -1.0])  # gymnasium accepts sequences too


def test_lists_stand_for_tuples() -> None:
    make_action_checker(NESTED)({"arm": np.zeros(3), "grip": 3, "more": ["a", np.ones(2, np.int8)]})


# -- refusals name path, expectation and what was found ---------------------------------------


def test_box_refusals() -> None:
    check = make_action_checker(BOX)
    message = _message(check, jnp.zeros(3, jnp.float32))
    assert message.startswith("action: expected an array of shape (4,)")
    assert "[-1.0, 1.0]" in message and "found float32 jax.Array of shape (3,)" in message
    assert "found bool" in _message(check, jnp.zeros(4, bool))
    assert "out of bounds" in _message(check, np.full(4, 1.5, np.float32))
    assert "out of bounds" in _message(check, jnp.array([0.0, np.nan, 0.0, 0.0]))
    assert "found str" in _message(check, "up")
    assert "found float" in _message(check, 0.5)  # a scalar for a (4,) Box


def test_unbounded_and_half_bounded_boxes() -> None:
    check = make_action_checker(BoxSpec((2,), "float32", -math.inf, math.inf))
    check(np.array([1e30, -1e30], np.float32))
    half = make_action_checker(BoxSpec((2,), "float32", [0.0, -math.inf], math.inf))
    half(np.array([0.0, -1e30]))
    assert "out of bounds" in _message(half, np.array([-1.0, 0.0]))


def test_large_boxes_use_vectorised_bounds() -> None:
    check = make_action_checker(BoxSpec((64, 64), "uint8", 0, 200))
    check(np.full((64, 64), 200, np.uint8))
    big = np.zeros((64, 64), np.uint8)
    big[10, 10] = 201
    assert "out of bounds" in _message(check, big)
    assert "found float32" in _message(check, np.zeros((64, 64), np.float32))
    full_range = make_action_checker(BoxSpec((64, 64), "uint8", 0, 255))
    full_range(np.full((64, 64), 255, np.uint8))  # every uint8 fits: no scan needed
    assert "out of bounds" in _message(full_range, np.full((64, 64), 256, np.int32))
    floats = make_action_checker(BoxSpec((64,), "float32", -1.0, 1.0))
    nan = np.zeros(64, np.float32)
    nan[7] = np.nan
    assert "out of bounds" in _message(floats, nan)


def test_discrete_refusals() -> None:
    check = make_action_checker(DISCRETE)
    for bad, found in ((5, "found 5"), (1, "found 1"), (True, "found bool"), (2.0, "found float")):
        message = _message(check, bad)
        assert message.startswith("action: expected an integer in [2, 5)") and found in message
    assert "shape (1,)" in _message(check, jnp.array([3]))
    assert "found float32" in _message(check, jnp.float32(3.0))


def test_batched_refusals_name_the_batch() -> None:
    check = make_action_checker(DISCRETE, num_envs=4)
    assert "shape (4,)" in _message(check, jnp.array([2, 3, 4]))
    assert _message(check, jnp.array([2, 3, 4, 5])).startswith("action for lane 3: expected an integer in [2, 5)")
    box = make_action_checker(BOX, num_envs=2)
    box(jnp.zeros((2, 4)))
    assert "shape (2, 4)" in _message(box, jnp.zeros(4))


def test_batched_refusals_name_the_lane_and_the_leaf() -> None:
    check = make_action_checker(NESTED, num_envs=2)
    good = {
        "arm": np.zeros((2, 3), np.float32),
        "grip": np.array([2, 4]),
        "more": (("a", "b"), np.zeros((2, 2), np.int8)),
    }
    check(good)
    message = _message(check, {**good, "grip": jnp.array([2, 9])})
    assert message.startswith("action['grip'] for lane 1: expected an integer in [2, 5)") and "found" in message
    assert _message(check, {**good, "more": (("a", "z"), good["more"][1])}).startswith("action['more'][0] for lane 1")
    observation = make_observation_checker(BOX, num_envs=3)
    assert "for lane 2" in _message(
        observation, Tensor.from_numpy(np.array([[0, 0, 0, 0]] * 2 + [[0, 0, 0, 3]], np.float32))
    )


def test_structure_only_checks_accept_tracers() -> None:
    check = make_observation_checker(BOX, bounds=False)
    check(np.full(4, 7.0, np.float32))  # bounds are not checked

    def traced(x: jax.Array) -> jax.Array:
        check(x)
        return x

    jax.jit(traced)(jnp.zeros(4))
    assert "shape (4,)" in _message(check, np.zeros(3, np.float32))


def test_multi_discrete_multi_binary_and_text() -> None:
    md = make_action_checker(MultiDiscreteSpec([2, 3], [0, 1]))
    md(np.array([1, 3]))
    assert "out of bounds" in _message(md, np.array([1, 4]))
    assert "found float64" in _message(md, np.array([1.0, 2.0]))
    mb = make_action_checker(MultiBinarySpec((3,)))
    mb(jnp.array([True, False, True]))
    assert "0/1" in _message(mb, np.array([0, 2, 1]))
    text = make_action_checker(TEXT)
    text("abca")
    assert "with 'd'" in _message(text, "abd")
    assert "of length 5" in _message(text, "aaaaa")
    assert "found int" in _message(text, 3)


def test_nested_paths() -> None:
    check = make_action_checker(NESTED)
    good = {"arm": np.zeros(3, np.float32), "grip": 2, "more": ("a", np.array([0, 1]))}
    check(good)
    assert _message(check, {**good, "arm": np.array([0.0, 2.5, 0.0])}).startswith("action['arm']: ")
    assert _message(check, {**good, "grip": 7}).startswith("action['grip']: ")
    assert _message(check, {**good, "more": ("z", np.array([0, 1]))}).startswith("action['more'][0]: ")
    assert _message(check, {**good, "more": ("a", np.array([0, 3]))}).startswith("action['more'][1]: ")
    missing = _message(check, {"arm": good["arm"], "grip": 2})
    assert "missing ['more']" in missing
    extra = _message(check, {**good, "oops": 1})
    assert "unexpected ['oops']" in extra
    assert "a tuple of 2 values, found a tuple of 1 values" in _message(check, {**good, "more": ("a",)})
    assert "found NoneType" in _message(check, {**good, "grip": None})
    assert "expected a dict" in _message(check, [1, 2, 3])


def test_errors_are_typed_by_role() -> None:
    with pytest.raises(InvalidActionError):
        make_action_checker(BOX)(np.zeros(2))
    with pytest.raises(ValueError) as error:
        make_observation_checker(BOX)(np.zeros(2))
    assert not isinstance(error.value, InvalidActionError)
    assert str(error.value).startswith("observation: ")


def test_checkers_are_built_once_per_spec() -> None:
    assert make_action_checker(NESTED) is make_action_checker(NESTED)
    assert make_action_checker(BOX, num_envs=2) is not make_action_checker(BOX, num_envs=3)
    assert make_action_checker(BOX) is not make_observation_checker(BOX)
    assert make_action_checker(BOX.to_dict()) is make_action_checker(BOX)  # type: ignore[arg-type]


def test_bad_num_envs() -> None:
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="num_envs"):
            make_action_checker(BOX, num_envs=bad)


def test_tracers_are_refused_where_bounds_need_values() -> None:
    check = make_action_checker(BOX)

    def traced(x: jax.Array) -> jax.Array:
        check(x)
        return x

    with pytest.raises(ValueError, match="traced"):
        jax.jit(traced)(jnp.zeros(4))
