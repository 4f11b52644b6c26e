"""Writes helm/{{project-name}}/README.md from values.yaml: every value with its default and the comment
above it. `--check` fails when the README is out of date or a value has no comment (its own or
an enclosing key's), so the table can never drift from the values (run by `make chart-check`)."""

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/{{project-name}}"
VALUES = CHART / "values.yaml"
README = CHART / "README.md"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+):(?:\s|$)")

HEADER = """\
<!-- Generated from values.yaml by deploy/tools/chart-readme.py (make chart-docs); do not edit. -->
# {{project-name}} chart

A Rust HTTP microservice whose probes tell Kubernetes the truth: tuned startup, readiness and
liveness probes with their arithmetic, zero-loss rolling updates (`maxSurge 1`, `maxUnavailable 0`,
a grace period derived from the drain settings), a restricted pod, PDB, optional HPA, Ingress or
HTTPRoute, NetworkPolicy, ServiceMonitor and alert rules.

```sh
kubectl -n {{project-name}} create secret generic {{project-name}}-db --from-literal=database-url='postgres://...'
kubectl -n {{project-name}} create secret generic {{project-name}}-broker --from-literal=rabbitmq-url='amqp://...'
helm upgrade --install {{project-name}} oci://ghcr.io/{{project-name}}/charts/{{project-name}} -n {{project-name}} \\
  --set database.existingSecret={{project-name}}-db --set rabbitmq.existingSecret={{project-name}}-broker --wait
```

The chart refuses to render without `database.url` or `database.existingSecret` (and the same for
`rabbitmq`), with inverted autoscaling bounds, with more PostgreSQL connections than
`database.maxConnections` allows, with a grace period below the shutdown budget or a startup probe
budget below the app's startup deadline, and a CA bundle (`database.tls.caBundle`,
`rabbitmq.tls.caBundle`) from both a Secret and a ConfigMap or with an inline URL that has TLS off
(`sslmode=disable`, `amqp://`). The production walk-through is
[docs/deploy.md](../../docs/deploy.md); every probe number is explained in
[docs/probes.md](../../docs/probes.md).

## Values

| value | default | meaning |
|---|---|---|
"""


def documented_keys(text):
    """(path, comment) of every key with a comment block right above it, in file order."""
    stack, comment, rows = [], [], []
    in_header = True
    for line in text.splitlines():
        stripped = line.strip()
        if in_header:
            if stripped == "":
                in_header = False
            continue
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = KEY.match(line)
        if not match or stripped == "":
            comment = [] if stripped == "" or stripped.startswith("-") else comment
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack and stack[-1][2]:
            continue  # inside a list item of an enclosing key
        stack.append((indent, key, False))
        path = ".".join(k for _, k, _ in stack)
        if comment:
            rows.append((path, " ".join(comment)))
        comment = []
    return rows


def leaves(node, path=()):
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, path + (str(key),))
    else:
        yield ".".join(path)


def lookup(values, path):
    for key in path.split("."):
        values = values[key]
    return values


def cell(text):
    return text.replace("|", "\\|")


def render():
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    rows = documented_keys(text)
    paths = {path for path, _ in rows}
    missing = [leaf for leaf in leaves(values)
               if not any(leaf == p or leaf.startswith(p + ".") for p in paths)]
    if missing:
        sys.exit("values without a comment (own or enclosing): " + ", ".join(missing))
    out = [HEADER.rstrip("\n")]
    for path, comment in rows:
        value = lookup(values, path)
        if isinstance(value, dict) and any(p.startswith(path + ".") for p in paths):
            default = "(section)"  # its values have rows of their own
        else:
            default = json.dumps(value, separators=(",", ":"))
        out.append(f"| `{path}` | `{cell(default)}` | {cell(comment)} |")
    return "\n".join(out) + "\n"


def main():
    wanted = render()
    if "--check" in sys.argv:
        if README.read_text() != wanted:
            sys.exit(f"{README.relative_to(ROOT)} is out of date: run make chart-docs")
        print(f"ok: {README.relative_to(ROOT)} lists every value of values.yaml")
    else:
        README.write_text(wanted)
        print(f"wrote {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
