"""Writes helm/shipshape/README.md from values.yaml: every value with its default and the comment
above it. `--check` fails when the README is out of date or a value has no comment (its own or
an enclosing key's), so the table can never drift from the values (run by `make chart-check`)."""

import json
import pathlib
import re
import sys
import textwrap

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/shipshape"
VALUES = CHART / "values.yaml"
README = CHART / "README.md"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_]+):(?:\s|$)")

# The connection sections of values.yaml (url / existingSecret / existingSecretKey / tls) that the
# header's example and refusals name, each with the Secret the example creates, a placeholder URL
# and the inline URL form that turns TLS off. Only the sections values.yaml has are shown.
DEPENDENCIES = {
    "database": ("shipshape-db", "postgres://...", "sslmode=disable"),
    "rabbitmq": ("shipshape-broker", "amqp://...", "amqp://"),  # @rabbitmq
}

HEADER = """\
<!-- Generated from values.yaml by deploy/tools/chart-readme.py (make chart-docs); do not edit. -->
# shipshape chart

A Rust HTTP microservice whose probes tell Kubernetes the truth: tuned startup, readiness and
liveness probes with their arithmetic, zero-loss rolling updates (`maxSurge 1`, `maxUnavailable 0`,
a grace period derived from the drain settings), a restricted pod, PDB, optional HPA, Ingress or
HTTPRoute, NetworkPolicy, ServiceMonitor and alert rules.

```sh
{secrets}
helm upgrade --install shipshape oci://ghcr.io/shipshape/charts/shipshape -n shipshape \\
  {existing} --wait
```

{refusals}

Schema migrations run in each pod as it starts (`migrations.mode: startup`, the default: nothing
beyond the Deployment, the same under helm, Argo CD and Flux) or once per release in a
pre-install/pre-upgrade hook Job running `migrate` before any new pod starts (`migrations.mode:
job`, for migrations longer than a startup; Argo CD runs it as a PreSync hook). Either way a pod
of the previous release serves on the new schema and a rollback starts on it:
[docs/migrations.md](../../docs/migrations.md).

## Values

| value | default | meaning |
|---|---|---|
"""

REFUSALS = (
    "The chart refuses to render without `{first}.url` or `{first}.existingSecret`{others}, with inverted "
    "autoscaling bounds, with more PostgreSQL connections than `database.maxConnections` allows, with a "
    "grace period below the shutdown budget or a startup probe budget below the app's startup deadline, "
    "and a CA bundle ({bundles}) from both a Secret and a ConfigMap or with an inline URL that has TLS off "
    "({tls_off}). The production walk-through is [docs/deploy.md](../../docs/deploy.md); every probe "
    "number is explained in [docs/probes.md](../../docs/probes.md)."
)


def header(values):
    """The README's head, naming the connection sections that values.yaml has."""
    names = [name for name in DEPENDENCIES if name in values]
    secrets = [f"kubectl -n shipshape create secret generic {DEPENDENCIES[name][0]} "
               f"--from-literal={values[name]['existingSecretKey']}='{DEPENDENCIES[name][1]}'" for name in names]
    existing = " ".join(f"--set {name}.existingSecret={DEPENDENCIES[name][0]}" for name in names)
    others = ", ".join(f"`{name}`" for name in names[1:])
    refusals = REFUSALS.format(
        first=names[0],
        others=f" (and the same for {others})" if others else "",
        bundles=", ".join(f"`{name}.tls.caBundle`" for name in names),
        tls_off=", ".join(f"`{DEPENDENCIES[name][2]}`" for name in names),
    )
    refusals = textwrap.fill(refusals, 100, break_long_words=False, break_on_hyphens=False)
    return HEADER.format(secrets="\n".join(secrets), existing=existing, refusals=refusals)


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


# Variant markers of the project template (whole-line `# @<choice>-begin`, `-else`, `-end`, and a
# trailing `# @<choice>`) are not documentation, and the commented-out lines of an else branch are
# another variant's values: neither becomes a comment of a value here.
MARK = re.compile(r"^\s*#\s*@[a-z]+-(begin|else|end)\b")
TRAILING_MARK = re.compile(r"\s*#\s*@[a-z]+\s*$")


def without_markers(text):
    out, in_else = [], False
    for line in text.splitlines():
        mark = MARK.match(line)
        if mark:
            in_else = mark.group(1) == "else"
        elif not in_else:
            out.append(TRAILING_MARK.sub("", line))
    return "\n".join(out) + "\n"


def render():
    text = without_markers(VALUES.read_text())
    values = yaml.safe_load(text)
    rows = documented_keys(text)
    paths = {path for path, _ in rows}
    missing = [leaf for leaf in leaves(values)
               if not any(leaf == p or leaf.startswith(p + ".") for p in paths)]
    if missing:
        sys.exit("values without a comment (own or enclosing): " + ", ".join(missing))
    out = [header(values).rstrip("\n")]
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
