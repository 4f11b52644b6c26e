"""Computes the probe timelines of the chart's default values and writes them into
docs/probes.md between the generated markers. `--check` fails when the file is out of date
(run by `make chart-check`), so the document can never drift from values.yaml."""

import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
VALUES = ROOT / "helm/{{project-name}}/values.yaml"
DOC = ROOT / "docs/probes.md"
BEGIN, END = "<!-- generated:begin (deploy/tools/probe-timeline.py) -->", "<!-- generated:end -->"
LIVENESS_STALL = 10  # APP__HEALTH__LIVENESS__STALL_AFTER default, seconds


def render(v):
    p, app = v["probes"], v["app"]
    s, r, l = p["startup"], p["readiness"], p["liveness"]
    pg = app["health"]["postgres"]
    startup_budget = s["initialDelaySeconds"] + s["periodSeconds"] * s["failureThreshold"]
    app_detect = pg["failureThreshold"] * pg["intervalSeconds"] + pg["timeoutSeconds"]
    kube_detect = r["periodSeconds"] * r["failureThreshold"]
    app_recover = pg["intervalSeconds"] + pg["timeoutSeconds"]
    kube_recover = r["periodSeconds"] * r["successThreshold"]
    live_budget = l["periodSeconds"] * l["failureThreshold"]
    drain, timeout = app["shutdown"]["drainDelaySeconds"], app["shutdown"]["timeoutSeconds"]
    grace = v["terminationGracePeriodSeconds"] or drain + timeout + v["terminationGraceMarginSeconds"]
    rows = [
        ("startup budget", f"startup.initialDelaySeconds + periodSeconds x failureThreshold = {s['initialDelaySeconds']} + {s['periodSeconds']} x {s['failureThreshold']}", startup_budget,
         f"covers app.startup.deadlineSeconds = {app['startup']['deadlineSeconds']} s: the app exits 1 naming the dependency before the kubelet would restart it"),
        ("dependency failure -> /readyz 503", f"postgres failureThreshold x interval + timeout = {pg['failureThreshold']} x {pg['intervalSeconds']} + {pg['timeoutSeconds']}", app_detect, "the app's own debounce"),
        ("/readyz 503 -> pod removed", f"readiness.periodSeconds x failureThreshold = {r['periodSeconds']} x {r['failureThreshold']}", kube_detect, "kubelet's debounce"),
        ("dependency failure -> pod removed", "sum of the two", app_detect + kube_detect, "worst case"),
        ("dependency back -> pod ready", f"interval + timeout + readiness.periodSeconds x successThreshold = {pg['intervalSeconds']} + {pg['timeoutSeconds']} + {r['periodSeconds']} x {r['successThreshold']}", app_recover + kube_recover, "no restart involved"),
        ("runtime stall -> restart", f"stall bound + liveness.periodSeconds x failureThreshold = {LIVENESS_STALL} + {l['periodSeconds']} x {l['failureThreshold']}", LIVENESS_STALL + live_budget, "never because of a dependency"),
        ("SIGTERM -> kubelet sees unready", f"readiness.periodSeconds x failureThreshold = {r['periodSeconds']} x {r['failureThreshold']}", kube_detect,
         f"must stay below the drain delay ({drain} s): {'OK' if kube_detect < drain else 'NOT MET'}"),
        ("SIGTERM -> API stops accepting", "app.shutdown.drainDelaySeconds", drain, "endpoint removal propagates meanwhile"),
        ("SIGTERM -> SIGKILL", f"terminationGracePeriodSeconds = drain + timeout + margin = {drain} + {timeout} + {v['terminationGraceMarginSeconds']}", grace, "the app exits 0 before this"),
    ]
    out = [BEGIN, "", "| what | arithmetic | seconds | why |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out += ["", "Outage and recovery of a critical dependency (PostgreSQL), default values:", "", "```mermaid", "gantt",
            "    title PostgreSQL outage at t=0 and return at t=30 s", "    dateFormat s", "    axisFormat %S s",
            "    section app",
            f"    checks still passing (debounce) :a1, 0, {app_detect}s",
            f"    /readyz 503                     :crit, a2, {app_detect}, {30 + app_recover - app_detect}s",
            "    section kubelet",
            f"    pod still in endpoints          :k1, 0, {app_detect + kube_detect}s",
            f"    pod out of endpoints            :crit, k2, {app_detect + kube_detect}, {30 + app_recover + kube_recover - app_detect - kube_detect}s",
            "    section liveness",
            f"    /livez 200 throughout           :l1, 0, {30 + app_recover + kube_recover}s",
            "```", "", "Termination (rolling update or scale-down), default values:", "", "```mermaid", "gantt",
            "    title SIGTERM at t=0", "    dateFormat s", "    axisFormat %S s",
            "    section app",
            f"    not ready, still serving (drain)  :crit, d1, 0, {drain}s",
            f"    in-flight requests finish (<= {timeout} s) :d2, {drain}, {timeout}s",
            "    section kubelet",
            f"    readiness failing -> unready      :k1, 0, {kube_detect}s",
            f"    grace period until SIGKILL        :k2, 0, {grace}s",
            "```", "", END]
    return "\n".join(out)


def main():
    values = yaml.safe_load(VALUES.read_text())
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = head + render(values) + tail
    if "--check" in sys.argv:
        if updated != text:
            sys.exit("docs/probes.md is out of date with helm/{{project-name}}/values.yaml: run `make probe-docs`")
        print("docs/probes.md matches values.yaml")
        return
    DOC.write_text(updated)


if __name__ == "__main__":
    main()
