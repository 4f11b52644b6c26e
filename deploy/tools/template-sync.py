"""Writes template/ (the cargo-generate template) from the working tree, or checks it (--check).

The repository root stays a buildable service called `shipshape`; template/ is the same tree with
every occurrence of the name turned into a placeholder, in the case style it appears in. Files
that hold braces of their own (Helm templates, GitHub workflows, Grafana legends, alert rules)
are wrapped in {% raw %} blocks, so Liquid passes them through byte for byte, except for the names.
"""

import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAME = "shipshape"
DESCRIPTION = "A Rust HTTP microservice whose probes tell Kubernetes the truth."
# The template's own machinery stays here: a generated project is a service, not a template.
SKIP = ("template/", "cargo-generate.toml", "deploy/tools/template-sync.py", "deploy/tools/template-check.sh")

CONFIG = """\
# cargo-generate definition of the shipshape template (written by deploy/tools/template-sync.py).
#   cargo generate --git <repository> template --name acme-orders
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
"""


def placeholder(text, start, end):
    """The placeholder for the occurrence text[start:end] of the name, by case and context."""
    word = text[start:end]
    if word == NAME.upper():
        return "{{project-name | shouty_snake_case}}"
    if word[0].isupper():
        return "{{project-name | pascal_case}}"
    if text[max(0, start - 14):start] == "CARGO_BIN_EXE_":
        return "{{project-name}}"  # cargo names the variable after the binary, hyphens included
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    if before == "_" or after == "_":
        return "{{crate_name}}"  # part of an identifier: snake_case
    return "{{project-name}}"


def templatize(text):
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
    expanded = []
    for kind, value in pieces:
        if kind == "tag":
            expanded.append(("tag", value))
            continue
        for part in re.split("(\0[A-Z]+\0)", value):
            expanded.append(("tag", specials[part]) if part in specials else ("text", part))
    braces = any(mark in text for mark in ("{{", "}}", "{%", "%}"))
    out = []
    for kind, value in expanded:
        if kind == "tag":
            out.append(value)
        elif value:
            out.append("{% raw %}" + value + "{% endraw %}" if braces else value)
    return "".join(out)


def write(destination):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if name.startswith(SKIP) or not (ROOT / name).is_file():
            continue
        target = destination / re.sub(NAME, "{{project-name}}", name)
        target.parent.mkdir(parents=True, exist_ok=True)
        data = (ROOT / name).read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            shutil.copyfile(ROOT / name, target)
            continue
        target.write_text(templatize(text))
        shutil.copymode(ROOT / name, target)
    (destination / "cargo-generate.toml").write_text(CONFIG)


def main():
    template = ROOT / "template"
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as scratch:
            fresh = pathlib.Path(scratch) / "template"
            write(fresh)
            result = subprocess.run(["diff", "-r", "-q", str(fresh), str(template)], capture_output=True, text=True)
            if result.returncode != 0:
                print(result.stdout + result.stderr)
                sys.exit("template/ has drifted from the working tree: run `make template-sync` and commit")
        print("template/ matches the working tree")
        return
    if template.exists():
        shutil.rmtree(template)
    write(template)
    print(f"wrote {sum(1 for p in template.rglob('*') if p.is_file())} files to template/")


if __name__ == "__main__":
    main()
