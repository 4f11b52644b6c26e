"""Prints the figures `make e2e` saved (target/e2e/*.json) as a table; with --write, also puts
it into docs/rolling-updates.md between the generated markers, with the machine and the date.
(`make e2e` only prints, so `make test` leaves the tracked docs alone; `make e2e-docs` writes.)"""

import datetime
import json
import os
import pathlib
import platform
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs/rolling-updates.md"
BEGIN, END = "<!-- e2e:begin (make e2e-docs) -->", "<!-- e2e:end -->"
ORDER = ["defaults", "writes", "no-drain-delay", "postgres-restart-mid-rollout"]


def main():
    runs = {p.stem: json.loads(p.read_text()) for p in (ROOT / "target/e2e").glob("*.json")}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown CPU")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "", f"Measured by `make e2e-docs` on {when}, {os.cpu_count()} cores ({cpu}), {platform.system()}.", "",
             "| scenario | requests | non-2xx | socket errors | peak PostgreSQL sessions | rollout | old replicas: exit code, SIGTERM -> exit | grace |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ORDER + sorted(set(runs) - set(ORDER)):
        if name not in runs:
            continue
        r = runs[name]
        stops = "; ".join(f"{s['exit']}, {s['seconds']:.1f} s" for s in r["stops"])
        lines.append(f"| {r['scenario']} | {r['requests']} | {r['non_2xx']} | {r['socket_errors']} | {r.get('peak_connections', '-')} ({r.get('peak_replicas', '-')} replicas) | {r['rollout_seconds']:.1f} s | {stops} | {r['grace_seconds']} s |")
    lag = next(iter(runs.values()), {}).get("propagation_lag_ms", 1000)
    lines += ["", f"Endpoint-propagation lag: {lag} ms (`E2E_PROPAGATION_LAG_MS`).", "", END]
    print("\n".join(lines[2:-1]))
    if "--write" in sys.argv:
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(head + "\n".join(lines) + tail)
        print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
