"""Soak: capture -> reconstruct -> reset cycles against the simulated camera for a fixed time.

Reports the node's RSS over time (growth after warm-up), p50/p95 latencies of each call and
the failures (a cycle that does not complete). Not part of CI: ``scripts/soak.py``.

    python scripts/soak.py --minutes 25 --out out/soak
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rvg_ros.reliability.system import percentile, rig, rss_mb


def run_soak(
    out: Path,
    minutes: float,
    views: int = 4,
    backend: str = "fusion",
    warmup_fraction: float = 0.1,
    log=print,
) -> dict:  # noqa: ANN001
    out = Path(out).resolve()
    shutil.rmtree(out / "run", ignore_errors=True)
    latencies: dict[str, list[float]] = {"capture": [], "reconstruct": [], "reset": [], "cycle": []}
    samples: list[tuple[float, int, float]] = []  # (seconds, cycle, rss MB)
    failures: list[str] = []
    cycles = 0
    with rig(out / "run", f"backend:={backend}", "diagnostics_period:=1.0") as r:
        client = r.client
        t0 = time.monotonic()
        samples.append((0.0, 0, rss_mb(r.node.pid)))
        while time.monotonic() - t0 < minutes * 60:
            cycle_start = time.monotonic()
            ok = True
            for v in range(views):
                start = time.monotonic()
                response = r.capture_until_accepted(f"soak {cycles}.{v}", timeout=20.0)
                latencies["capture"].append(time.monotonic() - start)
                if not response.accepted:
                    failures.append(f"cycle {cycles}: capture: {response.reason}")
                    ok = False
                    break
                time.sleep(0.3)  # the camera turns ~27 degrees
            if ok:
                request = client.reconstruct.srv_type.Request()
                request.seed = -1
                start = time.monotonic()
                response = client.call(client.reconstruct, request, timeout=300.0)
                latencies["reconstruct"].append(time.monotonic() - start)
                if not response.success:
                    failures.append(f"cycle {cycles}: reconstruct: {response.message}")
            start = time.monotonic()
            response = client.call(client.reset, client.reset.srv_type.Request())
            latencies["reset"].append(time.monotonic() - start)
            if not response.success:
                failures.append(f"cycle {cycles}: reset: {response.message}")
            latencies["cycle"].append(time.monotonic() - cycle_start)
            cycles += 1
            # The harness, not the node, deletes the archived sessions (disk stays bounded);
            # a failed cycle's session is kept for a post-mortem.
            for archived in (out / "run").glob("session-*"):
                if failures and failures[-1].startswith(f"cycle {cycles - 1}:"):
                    archived.rename(out / f"failed-cycle-{cycles - 1}")
                else:
                    shutil.rmtree(archived, ignore_errors=True)
            samples.append((time.monotonic() - t0, cycles, rss_mb(r.node.pid)))
            if cycles % 10 == 0:
                log(
                    f"[soak] {cycles} cycles, {samples[-1][0] / 60:.1f} min, "
                    f"RSS {samples[-1][2]:.0f} MB, failures {len(failures)}"
                )
        duration = time.monotonic() - t0
        node_alive = r.node.poll() is None
    warm = [s for s in samples if s[1] >= max(1, int(warmup_fraction * cycles))]
    base = warm[0][2] if warm else float("nan")
    peak_after = max((s[2] for s in warm), default=float("nan"))
    final = samples[-1][2]
    summary = {
        "minutes": duration / 60,
        "cycles": cycles,
        "views_per_cycle": views,
        "backend": backend,
        "failures": len(failures),
        "failure_messages": failures[:20],
        "node_alive_at_end": node_alive,
        "rss_mb": {
            "start": samples[0][2],
            "after_warmup": base,
            "final": final,
            "max_after_warmup": peak_after,
            "growth_after_warmup_percent": 100.0 * (final - base) / base,
        },
        "latency_s": {
            k: {"p50": percentile(v, 50), "p95": percentile(v, 95), "n": len(v)}
            for k, v in latencies.items()
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(summary, indent=2))
    with open(out / "rss.csv", "w") as f:
        f.write("seconds,cycle,rss_mb\n")
        f.writelines(f"{t:.1f},{c},{m:.1f}\n" for t, c, m in samples)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--backend", default="fusion")
    parser.add_argument("--out", default="out/soak")
    args = parser.parse_args(argv)
    summary = run_soak(Path(args.out), args.minutes, args.views, args.backend)
    print(json.dumps(summary, indent=2))
    ok = summary["failures"] == 0 and summary["rss_mb"]["growth_after_warmup_percent"] <= 10.0
    return 0 if ok and summary["node_alive_at_end"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
