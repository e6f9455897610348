"""Run ``examples/ppo_cartpole.py`` for several seeds and backends; tabulate the results.

One training process at a time. For each (mode, seed) the example writes its own
``metrics.json``; this script collects the summaries into ``results.json`` and a markdown
table ``results.md`` in ``--out-dir`` (default ``runs/ppo_cartpole_seeds/<timestamp>``), and
copies both to ``benchmarks/results/ppo_cartpole_seeds.{json,md}``, with
the training env-steps/s of every mode side by side (same hyperparameters in every mode)::

    python -m benchmarks.ppo_cartpole_seeds --modes local embedded double-buffer --seeds 1 2 3 4 5

Modes: ``local`` (in-process ``make_vec``), ``embedded`` (the example's default: every lane
in one session of one ``rlmesh serve``), ``two-servers`` (lanes over 2 servers, stepped
together), ``double-buffer`` (two sessions of half the lanes on one server, one group's policy
computed while the other steps), ``double-buffer-two-servers`` (a server per group),
``sandbox`` and ``jit-rollout``.

Arguments after ``--`` go to every example run (e.g. ``-- --total-steps 200000 --stop-return 0``
for a fixed budget without early stopping, so that every run trains the same steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import harness

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ppo_cartpole.py"
MODE_FLAGS = {
    "local": ["--local"],
    "embedded": [],  # the example's default
    "two-servers": ["--servers", "2"],
    "double-buffer": ["--double-buffer"],
    "double-buffer-two-servers": ["--servers", "2", "--double-buffer"],
    "sandbox": ["--sandbox"],
    "jit-rollout": ["--jit-rollout"],
}


def run_one(mode: str, seed: int, out_dir: Path, extra: list[str]) -> dict[str, Any]:
    """Train one seed in a fresh process; return its summary (``error`` set on failure)."""
    run_dir = out_dir / f"{mode}-seed{seed}"
    cmd = [
        sys.executable,
        str(EXAMPLE),
        *MODE_FLAGS[mode],
        "--seed",
        str(seed),
        "--out-dir",
        str(run_dir),
        "--no-progress",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    metrics = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics.exists():
        return {
            "mode": mode,
            "seed": seed,
            "process_wall_s": wall,
            "error": proc.stderr[-2000:] or f"exit code {proc.returncode}",
        }
    summary = json.loads(metrics.read_text())["summary"]
    return {**summary, "mode": mode, "seed": seed, "process_wall_s": wall}


def markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table per run; wall time is the whole process (server start, jit, eval).

    env steps/s counts training steps over training time (without early-stop evaluations);
    "after the first update" leaves out the first iteration, which compiles the policy, the
    rollout assembly and the update, so that runs of different lengths (early stopping) compare
    fairly.
    """
    lines = [
        "| seed | mode | wall time (s) | env steps/s | after the first update | steps to 475 | "
        "env steps trained | stopped early | final eval return (20 seeds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seed']} | {r['mode']} | failed | | | | | | |")
            continue
        steady = r.get("steady_sps")
        lines.append(
            f"| {r['seed']} | {r['mode']} | {r['process_wall_s']:.1f} | {r['sps']:,.0f} | "
            f"{f'{steady:,.0f}' if steady else ''} | "
            f"{r['steps_to_475'] if r['steps_to_475'] is not None else 'never'} | "
            f"{r['env_steps']:,} | {'yes' if r['stopped_early'] else 'no'} | "
            f"{r['final_eval_mean']:.1f} |"
        )
    lines += [
        "",
        "| mode | median env steps/s | x local | median after the first update | x local | "
        "seeds reaching 475 | seeds reaching 500 | max wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    medians: dict[str, tuple[float, float | None]] = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        ok = [r for r in rows if r["mode"] == mode and "error" not in r]
        if ok:
            steady = [r["steady_sps"] for r in ok if r.get("steady_sps")]
            medians[mode] = (statistics.median(r["sps"] for r in ok), statistics.median(steady) if steady else None)
    local = medians.get("local")
    for mode, (sps, steady) in medians.items():
        ok = [r for r in rows if r["mode"] == mode and "error" not in r]
        ratio = f"{sps / local[0]:.2f}" if local else ""
        steady_ratio = f"{steady / local[1]:.2f}" if local and local[1] and steady else ""
        lines.append(
            f"| {mode} | {sps:,.0f} | {ratio} | {f'{steady:,.0f}' if steady else ''} | {steady_ratio} | "
            f"{sum(r['final_eval_mean'] >= 475 for r in ok)}/{len(ok)} | "
            f"{sum(r['final_eval_mean'] >= 500 for r in ok)}/{len(ok)} | {max(r['process_wall_s'] for r in ok):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse flags, run every (mode, seed) in turn, write results.json and results.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["local", "embedded"], choices=sorted(MODE_FLAGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--out-dir", default="")
    parser.add_argument("extra", nargs="*", help="arguments passed to every example run")
    args = parser.parse_args()
    out_dir = Path(args.out_dir or f"runs/ppo_cartpole_seeds/{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    # Modes take turns seed by seed, so that this machine's drift in speed hits them alike.
    for seed in args.seeds:
        for mode in args.modes:
            row = run_one(mode, seed, out_dir, args.extra)
            rows.append(row)
            print(
                json.dumps(
                    {
                        k: row.get(k)
                        for k in (
                            "mode",
                            "seed",
                            "process_wall_s",
                            "sps",
                            "steady_sps",
                            "steps_to_475",
                            "final_eval_mean",
                            "error",
                        )
                    }
                ),
                flush=True,
            )
    rows.sort(key=lambda row: (args.modes.index(row["mode"]), row["seed"]))
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    (out_dir / "results.md").write_text(table)
    print(table)
    # The committed copy, beside the other benchmarks' results.
    path = harness.write_json("ppo_cartpole_seeds", {"modes": args.modes, "seeds": args.seeds, "rows": rows})
    path.with_suffix(".md").write_text(table)
    print(f"wrote {out_dir}/results.json and {path}")


if __name__ == "__main__":
    main()
