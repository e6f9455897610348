import gymnasium as gym
import numpy as np
import pytest

from rlmesh import Tensor
from rlmesh.bridges import NUMPY_BRIDGE
from rlmesh.spaces import (
    Box,
    Dict,
    Discrete,
    MultiBinary,
    MultiDiscrete,
    Text,
    Tuple,
    batch_spec,
    from_gymnasium_space,
    space_from_spec,
    spec_from_gymnasium_space,
    to_gymnasium_space,
)
from rlmesh.specs import EnvContract, SpaceSpec


def every_space(bridge=NUMPY_BRIDGE):
    return [
        Box(-1.0, 1.0, (3,), np.float32, bridge=bridge),
        Box(np.array([0, -5]), np.array([10, 5]), dtype=np.int32, bridge=bridge),
        Box(-np.inf, np.inf, (2,), np.float64, bridge=bridge),
        Discrete(4, start=-2, bridge=bridge),
        MultiBinary(5, bridge=bridge),
        MultiDiscrete([3, 4, 5], bridge=bridge),
        Text(8, min_length=2, charset="abc", bridge=bridge),
        Dict({"a": Discrete(2, bridge=bridge), "b": Box(0, 1, (2,), bridge=bridge)}, bridge=bridge),
        Tuple([Discrete(3, bridge=bridge), MultiBinary(2, bridge=bridge)], bridge=bridge),
    ]


@pytest.mark.parametrize("space", every_space(), ids=repr)
def test_samples_are_members_and_seeding_reproduces(space) -> None:
    assert space.seed(123) == 123
    first = [space.sample() for _ in range(5)]
    space.seed(123)
    second = [space.sample() for _ in range(5)]
    for a, b in zip(first, second, strict=True):
        assert space.contains(a)
        assert repr(a) == repr(b)


@pytest.mark.parametrize("space", every_space(), ids=repr)
def test_spec_dict_round_trip_and_gymnasium_equivalence(space) -> None:
    spec = space.spec
    assert SpaceSpec.from_dict(spec.to_dict()) == spec
    gym_space = to_gymnasium_space(spec)
    assert spec_from_gymnasium_space(gym_space) == spec
    gym_space.seed(0)
    assert space.contains(gym_space.sample())
    assert space_from_spec(spec, NUMPY_BRIDGE).spec == spec


def test_seed_none_returns_a_fresh_seed() -> None:
    space = Discrete(10)
    assert isinstance(space.seed(), int)
    with pytest.raises(ValueError, match="non-negative integer"):
        space.seed(-1)


def test_contains_rejects_wrong_shape_kind_and_bounds() -> None:
    box = Box(-1.0, 1.0, (2,), np.float32)
    assert box.contains(np.zeros(2, np.float64))  # same kind is accepted
    assert not box.contains(np.zeros(3, np.float32))
    assert not box.contains(np.array([0.0, 2.0], np.float32))
    assert not box.contains(np.array(["a", "b"]))
    discrete = Discrete(3)
    assert discrete.contains(2) and discrete.contains(np.int64(1))
    assert not discrete.contains(3) and not discrete.contains(1.0) and not discrete.contains(True)
    assert not Text(3, charset="ab").contains("abc")
    assert not Dict({"a": Discrete(2)}).contains({"b": 0})
    assert not Tuple([Discrete(2)]).contains((0, 1))


def test_tensor_bridge_samples_tensors_and_primitives() -> None:
    box = Box(0.0, 1.0, (2, 2))
    assert isinstance(box.sample(), Tensor) and box.contains(box.sample())
    assert isinstance(Discrete(3).sample(), int)


def test_numpy_bridge_discrete_sample_is_a_numpy_integer() -> None:
    sample = Discrete(3, bridge=NUMPY_BRIDGE).sample()
    assert isinstance(sample, np.integer)


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Graph(gym.spaces.Box(0, 1, (2,)), None),
        gym.spaces.Sequence(gym.spaces.Discrete(2)),
        gym.spaces.OneOf([gym.spaces.Discrete(2)]),
    ],
    ids=lambda s: type(s).__name__,
)
def test_unsupported_gymnasium_spaces_fail_loudly(space) -> None:
    with pytest.raises(ValueError, match=f"{type(space).__name__} spaces .* cannot be served"):
        from_gymnasium_space(space)


def test_batch_spec_matches_gymnasium_batch_space() -> None:
    from gymnasium.vector.utils import batch_space

    for gym_space in [
        gym.spaces.Discrete(3, start=1),
        gym.spaces.Box(-1, 1, (2,)),
        gym.spaces.MultiBinary(3),
        gym.spaces.Dict({"x": gym.spaces.Discrete(2)}),
    ]:
        spec = spec_from_gymnasium_space(gym_space)
        assert batch_spec(spec, 4) == spec_from_gymnasium_space(batch_space(gym_space, 4))


def test_contract_round_trip_and_default_id() -> None:
    contract = EnvContract(Discrete(2).spec, Box(0, 1, (1,)).spec, num_envs=3, metadata={"render_fps": 4})
    assert contract.id == "UnknownEnv-v1"
    assert EnvContract.from_dict(contract.to_dict()) == contract
    assert contract.is_vector


def test_bad_spec_kind() -> None:
    with pytest.raises(ValueError, match="space kind 'graph'"):
        SpaceSpec.from_dict({"kind": "graph"})
