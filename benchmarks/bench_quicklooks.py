"""What the quicklook PNGs cost in a local run: job time against quicklook time, as the engine reports them.

    python benchmarks/bench_quicklooks.py [--request REQUEST.json] [--runs 2] [--profile] [--ab N] [--json]

Runs ``produce`` on the request (default ``examples/bouconne-2018.json``) in this process, after loading the
SL2P kernel so that no job pays for compiling it, ``--runs`` times into a temporary folder, and prints per run
the jobs' total ``seconds`` and ``quicklook_seconds`` (``JobSummary``: the time a job spends on quicklooks
beyond what overlapped with writing its COGs) and the quicklooks' share. The first run also pays the
once-per-process costs (fonts, legend panels); later runs show a long run's steady state. ``--profile`` then
renders one job's quicklooks again under cProfile and prints the top functions by cumulative time. ``--ab N``
then runs N pairs without and with quicklooks and prints the medians of job time and of process CPU time: what
quicklooks really add, overlap or not (noisy on a shared machine: use several pairs).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _run(request: Path, out: Path, quicklooks: bool = True) -> dict:
    from leaf_engine.backends.local import produce
    from leaf_engine.cli.produce_cmds import resolve_path
    from leaf_engine.request import parse_request

    req = parse_request(request.read_text())
    t0 = time.perf_counter()
    result = produce(req, out_dir=out, scenes=resolve_path(req.scenes, request), progress=False,
                     quicklooks=quicklooks)
    wall = time.perf_counter() - t0
    jobs = [j for j in result.jobs if not j.skipped]
    job_s = sum(j.seconds for j in jobs)
    ql_s = sum(j.quicklook_seconds for j in jobs)
    maps = sum(1 for j in jobs for f in j.files if f.endswith(".png"))
    return {"jobs": len(jobs), "maps": maps, "wall_s": round(wall, 3), "job_s": round(job_s, 3),
            "quicklook_s": round(ql_s, 3), "quicklook_share": round(ql_s / job_s, 4) if job_s else None,
            "ms_per_map": round(1000 * ql_s / maps, 2) if maps else None,
            "max_job_share": round(max(j.quicklook_seconds / j.seconds for j in jobs), 4) if jobs else None,
            }


def _profile(out: Path, top: int = 20) -> str:
    """cProfile of rendering one job's quicklooks again (from the COGs the run left in ``out``)."""
    from leaf_engine.backends.local.quicklook import write_quicklooks

    cogs = sorted(out.rglob("*.tif"))
    job = cogs[0].parent
    mine = {p.stem.rsplit("_", 2)[-2]: p for p in cogs if p.parent == job}
    titles = {k: f"{v.stem} - bench" for k, v in mine.items()}
    with tempfile.TemporaryDirectory() as tmp:
        copies = {}
        for k, v in mine.items():  # render beside copies: the run's PNGs stay as they are
            copies[k] = Path(tmp) / v.name
            copies[k].write_bytes(v.read_bytes())
        prof = cProfile.Profile()
        prof.enable()
        write_quicklooks(copies, titles, threads=1)
        prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(top)
    return s.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--request", type=Path, default=REPO / "examples" / "bouconne-2018.json")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--ab", type=int, default=0, metavar="N",
                    help="then N pairs of runs without and with quicklooks: the wall time they really add")
    ap.add_argument("--keep", type=Path, default=None, help="write the outputs here (to look at the PNGs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from leaf_engine.request import parse_request
    from leaf_engine.sensors import members
    from leaf_engine.sl2p import estimate, load_network_set

    req = parse_request(args.request.read_text())
    for s in members(req.sensor):  # load (or compile) the SL2P kernel before timing anything
        nets = load_network_set(req.network_set(s.id))
        estimate(nets, {n: np.full(8, 0.3, np.float32) for n in nets.inputs}, req.prod_names)

    runs = []
    with tempfile.TemporaryDirectory(prefix="leaf-bench-ql-") as tmp:
        for i in range(args.runs):
            out = (args.keep if args.keep and i == args.runs - 1 else Path(tmp) / f"run{i}")
            runs.append(_run(args.request, out))
        prof = _profile(out) if args.profile else None
        pairs = []
        for i in range(args.ab):
            c0 = time.process_time()
            off = _run(args.request, Path(tmp) / f"off{i}", quicklooks=False)
            c1 = time.process_time()
            on = _run(args.request, Path(tmp) / f"on{i}", quicklooks=True)
            c2 = time.process_time()
            pairs.append({"job_s_without": off["job_s"], "job_s_with": on["job_s"],
                          "cpu_s_without": round(c1 - c0, 3), "cpu_s_with": round(c2 - c1, 3)})
    if args.json:
        print(json.dumps({"request": args.request.name, "runs": runs, "ab": pairs}))
    else:
        print(f"{args.request.name}: {runs[0]['jobs']} jobs, {runs[0]['maps']} quicklooks per run")
        print("run  job time  quicklooks  share  ms/map  worst job share")
        for i, r in enumerate(runs):
            print(f"{i + 1:>3}  {r['job_s']:7.2f}s  {r['quicklook_s']:9.2f}s  {r['quicklook_share']:5.1%}  "
                  f"{r['ms_per_map']:6.1f}  {r['max_job_share']:5.1%}")
        if pairs:
            without = float(np.median([p["job_s_without"] for p in pairs]))
            with_ = float(np.median([p["job_s_with"] for p in pairs]))
            cpu0 = float(np.median([p["cpu_s_without"] for p in pairs]))
            cpu1 = float(np.median([p["cpu_s_with"] for p in pairs]))
            print(f"A/B, median of {len(pairs)} pairs: job time {without:.2f}s without quicklooks, {with_:.2f}s "
                  f"with ({(with_ - without) / with_:+.1%}); process CPU {cpu0:.2f}s without, {cpu1:.2f}s with "
                  f"({(cpu1 - cpu0) / cpu1:+.1%})")
    if prof:
        print(prof, file=sys.stderr)


if __name__ == "__main__":
    main()
