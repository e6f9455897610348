"""Unit tests for rlmesh.integrations.ppo: GAE, loss, distributions, optimiser, collectors."""

from __future__ import annotations

import math

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training.train_state import TrainState
from jax.experimental import io_callback

from rlmesh.integrations.ppo import (
    ActorCritic,
    Batch,
    LossConfig,
    PythonCollector,
    Rollout,
    UpdateConfig,
    actor_critic_for,
    episode_returns,
    gae,
    initial_state,
    make_greedy_fn,
    make_optimizer,
    make_scan_collector,
    make_update_fn,
    ppo_loss_terms,
    reset_step_mask,
)
from rlmesh.integrations.ppo import distributions as D
from rlmesh.integrations.ppo.loss import normalize_advantages


def _col(*xs: float) -> jax.Array:
    return jnp.asarray(xs, jnp.float32)[:, None]


def _bcol(*xs: bool) -> jax.Array:
    return jnp.asarray(xs, bool)[:, None]


# ---------------------------------------------------------------- GAE -----


def test_gae_termination_and_reset_step_by_hand() -> None:
    # Step 1 terminates; step 2 is the NEXT_STEP reset step (reward 0, masked out).
    adv, ret = gae(
        rewards=_col(1, 1, 0, 1),
        values=_col(1, 2, 3, 4),
        terminations=_bcol(False, True, False, False),
        truncations=_bcol(False, False, False, False),
        valid=_bcol(True, True, False, True),
        last_value=jnp.asarray([5.0]),
        gamma=0.5,
        gae_lambda=0.5,
    )
    # A3 = 1 + .5*5 - 4 = -0.5
    # A1 = 1 - 2 = -1 (terminated: no bootstrap, recursion cut)
    # A0 = (1 + .5*2 - 1) + .25 * A1 = 0.75
    np.testing.assert_allclose(adv[:, 0], [0.75, -1.0, 0.0, -0.5], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [1.75, 1.0, 0.0, 3.5], rtol=1e-6)


def test_gae_truncation_bootstraps_with_final_observation_value() -> None:
    # Step 1 is truncated: the value stored at the reset step (V=3) is V(final obs).
    adv, ret = gae(
        rewards=_col(1, 1, 0, 1),
        values=_col(1, 2, 3, 4),
        terminations=_bcol(False, False, False, False),
        truncations=_bcol(False, True, False, False),
        valid=_bcol(True, True, False, True),
        last_value=jnp.asarray([5.0]),
        gamma=0.5,
        gae_lambda=0.5,
    )
    # A1 = 1 + .5*3 - 2 = 0.5 (bootstrap, recursion still cut); A0 = 1 + .25*0.5 = 1.125
    np.testing.assert_allclose(adv[:, 0], [1.125, 0.5, 0.0, -0.5], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [2.125, 2.5, 0.0, 3.5], rtol=1e-6)


def test_gae_done_at_last_step() -> None:
    kw = {
        "rewards": _col(1, 1),
        "values": _col(0, 0),
        "valid": _bcol(True, True),
        "last_value": jnp.asarray([10.0]),
        "gamma": 0.5,
        "gae_lambda": 1.0,
    }
    adv_term, _ = gae(terminations=_bcol(False, True), truncations=_bcol(False, False), **kw)
    adv_trunc, _ = gae(terminations=_bcol(False, False), truncations=_bcol(False, True), **kw)
    np.testing.assert_allclose(adv_term[:, 0], [1.5, 1.0])
    np.testing.assert_allclose(adv_trunc[:, 0], [4.0, 6.0])  # 1 + .5*10 = 6; 1 + .5*6 = 4


def _reference_gae(r, v, term, trunc, valid, last, gamma, lam):  # type: ignore[no-untyped-def]
    t_len, n = r.shape
    adv = np.zeros((t_len, n))
    for i in range(n):
        a = 0.0
        for t in reversed(range(t_len)):
            nv = last[i] if t == t_len - 1 else v[t + 1, i]
            delta = r[t, i] + gamma * nv * (1 - term[t, i]) - v[t, i]
            a = delta + gamma * lam * (1 - (term[t, i] or trunc[t, i])) * a
            adv[t, i] = a if valid[t, i] else 0.0
    return adv


def test_gae_matches_loop_reference_on_random_lanes() -> None:
    rng = np.random.default_rng(0)
    t_len, n = 33, 5
    r, v = rng.normal(size=(t_len, n)), rng.normal(size=(t_len, n))
    term, trunc = rng.random((t_len, n)) < 0.1, rng.random((t_len, n)) < 0.05
    trunc &= ~term
    valid = np.asarray(reset_step_mask(jnp.asarray(term | trunc), jnp.ones(n, bool)))
    last = rng.normal(size=n)
    adv, ret = gae(
        jnp.asarray(r),
        jnp.asarray(v),
        jnp.asarray(term),
        jnp.asarray(trunc),
        jnp.asarray(valid),
        jnp.asarray(last),
        0.99,
        0.95,
    )
    expected = _reference_gae(r, v, term, trunc, valid, last, 0.99, 0.95)
    np.testing.assert_allclose(adv, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ret, np.where(valid, expected + v, 0.0), rtol=1e-4, atol=1e-5)


def test_reset_step_mask() -> None:
    dones = jnp.asarray([[True, False], [False, False], [False, True]])
    mask = reset_step_mask(dones, jnp.asarray([True, False]))
    np.testing.assert_array_equal(mask, [[True, False], [False, True], [True, True]])


# ---------------------------------------------------------------- loss ----


def _tiny_batch(mask: tuple[float, ...] = (1.0, 1.0, 0.0)) -> Batch:
    return Batch(
        obs=jnp.zeros((3, 1)),
        actions=jnp.zeros(3, jnp.int32),
        logprobs=jnp.zeros(3),
        values=jnp.zeros(3),
        advantages=jnp.asarray([1.0, 1.0, 5.0]),
        returns=jnp.asarray([2.0, 0.0, 9.0]),
        mask=jnp.asarray(mask),
    )


def test_ppo_loss_terms_by_hand() -> None:
    new_logprob = jnp.log(jnp.asarray([1.5, 0.5, math.exp(0.3)]))
    new_value = jnp.asarray([1.0, -0.1, 9.0])
    entropy = jnp.asarray([1.0, 2.0, 100.0])
    cfg = LossConfig(clip_coef=0.2, ent_coef=0.01, vf_coef=0.5, clip_vloss=True, norm_adv=False)
    loss, m = ppo_loss_terms(new_logprob, new_value, entropy, _tiny_batch(), cfg)
    # policy: sample 0 ratio 1.5 -> max(-1.5, -1.2) = -1.2; sample 1 ratio .5 -> max(-.5, -.8)
    assert m["policy_loss"] == pytest.approx(-0.85, rel=1e-6)
    # value: sample 0 max((1-2)^2, (0.2-2)^2) = 3.24; sample 1: 0.01 both ways
    assert m["value_loss"] == pytest.approx(0.5 * (3.24 + 0.01) / 2, rel=1e-6)
    assert m["entropy"] == pytest.approx(1.5, rel=1e-6)
    assert loss == pytest.approx(-0.85 + 0.5 * 0.8125 - 0.01 * 1.5, rel=1e-6)
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert m["approx_kl"] == pytest.approx(kl, rel=1e-5)
    assert m["clipfrac"] == pytest.approx(1.0)

    cfg_unclipped = cfg._replace(clip_vloss=False)
    _, m2 = ppo_loss_terms(new_logprob, new_value, entropy, _tiny_batch(), cfg_unclipped)
    assert m2["value_loss"] == pytest.approx(0.5 * (1.0 + 0.01) / 2, rel=1e-6)


def test_masked_sample_does_not_affect_loss() -> None:
    cfg = LossConfig()
    args = (jnp.asarray([0.1, -0.2, 0.0]), jnp.asarray([1.0, 2.0, 3.0]), jnp.ones(3))
    base, _ = ppo_loss_terms(*args, _tiny_batch(), cfg)
    changed = _tiny_batch()._replace(advantages=jnp.asarray([1.0, 1.0, -1e6]), returns=jnp.asarray([2.0, 0.0, 1e6]))
    other, _ = ppo_loss_terms(*args, changed, cfg)
    assert float(base) == pytest.approx(float(other), rel=1e-6)


def test_normalize_advantages_uses_only_valid_samples() -> None:
    out = normalize_advantages(jnp.asarray([1.0, 3.0, 100.0]), jnp.asarray([1.0, 1.0, 0.0]))
    # mean 2, unbiased std sqrt(2)
    np.testing.assert_allclose(out[:2], [-1 / math.sqrt(2), 1 / math.sqrt(2)], rtol=1e-5)


# ------------------------------------------------------- distributions ----


def test_categorical_log_prob_and_entropy() -> None:
    logits = jnp.log(jnp.asarray([[0.25, 0.75]]))
    assert D.log_prob(logits, jnp.asarray([1]))[0] == pytest.approx(math.log(0.75), rel=1e-6)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert D.entropy(logits)[0] == pytest.approx(h, rel=1e-6)
    assert int(D.mode(logits)[0]) == 1


def test_gaussian_log_prob_and_entropy() -> None:
    mean, log_std = jnp.zeros((1, 2)), jnp.full((1, 2), math.log(2.0))
    lp = D.log_prob((mean, log_std), jnp.asarray([[2.0, 0.0]]))
    expected = 2 * (-math.log(2.0) - 0.5 * math.log(2 * math.pi)) - 0.5
    assert lp[0] == pytest.approx(expected, rel=1e-6)
    h = 2 * (math.log(2.0) + 0.5 * math.log(2 * math.pi * math.e))
    assert D.entropy((mean, log_std))[0] == pytest.approx(h, rel=1e-6)


# ------------------------------------------------------ networks/optim ----


def test_actor_critic_shapes_for_discrete_and_box() -> None:
    obs = jnp.zeros((5, 4))
    disc = actor_critic_for(gymnasium.spaces.Discrete(3))
    logits, value = disc.apply(disc.init(jax.random.PRNGKey(0), obs), obs)
    assert logits.shape == (5, 3) and value.shape == (5,)
    box = actor_critic_for(gymnasium.spaces.Box(-1.0, 1.0, (2,)))
    (mean, log_std), value = box.apply(box.init(jax.random.PRNGKey(0), obs), obs)
    assert mean.shape == log_std.shape == (5, 2) and value.shape == (5,)


def test_optimizer_anneals_learning_rate_to_zero() -> None:
    tx = make_optimizer(1e-2, max_grad_norm=10.0, total_gradient_steps=4)
    params = jnp.zeros(1)
    opt_state = tx.init(params)
    steps = []
    for _ in range(5):
        upd, opt_state = tx.update(jnp.ones(1), opt_state, params)
        steps.append(float(-upd[0]))
    np.testing.assert_allclose(steps, [1e-2, 7.5e-3, 5e-3, 2.5e-3, 0.0], rtol=1e-3, atol=1e-9)
    with pytest.raises(ValueError):
        make_optimizer(1e-3, anneal_lr=True)


def test_gradient_clipping() -> None:
    tx = make_optimizer(1.0, max_grad_norm=0.5, anneal_lr=False)
    clip_state = tx.init(jnp.zeros(2))
    clipped, _ = optax.clip_by_global_norm(0.5).update(jnp.asarray([3.0, 4.0]), clip_state[0])
    np.testing.assert_allclose(clipped, [0.3, 0.4], rtol=1e-6)


# ------------------------------------------------------------ rollouts ----


def _cartpole(n: int, seed: int) -> tuple[gymnasium.vector.VectorEnv, np.ndarray]:
    env = gymnasium.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync")
    obs, _ = env.reset(seed=seed)
    return env, obs


def _model_and_params(obs: np.ndarray) -> tuple[ActorCritic, object]:
    model = ActorCritic(action_dim=2)
    return model, model.init(jax.random.PRNGKey(0), jnp.asarray(obs))["params"]


def test_python_collector_marks_reset_steps() -> None:
    env, obs = _cartpole(3, seed=0)
    model, params = _model_and_params(obs)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    collector = PythonCollector(env, apply_fn)
    rollout, state = collector.collect(params, initial_state(obs, jax.random.PRNGKey(1)), 64)
    env.close()
    dones = np.asarray(rollout.terminations | rollout.truncations)
    assert dones.any()
    valid = np.asarray(rollout.valid)
    assert rollout.obs.shape == (64, 3, 4) and rollout.last_value.shape == (3,)
    np.testing.assert_array_equal(valid[1:], ~dones[:-1])
    assert (np.asarray(rollout.rewards)[~valid] == 0).all()
    np.testing.assert_array_equal(np.asarray(state.first_valid), ~dones[-1])
    # episode lengths count valid steps only and equal the number of rewards of 1
    rets, lens, _, _ = episode_returns(rollout, jnp.zeros(3), jnp.zeros(3, jnp.int32))
    np.testing.assert_allclose(np.asarray(rets)[dones], np.asarray(lens)[dones])


def test_scan_collector_matches_python_collector() -> None:
    n, steps = 4, 40
    env_a, obs_a = _cartpole(n, seed=3)
    env_b, obs_b = _cartpole(n, seed=3)
    model, params = _model_and_params(obs_a)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    obs_spec = jax.ShapeDtypeStruct((n, 4), jnp.float32)
    out_spec = (
        obs_spec,
        jax.ShapeDtypeStruct((n,), jnp.float32),
        jax.ShapeDtypeStruct((n,), bool),
        jax.ShapeDtypeStruct((n,), bool),
    )

    def host_step(action: np.ndarray) -> tuple[np.ndarray, ...]:
        o, r, te, tr, _ = env_b.step(np.asarray(action))
        return (o.astype(np.float32), r.astype(np.float32), te, tr)

    step_fn = lambda env_state, a: (env_state, *io_callback(host_step, out_spec, a, ordered=True))
    key = jax.random.PRNGKey(7)
    collector = PythonCollector(env_a, apply_fn)
    py, py_state = collector.collect(params, initial_state(obs_a, key), steps)
    scan = make_scan_collector(apply_fn, step_fn, steps)
    sc, sc_state = scan(params, initial_state(obs_b, key))
    env_a.close()
    env_b.close()
    for name in ("actions", "terminations", "truncations", "valid", "rewards"):
        np.testing.assert_array_equal(getattr(py, name), getattr(sc, name), err_msg=name)
    for name in ("obs", "logprobs", "values", "last_value"):
        np.testing.assert_allclose(getattr(py, name), getattr(sc, name), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(py_state.key, sc_state.key)


def test_update_is_finite_and_changes_params() -> None:
    env, obs = _cartpole(4, seed=0)
    model, params = _model_and_params(obs)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    rollout, _ = PythonCollector(env, apply_fn).collect(params, initial_state(obs, jax.random.PRNGKey(0)), 32)
    env.close()
    assert isinstance(rollout, Rollout)
    state = TrainState.create(apply_fn=apply_fn, params=params, tx=make_optimizer(1e-3, 0.5, 16))
    update = make_update_fn(UpdateConfig(num_epochs=4, num_minibatches=4))
    new_state, metrics = update(state, rollout, jax.random.PRNGKey(1))
    assert int(new_state.step) == 16
    assert all(np.isfinite(float(v)) for v in metrics.values())
    leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), params, new_state.params))
    assert max(float(x) for x in leaves) > 0


def test_greedy_policy_is_argmax_of_logits() -> None:
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
    model, params = _model_and_params(obs)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    logits, _ = apply_fn(params, obs)
    np.testing.assert_array_equal(make_greedy_fn(apply_fn)(params, obs), jnp.argmax(logits, -1))
