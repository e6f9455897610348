"""Contract checks for action and observation trees, compiled once per space spec.

One checker serves the server, every client backend, spaces' ``contains``, models and the
Flax policy. It checks the tree structure (dict keys, tuple lengths), each leaf's shape,
dtype kind and, where the space has them, bounds (Box low/high, Discrete and MultiDiscrete
ranges, MultiBinary 0/1, Text length and charset). A failure is a ``ValueError``
(:class:`~rlmesh.errors.InvalidActionError` for actions) naming the leaf path, the lane of a
batch, what was expected and what was found::

    action['arm']: expected an array of shape (3,) with float values in [-1.0, 1.0] (Box),
    found float32 array of shape (2,)

Everything derivable from the spec (paths, shapes, accepted dtype kinds, bound arrays,
whether bounds are uniform) is computed when the checker is built, so the per-call cost is a
few attribute reads and comparisons. Leaves may be ``jax.Array`` (moved to the host only for
bound checks), NumPy arrays and scalars, Python scalars, or rlmesh Tensors.

Accepted dtype kinds follow Gymnasium's ``contains`` after the server's cast: float Boxes
accept float and integer arrays; integer Boxes, Discrete and MultiDiscrete accept signed or
unsigned integers; MultiBinary accepts bool and integers holding 0/1.

Batched checkers (``num_envs=N``) expect the batched form ``gymnasium.vector.utils.batch_space``
builds: leaves with a leading axis of ``N`` (Discrete becomes an integer array of shape
``(N,)``) and Text becomes a tuple of ``N`` strings.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rlmesh.errors import InvalidActionError
from rlmesh.specs import (
    BoxSpec,
    DictSpec,
    DiscreteSpec,
    MultiBinarySpec,
    MultiDiscreteSpec,
    SpaceSpec,
    TextSpec,
    TupleSpec,
)
from rlmesh.tensor import Tensor

__all__ = ["Checker", "make_action_checker", "make_checker", "make_observation_checker"]

Checker = Callable[[Any], None]
"""A compiled check: call it with a value tree; it returns None or raises ValueError."""

# Arrays this small are bound-checked element by element in Python, which beats NumPy's
# per-call overhead.
_SMALL = 16
_INT_KINDS = "iu"
_KIND_WORDS = {"f": "float", "iu": "integer", "fiu": "float or integer", "biu": "0/1", "b": "bool"}


class _Fail(Exception):
    """Internal: a value failed; ``path`` grows as the failure leaves nested containers."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def _jax() -> Any:
    """The jax module when it is already imported (no value can be a jax.Array otherwise)."""
    return sys.modules.get("jax")


def _describe(value: Any) -> str:
    """How a found value reads in an error message."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        jax = _jax()
        if jax is not None and isinstance(value, jax.Array):
            kind = "jax.Array"
        elif isinstance(value, np.generic):
            kind = "NumPy scalar"
        else:
            kind = "NumPy array" if isinstance(value, np.ndarray) else type(value).__name__
        return f"{dtype} {kind} of shape {tuple(shape)}" + (f" = {_scalar_text(value)}" if not shape else "")
    if isinstance(value, str):
        return f"str {value!r:.60} of length {len(value)}"
    return f"{type(value).__name__} {value!r:.60}"


def _scalar_text(value: Any) -> str:
    try:
        return f"{value.item()!r:.60}"
    except Exception:  # a tracer has no concrete value
        return f"{value!r:.60}"


def _as_numpy(value: Any, expected: str) -> np.ndarray:
    """A host NumPy view/copy of an array-like leaf; _Fail for tracers and non-arrays."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Tensor):
        return value.numpy()
    jax = _jax()
    if jax is not None and isinstance(value, jax.core.Tracer):
        raise _Fail(
            f"{expected} (a concrete value), found a traced value (checks run outside jax.jit; inside jit "
            "use rlmesh.integrations.jit_step)"
        )
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise _Fail(f"{expected}, found {_describe(value)}") from None
    if array.dtype == object:
        raise _Fail(f"{expected}, found {_describe(value)}")
    return array


# -- leaves --------------------------------------------------------------------------------
# A leaf check takes a value and raises _Fail("expected ..., found ...").


def _array_checker(
    shape: tuple[int, ...],
    kinds: str,
    low: np.ndarray | None,
    high: np.ndarray | None,
    high_exclusive: bool,
    what: str,
) -> Checker:
    """Shape, dtype kind, and elementwise bounds (None when unbounded on that side)."""
    size = math.prod(shape)
    expected = f"expected {what}"
    low_list = None if low is None else np.broadcast_to(low, shape).reshape(-1).tolist()
    high_list = None if high is None else np.broadcast_to(high, shape).reshape(-1).tolist()
    low_scalar = low_list[0] if low_list and all(v == low_list[0] for v in low_list) else None
    high_scalar = high_list[0] if high_list and all(v == high_list[0] for v in high_list) else None
    low_full = None if low is None else np.broadcast_to(low, shape)
    high_full = None if high is None else np.broadcast_to(high, shape)
    scalar_shape = shape == ()
    bounded = low is not None or high is not None
    max_low = None if low is None else np.max(low)
    min_high = None if high is None else np.min(high)
    dtype_covered: dict[np.dtype, bool] = {}

    def in_bounds(array: np.ndarray) -> bool:
        if size <= _SMALL:
            values = array.reshape(-1).tolist()
            if low_list is not None:
                if low_scalar is not None:
                    if not all(v >= low_scalar for v in values):
                        return False
                elif not all(v >= b for v, b in zip(values, low_list, strict=True)):
                    return False
            if high_list is not None:
                if high_scalar is not None:
                    if high_exclusive:
                        return all(v < high_scalar for v in values)
                    return all(v <= high_scalar for v in values)
                if high_exclusive:
                    return all(v < b for v, b in zip(values, high_list, strict=True))
                return all(v <= b for v, b in zip(values, high_list, strict=True))
            return True
        covered = dtype_covered.get(array.dtype)
        if covered is None:
            covered = dtype_covered[array.dtype] = _range_within(array.dtype, max_low, min_high, high_exclusive)
        if covered:  # e.g. uint8 images in a [0, 255] Box: every value of the dtype fits
            return True
        # `not (x >= b)` rather than `x < b`, so that NaN fails.
        if low_scalar is not None:
            if not array.min() >= low_scalar:
                return False
        elif low_full is not None and not bool(np.all(array >= low_full)):
            return False
        if high_scalar is not None:
            top = array.max()
            return bool(top < high_scalar) if high_exclusive else bool(top <= high_scalar)
        if high_full is not None:
            return bool(np.all(array < high_full) if high_exclusive else np.all(array <= high_full))
        return True

    def check(value: Any) -> None:
        kind = type(value)
        if kind is bool or kind is int or kind is float:
            if not scalar_shape:
                raise _Fail(f"{expected}, found {_describe(value)}")
            array = np.asarray(value)
        else:
            if kind is Tensor:
                value = value.numpy()
            dtype = getattr(value, "dtype", None)
            if dtype is None or getattr(value, "shape", None) is None:
                array = _as_numpy(value, expected)
            else:
                if value.shape != shape or dtype.kind not in kinds:
                    raise _Fail(f"{expected}, found {_describe(value)}")
                if not bounded:
                    return
                array = _as_numpy(value, expected)
        if array.shape != shape or array.dtype.kind not in kinds:
            raise _Fail(f"{expected}, found {_describe(value)}")
        if bounded and size and not in_bounds(array):
            shown = np.array2string(array, threshold=8)
            raise _Fail(f"{expected}, found {_describe(value)} out of bounds: {shown}")

    return check


def _range_within(dtype: np.dtype, max_low: Any, min_high: Any, high_exclusive: bool) -> bool:
    """Whether every value of an integer or bool ``dtype`` lies within the bounds."""
    if dtype.kind == "b":
        smallest, largest = 0, 1
    elif dtype.kind in _INT_KINDS:
        info = np.iinfo(dtype)
        smallest, largest = int(info.min), int(info.max)
    else:
        return False
    if max_low is not None and not max_low <= smallest:
        return False
    if min_high is not None:
        return bool(min_high > largest) if high_exclusive else bool(min_high >= largest)
    return True


def _bound_text(low: np.ndarray | None, high: np.ndarray | None, exclusive: bool) -> str:
    def show(bound: np.ndarray | None, default: str) -> str:
        if bound is None:
            return default
        flat = bound.reshape(-1)
        if flat.size and np.all(flat == flat[0]):
            return str(flat[0].item())
        return np.array2string(bound, threshold=8, separator=", ")

    close = ")" if exclusive else "]"
    low_text, high_text = show(low, "-inf"), show(high, "inf")
    if "[" in low_text or "[" in high_text:
        return f"elementwise low={low_text}, high={high_text}" + (" (high exclusive)" if exclusive else "")
    return f"[{low_text}, {high_text}{close}"


def _finite_or_none(bound: np.ndarray, sign: int) -> np.ndarray | None:
    """None when every element is the infinite bound of that side (nothing to check)."""
    if bound.dtype.kind == "f" and bool(np.all(bound == sign * np.inf)):
        return None
    return bound


def _discrete_scalar(start: int, n: int, what: str) -> Checker:
    stop = start + n
    expected = f"expected {what}"

    def check(value: Any) -> None:
        kind = type(value)
        if kind is int:
            if not start <= value < stop:
                raise _Fail(f"{expected}, found {value}")
            return
        if kind is bool or isinstance(value, str | bytes | float):
            raise _Fail(f"{expected}, found {_describe(value)}")
        if kind is Tensor:
            value = value.numpy()
        dtype = getattr(value, "dtype", None)
        if dtype is not None and (dtype.kind not in _INT_KINDS or getattr(value, "shape", ()) != ()):
            raise _Fail(f"{expected}, found {_describe(value)}")
        array = _as_numpy(value, expected)
        if array.shape != () or array.dtype.kind not in _INT_KINDS:
            raise _Fail(f"{expected}, found {_describe(value)}")
        if not start <= array.item() < stop:
            raise _Fail(f"{expected}, found {_describe(value)}")

    return check


def _text_checker(spec: TextSpec, bounds: bool) -> Checker:
    min_length, max_length = (spec.min_length, spec.max_length) if bounds else (0, math.inf)
    charset = frozenset(spec.charset)
    any_character = not bounds
    expected = (
        f"expected a str of {min_length} to {max_length} characters from the space's "
        f"charset of {len(charset)} characters (Text)"
    )

    def check(value: Any) -> None:
        if type(value) is not str:
            raise _Fail(f"{expected}, found {_describe(value)}")
        if not min_length <= len(value) <= max_length:
            raise _Fail(f"{expected}, found {_describe(value)}")
        if any_character:
            return
        outside = set(value) - charset
        if outside:
            raise _Fail(f"{expected}, found {_describe(value)} with {''.join(sorted(outside))!r}")

    return check


# -- compilation: one registration per spec kind ---------------------------------------------


@functools.singledispatch
def _compile(spec: SpaceSpec, batch: tuple[int, ...], bounds: bool) -> Checker:
    """A check for values of ``spec`` with leading ``batch`` axes (raises _Fail)."""
    raise TypeError(f"cannot check values of {type(spec).__name__} {spec!r:.80}")


@_compile.register
def _(spec: BoxSpec, batch: tuple[int, ...], bounds: bool) -> Checker:
    dtype = np.dtype(spec.dtype)
    kinds = "fiu" if dtype.kind == "f" else _INT_KINDS if dtype.kind in _INT_KINDS else dtype.kind
    low = _finite_or_none(np.broadcast_to(np.asarray(spec.low), spec.shape), -1)
    high = _finite_or_none(np.broadcast_to(np.asarray(spec.high), spec.shape), 1)
    shape = batch + spec.shape
    what = (
        f"an array of shape {shape} with {_KIND_WORDS.get(kinds, dtype.name)} values in "
        f"{_bound_text(low, high, False)} (Box, {dtype.name})"
    )
    return _array_checker(shape, kinds, low if bounds else None, high if bounds else None, False, what)


@_compile.register
def _(spec: DiscreteSpec, batch: tuple[int, ...], bounds: bool) -> Checker:
    start, n = spec.start, spec.n
    if not batch and bounds:
        return _discrete_scalar(start, n, f"an integer in [{start}, {start + n}) (Discrete({n}, start={start}))")
    what = f"an integer array of shape {batch} with values in [{start}, {start + n}) (Discrete({n}, start={start}))"
    if not batch:
        what = f"an integer (Discrete({n}, start={start}))"
    low, high = (np.asarray(start), np.asarray(start + n)) if bounds else (None, None)
    return _array_checker(batch, _INT_KINDS, low, high, True, what)


@_compile.register
def _(spec: MultiDiscreteSpec, batch: tuple[int, ...], bounds: bool) -> Checker:
    nvec = np.asarray(spec.nvec, dtype=np.int64)
    start = np.asarray(spec.start, dtype=np.int64)
    shape = batch + tuple(nvec.shape)
    bound_text = _bound_text(start, start + nvec, True)
    what = f"an integer array of shape {shape} with values in {bound_text} (MultiDiscrete({nvec.tolist()}))"
    low, high = (start, start + nvec) if bounds else (None, None)
    return _array_checker(shape, _INT_KINDS, low, high, True, what)


@_compile.register
def _(spec: MultiBinarySpec, batch: tuple[int, ...], bounds: bool) -> Checker:
    shape = batch + spec.shape
    what = f"an array of shape {shape} with 0/1 values (MultiBinary({list(spec.shape)}))"
    low, high = (np.asarray(0), np.asarray(1)) if bounds else (None, None)
    return _array_checker(shape, "biu", low, high, False, what)


@_compile.register
def _(spec: TextSpec, batch: tuple[int, ...], bounds: bool) -> Checker:
    text = _text_checker(spec, bounds)
    if not batch:
        return text
    return _tuple_checker([text] * batch[0])  # batch_space(Text) is a Tuple of num_envs Texts


@_compile.register
def _(spec: DictSpec, batch: tuple[int, ...], bounds: bool) -> Checker:
    children = [(key, f"[{key!r}]", _compile(sub, batch, bounds)) for key, sub in spec.spaces.items()]
    keys = frozenset(spec.spaces)
    what = f"expected a dict with keys {sorted(keys)}"

    def check(value: Any) -> None:
        if not isinstance(value, Mapping):
            raise _Fail(f"{what}, found {_describe(value)}")
        if len(value) != len(keys) or value.keys() != keys:
            found = set(map(str, value))
            missing, extra = sorted(keys - found), sorted(found - keys)
            raise _Fail(
                f"{what}, found a dict with keys {sorted(found)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unexpected {extra})" if extra else "")
            )
        for key, step, child in children:
            try:
                child(value[key])
            except _Fail as failure:
                failure.path = step + failure.path
                raise

    return check


@_compile.register
def _(spec: TupleSpec, batch: tuple[int, ...], bounds: bool) -> Checker:
    return _tuple_checker([_compile(sub, batch, bounds) for sub in spec.spaces])


def _tuple_checker(children: list[Checker]) -> Checker:
    size = len(children)
    what = f"expected a tuple of {size} values"
    indexed = list(enumerate(children))

    def check(value: Any) -> None:
        if not isinstance(value, tuple | list):
            raise _Fail(f"{what}, found {_describe(value)}")
        if len(value) != size:
            raise _Fail(f"{what}, found a {type(value).__name__} of {len(value)} values")
        for i, child in indexed:
            try:
                child(value[i])
            except _Fail as failure:
                failure.path = f"[{i}]" + failure.path
                raise

    return check


# -- lanes of a batch --------------------------------------------------------------------------


@functools.singledispatch
def _lane(spec: SpaceSpec, value: Any, lane: int) -> Any:
    """Lane ``lane`` of a batched value of ``spec`` (an array leaf indexed on its first axis)."""
    return (value.numpy() if type(value) is Tensor else value)[lane]


@_lane.register
def _(spec: DictSpec, value: Any, lane: int) -> Any:
    return {key: _lane(sub, value[key], lane) for key, sub in spec.spaces.items()}


@_lane.register
def _(spec: TupleSpec, value: Any, lane: int) -> Any:
    return tuple(_lane(sub, item, lane) for sub, item in zip(spec.spaces, value, strict=True))


def _failing_lane(
    spec: SpaceSpec, shaped: Checker, single: Checker, value: Any, num_envs: int
) -> tuple[int, _Fail] | None:
    """The first lane whose value fails ``single``; None unless the batch is well shaped."""
    try:
        shaped(value)
    except _Fail:
        return None
    for lane in range(num_envs):
        try:
            item = _lane(spec, value, lane)
        except Exception:  # not splittable into lanes: the batch-level message stands
            return None
        try:
            single(item)
        except _Fail as failure:
            return lane, failure
    return None


# -- public ----------------------------------------------------------------------------------


def _build(spec: SpaceSpec, num_envs: int | None, name: str, error: type[ValueError], bounds: bool) -> Checker:
    if num_envs is not None and (isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1):
        raise ValueError(f"num_envs must be a positive integer or None, got {num_envs!r}")
    if num_envs is None:
        root = _compile(spec, (), bounds)

        def check(value: Any) -> None:
            try:
                root(value)
            except _Fail as failure:
                raise error(f"{name}{failure.path}: {failure.message}") from None

        return check

    batched = _compile(spec, (num_envs,), bounds)
    single = _compile(spec, (), bounds)
    shaped = _compile(spec, (num_envs,), False)

    def check_batch(value: Any) -> None:
        try:
            batched(value)
        except _Fail as failure:
            found = _failing_lane(spec, shaped, single, value, num_envs)
            if found is not None:
                lane, lane_failure = found
                raise error(f"{name}{lane_failure.path} for lane {lane}: {lane_failure.message}") from None
            raise error(f"{name}{failure.path}: {failure.message}") from None

    return check_batch


@functools.lru_cache(maxsize=256)
def _cached(spec: SpaceSpec, num_envs: int | None, role: str, bounds: bool) -> Checker:
    error = InvalidActionError if role == "action" else ValueError
    return _build(spec, num_envs, role, error, bounds)


def make_checker(
    spec: SpaceSpec | Mapping[str, Any], role: str, *, num_envs: int | None = None, bounds: bool = True
) -> Checker:
    """Build (once per arguments; cached) a check for values of ``spec``.

    Args:
        spec: The space spec of one environment (or its dict form).
        role: ``"action"`` (failures raise :class:`~rlmesh.errors.InvalidActionError`) or
            ``"observation"`` (``ValueError``); also the name that starts each message.
        num_envs: None for one environment; ``N`` for values batched over ``N`` lanes, whose
            failures name the first bad lane.
        bounds: Check bounds too. ``False`` checks structure, shapes and dtype kinds only,
            which works on traced values inside ``jax.jit``.

    Returns:
        ``check(value) -> None``, raising a ``ValueError`` that names the leaf path, the
        expectation and what was found.

    Raises:
        ValueError: ``num_envs`` is not a positive integer or None.
    """
    if isinstance(spec, Mapping):
        spec = SpaceSpec.from_dict(spec)
    return _cached(spec, num_envs, role, bounds)


def make_action_checker(spec: SpaceSpec, *, num_envs: int | None = None) -> Checker:
    """:func:`make_checker` for actions: failures raise :class:`~rlmesh.errors.InvalidActionError`.

    Example:
        >>> check = make_action_checker(DiscreteSpec(2))
        >>> check(1)
        >>> check(2)
        Traceback (most recent call last):
        rlmesh.errors.InvalidActionError: action: expected an integer in [0, 2) ...
    """
    return make_checker(spec, "action", num_envs=num_envs)


def make_observation_checker(spec: SpaceSpec, *, num_envs: int | None = None, bounds: bool = True) -> Checker:
    """:func:`make_checker` for observations: failures raise ``ValueError``."""
    return make_checker(spec, "observation", num_envs=num_envs, bounds=bounds)
