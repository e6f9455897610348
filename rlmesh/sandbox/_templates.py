"""Scripts written into the sandbox build context."""

__all__ = ["CHECK_IMPORTS", "HF_FETCH", "HF_SHIM"]

CHECK_IMPORTS = '''\
"""Import every module named on the command line; fail with its name and error."""
import importlib
import sys
import traceback

failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append(name)
        print(f"rlmesh sandbox: cannot import {name!r}:", file=sys.stderr)
        traceback.print_exc()
if failed:
    print("rlmesh sandbox: import check failed for: " + ", ".join(failed), file=sys.stderr)
    sys.exit(1)
print("rlmesh sandbox: imports ok: " + ", ".join(sys.argv[1:]))
'''

HF_FETCH = '''\
"""Download a Hugging Face repository snapshot at build time (the container has no network)."""
import sys

from huggingface_hub import snapshot_download

repo, revision, target = sys.argv[1], sys.argv[2] or None, sys.argv[3]
snapshot_download(repo_id=repo, revision=revision, local_dir=target)
print(f"rlmesh sandbox: fetched {repo}@{revision or 'HEAD'} into {target}")
'''

HF_SHIM = '''\
"""Entry point for a Hugging Face EnvHub source: env.py's make_env()[suite][task]."""
import importlib.util
import os
import sys

HF_DIR = {hf_dir!r}
SUITE = {suite!r}
TASK = {task!r}


def _select(mapping, key):
    if key in mapping:
        return mapping[key]
    for candidate in mapping:
        if str(candidate) == key:
            return mapping[candidate]
    raise KeyError(f"{{key!r}} not found; available: {{sorted(map(str, mapping))}}")


def make_env(**kwargs):
    """Create the EnvHub environment selected by suite/task (one instance)."""
    sys.path.insert(0, HF_DIR)
    spec = importlib.util.spec_from_file_location("_rlmesh_hf_env", os.path.join(HF_DIR, "env.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.make_env(n_envs=1, **kwargs)
    env = _select(_select(result, SUITE), TASK) if isinstance(result, dict) else result
    inner = getattr(env, "envs", None)
    if inner is not None and len(inner) == 1:
        return inner[0]
    return env
'''
