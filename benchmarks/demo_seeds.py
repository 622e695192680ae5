"""Every bundle's demo on several seeds: the headline metric's mean, standard deviation and minimum, and the time.

One run on one seed says little about a recipe: a lucky draw can pass a target that the next seed misses.
This script runs ``medbundle demo <bundle> --seed N`` (synthetic data, split and training all drawn from
``N``) for each seed, and prints one JSON report with, per bundle, every figure of the demo's results
table (the headline metric and the bundle's extras) as mean, sample standard deviation, minimum and maximum
over the seeds, the minutes per run, and whether every seed reached the target. ``--write-results`` puts a
table into RESULTS.md. Run::

    python benchmarks/demo_seeds.py [BUNDLE ...] [--seeds 0 1 2] [--workdir DIR] [--write-results]
    python benchmarks/demo_seeds.py --merge ct.json wsi.json ... [--write-results]

``--merge`` combines the JSON reports of runs made one bundle at a time (or on several machines) into one
report and one table, without running anything.

About 4 x 3 demo runs: 30-60 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_label, machine_info, replace_section  # noqa: E402

_FIXED = ("bundle", "seed", "metric", "value", "target", "minutes", "times_s", "workdir")


def summarise(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, minimum and maximum of the values that are numbers."""
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(float(v))]
    if not nums:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(nums), "mean": statistics.fmean(nums), "sd": statistics.stdev(nums) if len(nums) > 1 else 0.0,
            "min": min(nums), "max": max(nums)}


def run(bundles: list[str], seeds: list[int], workdir: Path, verbose: bool = False) -> dict[str, Any]:
    import torch  # noqa: F401 - machine_info reads its version

    from medbundle.demo import run_demo
    from medbundle.recipes import recipe_names

    report: dict[str, Any] = {"machine": machine_info(), "seeds": seeds, "bundles": {}}
    for name in bundles or recipe_names():
        rows = []
        for seed in seeds:
            t0 = time.perf_counter()
            echo = print if verbose else (lambda _line: None)
            row = run_demo([name], workdir / f"seed{seed}", seed=seed, echo=echo)[0]
            print(f"{name} seed {seed}: {row['metric']} {row['value']} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
            rows.append(row)
        figures = [k for k in rows[0] if k not in _FIXED]
        report["bundles"][name] = {
            "metric": rows[0]["metric"], "target": rows[0]["target"],
            "headline": summarise([r["value"] for r in rows]),
            "extras": {k: summarise([r.get(k) for r in rows]) for k in figures},
            "minutes": summarise([r["minutes"] for r in rows]),
            "all_seeds_reach_target": all(r["value"] is not None and r["value"] >= r["target"] for r in rows),
            "runs": [{k: v for k, v in r.items() if k != "workdir"} for r in rows],
        }
    return report


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several: their bundles side by side (a later report's bundle replaces an earlier one).

    Raises:
        ValueError: the reports were measured on different seeds or machines, so one table would mislead.
    """
    if not reports:
        raise ValueError("nothing to merge: give at least one JSON report of this script")
    first = reports[0]
    for r in reports[1:]:
        if r["seeds"] != first["seeds"]:
            raise ValueError(f"reports on different seeds cannot share a table: {first['seeds']} and {r['seeds']}")
        if device_label(r["machine"]) != device_label(first["machine"]):
            raise ValueError("reports from different machines cannot share a table: "
                             f"{device_label(first['machine'])} and {device_label(r['machine'])}")
    out = {"machine": first["machine"], "seeds": first["seeds"], "bundles": {}}
    for r in reports:
        out["bundles"].update(r["bundles"])
    return out


def _fmt(s: dict[str, Any], digits: int = 3) -> str:
    if not s["n"]:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f} (min {s['min']:.{digits}f})"


def markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    seeds = ", ".join(map(str, report["seeds"]))
    lines = ["## Demo over seeds (benchmarks/demo_seeds.py)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {device_label(info)} ({info['platform']}, torch "
             f"{info.get('torch')}); `medbundle demo <bundle> --seed N` for N in {seeds}: mean ± sample standard "
             "deviation (minimum) over the seeds.", "",
             "| bundle | headline | mean ± sd (min) | target | every seed reaches it | other figures "
             "| minutes per run |",
             "|---|---|---|---|---|---|---|"]
    for name, b in report["bundles"].items():
        extras = "; ".join(f"{k} {_fmt(s)}" for k, s in b["extras"].items() if s["n"])
        m = b["minutes"]
        reached = "yes" if b["all_seeds_reach_target"] else "no"
        lines.append(f"| {name} | {b['metric']} | **{_fmt(b['headline'])}** | {b['target']} | {reached} | {extras} "
                     f"| {m['mean']:.1f} (max {m['max']:.1f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="*", help="bundles (default: every bundle with a demo)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder, removed)")
    ap.add_argument("--verbose", action="store_true", help="print the demos' progress lines")
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine these reports instead of running demos")
    args = ap.parse_args(argv)
    if args.merge:
        report = merge([json.loads(Path(p).read_text()) for p in args.merge])
    else:
        work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="medbundle_seeds_"))
        try:
            report = run(args.bundles, args.seeds, work, verbose=args.verbose)
        finally:
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1, default=str))
    if args.write_results:
        replace_section("## Demo over seeds (benchmarks/demo_seeds.py)", markdown(report))
    return 0 if all(b["all_seeds_reach_target"] for b in report["bundles"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
