"""rlmesh.integrations: Flax policies, Optax/PPO building blocks and jit-loop stepping.

This folder lives at the top of the repository as ``integrations/`` and is installed as the
``rlmesh.integrations`` package (see ``[tool.setuptools.package-dir]`` in pyproject.toml), so
it never shadows or collides with another distribution's top-level ``integrations`` module.
Import it as ``rlmesh.integrations``; the core ``rlmesh`` package never imports it.
"""
