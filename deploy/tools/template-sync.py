"""Writes the cargo-generate template from the working tree (`make template`).

The repository root is a buildable service called `shipshape`. The template is the same tree with
every occurrence of the name turned into a placeholder, in the case style it appears in, and with
the one generator choice, `rabbitmq`, turned into Liquid conditions:

* Files only a service with a broker has are listed in BROKER_ONLY (cargo-generate leaves them out
  when `rabbitmq` is false).
* Inside a shared file, whole-line comments mark what only the broker variant keeps:
      // @rabbitmq-begin        (or #, --, <!-- -->, {{- /* */}})
      ...broker lines...
      // @rabbitmq-else         (optional: the lines a service without the broker has instead,
      // ...commented out...     written as comments of the same kind)
      // @rabbitmq-end
  and a trailing `// @rabbitmq` keeps a single line in the broker variant only.
* `@template-begin` ... `@template-end` (whole-line comments) hold the template's own machinery:
  in no generated project; lines commented out after an optional `@template-else` are what
  every generated project has instead.
* Files without comments (JSON, SQL migrations, Cargo.lock, the generated chart README) are
  rewritten for the variant without a broker by the functions in TRANSFORMS or by the tools that
  generate them.

Both variants are first written as plain trees (`--variant broker|plain DIR` writes one, to build
or inspect it); the template is their line diff, so each file has one source here and nobody edits
two copies. Files that hold braces of their own (Helm templates, GitHub workflows, Grafana
legends, alert rules) are wrapped in {% raw %} blocks, so Liquid passes them through byte for
byte, except for the names.
"""

import difflib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAME = "shipshape"
DESCRIPTION = "A Rust HTTP microservice whose probes tell Kubernetes the truth."
# The template's own machinery and documentation stay here: a generated project is a service.
SKIP = (
    "template/",
    "README.md",
    "docs/benchmarks.md",
    "docs/benchmarks.svg",
    "deploy/template/",
    "deploy/tools/template-sync.py",
    "deploy/tools/template-check.sh",
    "deploy/tools/cpu-per-request.sh",
    # The template's evidence against reference servers that copy the example's SQL: a generated
    # project replaces the example, and measures its own routes.
    "crates/bench/",
    # This repository's own release history: a generated project starts from one migration.
    "crates/api/src/db/migrations/",
)
# Files of a generated project written from another source here.
SOURCES = {
    ".github/workflows/template-update.yml": "deploy/template/template-update.yml",
    "crates/api/src/db/migrations/V1__initial_schema.sql": "deploy/template/migrations/V1__initial_schema.sql",
}
# The generated project's README: Liquid written by hand (it describes the new service).
SERVICE_README = "deploy/template/README.md"

# Files only a service with a broker has.
BROKER_ONLY = (
    "crates/api/src/messaging/",
    "crates/api/src/db/outbox.rs",
    "crates/api/tests/consumer.rs",
    "crates/api/tests/outbox.rs",
    "crates/api/tests/broker_faults.rs",
    "crates/bootstrap/src/broker.rs",
    "crates/health/src/checks/rabbitmq.rs",
    "crates/testkit/src/amqp.rs",
    "crates/testkit/src/rabbitmq.rs",
)

CONFIG = """\
# cargo-generate definition of the shipshape template (written by deploy/tools/template-sync.py).
#   cargo generate --git <repository> --branch template template --name acme-orders
[template]
cargo_generate_version = ">=0.23.0"

[placeholders.description]
type = "string"
prompt = "One sentence: what does the service do?"
default = "A Rust HTTP microservice whose probes tell Kubernetes the truth."

[placeholders.registry]
type = "string"
prompt = "Container registry and image prefix (the image is <registry>/<project-name>)"
default = "ghcr.io/acme"

[placeholders.repository_url]
type = "string"
prompt = "URL of the new service's repository"
default = "https://github.com/acme/service"

[placeholders.rabbitmq]
type = "bool"
prompt = "RabbitMQ: publish events through a transactional outbox and consume them?"
default = true

[conditional.'!rabbitmq']
ignore = [
"""

# The record a generated project keeps of its origin (`make template-update` reads it).
RECORD = ".template.toml"


def record():
    """Liquid for the record: where the template is published (release.yml says so through the
    TEMPLATE_* variables), the source commit it is written from, and every answer."""

    def here(*args):
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    fields = {
        "source": os.environ.get("TEMPLATE_SOURCE") or here("remote", "get-url", "origin") or ROOT.as_uri(),
        "branch": os.environ.get("TEMPLATE_BRANCH", "template"),
        "subfolder": "template",
        "commit": os.environ.get("TEMPLATE_COMMIT") or here("rev-parse", "HEAD"),
        "tag": os.environ.get("TEMPLATE_TAG", ""),
    }
    answers = tomllib.loads(CONFIG.split("[conditional")[0])["placeholders"]
    # Strings as TOML multi-line literals: an answer may hold quotes or backslashes.
    values = [f"{key} = {{{{{key}}}}}" if answers.get(key, {}).get("type") == "bool" else f"{key} = '''{{{{{key}}}}}'''"
              for key in ["project-name", *answers]]
    head = (
        "# Where this project came from: the template's source and version, and the generator's answers.\n"
        "# `make template-update` reads and rewrites it (docs/template-updates.md); do not edit it.\n"
        "[template]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in fields.items())
    )
    return "{% raw %}" + head + "{% endraw %}\n[values]\n" + "\n".join(values) + "\n"


COMMENT = r"(?://|#|--|<!--|\{\{-?\s*/\*)"
BLOCK = re.compile(rf"^\s*{COMMENT}\s*@rabbitmq-(begin|else|end)\b")
# The template's own machinery (a release job, a make target): in no generated project.
TEMPLATE_BLOCK = re.compile(rf"^\s*{COMMENT}\s*@template-(begin|else|end)\b")
# The end of an else block written inside one multi-line comment (Markdown, Helm templates).
CLOSING_END = re.compile(r"^\s*@rabbitmq-end\s*(?:-->|\*/\s*-?\}\})\s*$")
TRAILING = re.compile(rf"\s*{COMMENT}\s*@rabbitmq\s*(?:-->|\*/\s*-?\}}\}})?\s*$")
ELSE_LINE = re.compile(r"^(\s*)(?://|#|--) ?")


def unmarked(line):
    """`line` without a trailing `@rabbitmq` marker."""
    if not TRAILING.search(line):
        return line
    return TRAILING.sub("", line.rstrip("\n")) + ("\n" if line.endswith("\n") else "")


def broker_only(path):
    return path.startswith(BROKER_ONLY)


def variant(text, broker, path="?"):
    """The text of a shared file in one variant: markers applied, and removed from both."""
    out, state, multiline = [], None, False
    machinery = None  # "begin": the template's own lines; "else": what generated projects get
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        own = TEMPLATE_BLOCK.match(line)
        if own:
            kind = own.group(1)
            expected = {"begin": (None,), "else": ("begin",), "end": ("begin", "else")}[kind]
            if machinery not in expected:
                raise SystemExit(f"{path}:{number}: @template-{kind} out of order")
            machinery = None if kind == "end" else kind
            continue
        if machinery == "begin":
            continue
        if machinery == "else":
            out.append(ELSE_LINE.sub(r"\1", line, count=1))
            continue
        block = BLOCK.match(line)
        if block:
            kind = block.group(1)
            expected = {"begin": (None,), "else": ("begin",), "end": ("begin", "else")}[kind]
            if state not in expected:
                raise SystemExit(f"{path}:{number}: @rabbitmq-{kind} out of order")
            # `<!-- @rabbitmq-else` opens a comment that `@rabbitmq-end -->` closes.
            opens = re.match(r"^\s*(?:<!--|\{\{-?\s*/\*)", line)
            multiline = kind == "else" and bool(opens) and not re.search(r"(-->|\*/\s*-?\}\})\s*$", line)
            state = None if kind == "end" else kind
            continue
        if state == "else" and CLOSING_END.match(line):
            state, multiline = None, False
            continue
        if state == "begin":
            if broker:
                out.append(unmarked(line))
        elif state == "else":
            if not broker:
                if multiline:
                    out.append(line)
                else:
                    stripped = ELSE_LINE.sub(r"\1", line, count=1)
                    if stripped == line and line.strip():
                        raise SystemExit(f"{path}:{number}: a line of an @rabbitmq-else block must be a comment")
                    out.append(stripped)
        elif TRAILING.search(line):
            if broker:
                out.append(unmarked(line))
        else:
            out.append(line)
    if state is not None or machinery:
        raise SystemExit(f"{path}: @{'template-begin' if machinery else 'rabbitmq-' + state} is never closed")
    return "".join(out)


def plain_sql(text):
    """A migration without the outbox and the consumer's tables (paragraph by paragraph)."""
    broker = re.compile(r"outbox|processed_events|event_counts|Consumer", re.IGNORECASE)
    paragraphs = [p for p in text.split("\n\n") if not re.search(r"CREATE TABLE (outbox|processed_events)", p)]
    kept = ["\n".join(line for line in p.split("\n") if not broker.search(line)) for p in paragraphs]
    return "\n\n".join(p for p in kept if p.strip()).rstrip("\n") + "\n"


def plain_schema(text):
    schema = json.loads(text)
    schema["properties"].pop("rabbitmq")
    for broker_only in ("outbox", "rabbitmq"):  # app.outbox.publishers, app.rabbitmq.consumers
        schema["properties"]["app"]["properties"].pop(broker_only)

    def prune(node):  # the check names a values file may tune
        if isinstance(node, dict):
            if node.get("enum") and "rabbitmq" in node["enum"]:
                node["enum"] = [name for name in node["enum"] if name != "rabbitmq"]
            for value in node.values():
                prune(value)
        elif isinstance(node, list):
            for value in node:
                prune(value)

    prune(schema)
    return json.dumps(schema, indent=2) + "\n"


def plain_dashboard(text):
    dashboard = json.loads(text)
    dashboard["panels"] = [p for p in dashboard["panels"] if "outbox" not in json.dumps(p.get("targets", []))]
    return json.dumps(dashboard, indent=2) + "\n"


TRANSFORMS = {
    "crates/api/src/db/migrations/V1__initial_schema.sql": plain_sql,
    "helm/shipshape/values.schema.json": plain_schema,
    "deploy/grafana/shipshape-dashboard.json": plain_dashboard,
}


def tracked():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    return [f for f in files if f and not f.startswith(SKIP) and (ROOT / f).is_file()] + list(SOURCES)


def source(name):
    """Where the file `name` of a generated project comes from here."""
    return ROOT / SOURCES.get(name, name)


def text_or_copy(name, target):
    """The text of the tracked file `name`, or None once a binary file is copied to `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return source(name).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        shutil.copyfile(source(name), target)
        return None


def materialize(destination, broker):
    """One variant as a plain tree (the name stays shipshape): what `cargo generate` would give."""
    for name in tracked():
        if not broker and broker_only(name):
            continue
        target = destination / name
        text = text_or_copy(name, target)
        if text is None:
            continue
        text = variant(text, broker, name)
        if not broker and name in TRANSFORMS:
            text = TRANSFORMS[name](text)
        target.write_text(text, encoding="utf-8")
        shutil.copymode(source(name), target)
    # What is left of a statement without its markers may fit on fewer lines.
    subprocess.run(["cargo", "fmt", "--all"], cwd=destination, check=True)
    # Cargo drops the packages nothing uses any more (the bench's; the broker's) and keeps every
    # other version pinned.
    subprocess.run(["cargo", "update", "--workspace", "--quiet"], cwd=destination, check=True)
    if not broker:
        subprocess.run([sys.executable, "deploy/tools/chart-readme.py"], cwd=destination, check=True, stdout=subprocess.DEVNULL)


def placeholder(text, start, end):
    """The placeholder for the occurrence text[start:end] of the name, by case and context."""
    word = text[start:end]
    if word == NAME.upper():
        return "{{project-name | shouty_snake_case}}"
    if word == NAME and text[end:end + 1].isalpha() and text[end:end + 1].islower():
        # Run into a lower-case word: a Markdown anchor of an alert (`#shipshapetargetdown`).
        return "{{project-name | pascal_case | downcase}}"
    if word[0].isupper():
        return "{{project-name | pascal_case}}"
    if text[max(0, start - 14):start] == "CARGO_BIN_EXE_":
        return "{{project-name}}"  # cargo names the variable after the binary, hyphens included
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    if before == "_" or after == "_":
        return "{{crate_name}}"  # part of an identifier: snake_case
    return "{{project-name}}"


def templatize(text, braces):
    """Liquid for a piece of text: the name, description, registry and URL as placeholders."""
    if "{% raw" in text or "{% endraw" in text:
        raise SystemExit("a file holds Liquid raw tags itself: list it in SKIP")
    text = text.replace(DESCRIPTION, "\0DESCRIPTION\0")
    text = re.sub(r"ghcr\.io/(shipshape|acme)/shipshape", "\0REGISTRY\0", text)
    text = text.replace("https://github.com/shipshape/shipshape", "\0REPOSITORY\0")
    pieces, last = [], 0
    for match in re.finditer(NAME, text, flags=re.IGNORECASE):
        pieces.append(("text", text[last:match.start()]))
        pieces.append(("tag", placeholder(text, match.start(), match.end())))
        last = match.end()
    pieces.append(("text", text[last:]))
    specials = {"\0DESCRIPTION\0": "{{description}}", "\0REGISTRY\0": "{{registry}}/{{project-name}}", "\0REPOSITORY\0": "{{repository_url}}"}
    out = []
    for kind, value in pieces:
        if kind == "tag":
            out.append(value)
            continue
        for part in re.split("(\0[A-Z]+\0)", value):
            if part in specials:
                out.append(specials[part])
            elif part:
                out.append("{% raw %}" + part + "{% endraw %}" if braces else part)
    return "".join(out)


def liquid(with_broker, without):
    """One template file from the two variants of a file: their common lines once, the rest in
    `{% if rabbitmq %}` blocks."""
    braces = any(mark in with_broker + without for mark in ("{{", "}}", "{%", "%}"))
    if with_broker == without:
        return templatize(with_broker, braces)
    a, b = with_broker.splitlines(keepends=True), without.splitlines(keepends=True)
    out = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        yes, no = "".join(a[a1:a2]), "".join(b[b1:b2])
        if op == "equal":
            out.append(templatize(yes, braces))
        elif not no:
            out.append("{% if rabbitmq %}" + templatize(yes, braces) + "{% endif %}")
        elif not yes:
            out.append("{% if rabbitmq == false %}" + templatize(no, braces) + "{% endif %}")
        else:
            out.append("{% if rabbitmq %}" + templatize(yes, braces) + "{% else %}" + templatize(no, braces) + "{% endif %}")
    return "".join(out)


def template_path(name):
    return re.sub(NAME, "{{project-name}}", name)


def write_template(destination):
    with tempfile.TemporaryDirectory() as scratch:
        plain, broker = pathlib.Path(scratch) / "plain", pathlib.Path(scratch) / "broker"
        materialize(plain, broker=False)
        materialize(broker, broker=True)
        ignored = []
        for name in tracked():
            target = destination / template_path(name)
            if text_or_copy(name, target) is None:
                continue
            with_broker = (broker / name).read_text(encoding="utf-8")
            if broker_only(name):
                ignored.append(template_path(name))
                without = with_broker
            else:
                without = (plain / name).read_text(encoding="utf-8")
            target.write_text(liquid(with_broker, without), encoding="utf-8")
            shutil.copymode(source(name), target)
    shutil.copyfile(ROOT / SERVICE_README, destination / "README.md")
    (destination / RECORD).write_text(record(), encoding="utf-8")
    # Whole folders too, or cargo-generate leaves them behind empty.
    folders = [template_path(entry.rstrip("/")) for entry in BROKER_ONLY if entry.endswith("/")]
    config = CONFIG + "".join(f'  "{path}",\n' for path in folders + ignored) + "]\n"
    (destination / "cargo-generate.toml").write_text(config, encoding="utf-8")


# What a service without the broker must not mention anywhere.
BROKER_WORDS = re.compile(r"rabbit|lapin|amqp|outbox|broker|relay|consumer|dead.letter|processed_events|event_counts|vhost", re.IGNORECASE)


def broker_mentions(tree):
    """file:line: text of every mention of the broker in a plain tree."""
    hits = []
    for path in sorted(p for p in tree.rglob("*") if p.is_file() and "target" not in p.parts):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            continue
        name = path.relative_to(tree)
        if str(name) == RECORD:
            continue  # it records every answer, `rabbitmq = false` too
        # A migration's file name is part of its identity (refinery's checksum): it stays.
        if BROKER_WORDS.search(str(name)) and "migrations" not in name.parts:
            hits.append(f"{name}: (the path)")
        hits += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(lines, 1) if BROKER_WORDS.search(line)]
    return hits


def main():
    if "--scan" in sys.argv:
        tree = pathlib.Path(sys.argv[sys.argv.index("--scan") + 1])
        hits = broker_mentions(tree)
        print("\n".join(hits))
        sys.exit(f"{len(hits)} mentions of the broker in {tree}" if hits else 0)
    if "--file" in sys.argv:  # one file's text in a variant, on stdout (template-check's stand-in)
        kind, name = sys.argv[sys.argv.index("--file") + 1:][:2]
        if kind not in ("broker", "plain"):
            sys.exit(f"--file broker|plain FILE, not {kind}")
        sys.stdout.write(variant(pathlib.Path(name).read_text(), kind == "broker", name))
        return
    if "--variant" in sys.argv:
        kind, into = sys.argv[sys.argv.index("--variant") + 1:][:2]
        if kind not in ("broker", "plain"):
            sys.exit(f"--variant broker|plain DIR, not {kind}")
        into = pathlib.Path(into)
        into.mkdir(parents=True, exist_ok=True)
        materialize(into, broker=kind == "broker")
        print(f"wrote the {kind} variant to {into}")
        return
    template = ROOT / "template"
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        template = pathlib.Path(sys.argv[1]).resolve()
    if template.exists():
        shutil.rmtree(template)
    write_template(template)
    print(f"wrote {sum(1 for p in template.rglob('*') if p.is_file())} files to {template}")


if __name__ == "__main__":
    main()
