"""Brings a newer version of the template this project was generated from into it.

    TO=REF template-update.py update   (`make template-update [TO=REF]`)
    TO=REF template-update.py status   (`make template-status [TO=REF]`)

The project's `.template.toml` records where it came from: the template's git source, branch and
subfolder, its version (the source commit the template was written from, and the release tag)
and every answer given to the generator. An update renders the recorded version and the target
with those answers (the same cargo-generate, the same choices), commits both renders into this
repository's object store (old, then new on top of it) and cherry-picks the new one: git's
three-way merge applies the template's changes, keeps local edits, and leaves conflict markers
where both changed the same lines. The update never touches what belongs to the project alone:
its migrations, and files it removed (the replaced example). Cargo.lock is regenerated, not
merged. REF is a tag, a branch or a commit of the source; by default the newest release tag
(template-*), or the branch head when there is none. See docs/template-updates.md.

Exit status: 0 when done (or nothing to do), 1 when conflicts are left to resolve, 2 on errors.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import tomllib

RECORD = ".template.toml"
# release.yml tags each published template `template-<version>`.
RELEASE_TAGS = "template-*"
# Paths the update never merges: the record and the lock file it writes itself, and the project's
# own migrations (the template's history is not the project's).
OWN = (RECORD, "Cargo.lock", "crates/api/src/db/migrations/")
IDENTITY = {
    "GIT_AUTHOR_NAME": "template-update",
    "GIT_AUTHOR_EMAIL": "template-update@localhost",
    "GIT_COMMITTER_NAME": "template-update",
    "GIT_COMMITTER_EMAIL": "template-update@localhost",
}


class Failure(Exception):
    """An error the user has to act on: printed as is, exit 2."""


def git(*args: str, cwd: pathlib.Path | str = ".", env: dict | None = None, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if check and done.returncode != 0:
        raise Failure(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


class Source:
    """The template's repository, fetched into a scratch bare repository."""

    def __init__(self, record: dict, scratch: pathlib.Path):
        self.url, self.branch = record["source"], record.get("branch", "template")
        self.subfolder = record.get("subfolder", "template")
        self.repo = scratch / "source.git"
        git("init", "-q", "--bare", str(self.repo))
        refspecs = [f"+refs/heads/{self.branch}:refs/heads/{self.branch}", f"+refs/tags/{RELEASE_TAGS}:refs/tags/{RELEASE_TAGS}"]
        # Depth 1: a published template commit's parent is the source commit it was written from,
        # and that is in the commit object itself.
        git("fetch", "-q", "--depth", "1", "--no-tags", self.url, *refspecs, cwd=self.repo)

    def commit_of(self, ref: str) -> str | None:
        for candidate in (f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
            found = git("rev-parse", "-q", "--verify", f"{candidate}^{{commit}}", cwd=self.repo, check=False)
            if found:
                return found
        return self.written_from(ref)

    def written_from(self, source_commit: str) -> str | None:
        """The published template commit written from `source_commit` (its parent)."""
        for ref in git("for-each-ref", "--format=%(refname)", cwd=self.repo).split():
            commit = git("rev-parse", f"{ref}^{{commit}}", cwd=self.repo)
            header = git("cat-file", "commit", commit, cwd=self.repo).split("\n\n", 1)[0]
            if source_commit and f"\nparent {source_commit}" in f"\n{header}":
                return commit
        return None

    def newest(self) -> tuple[str, str]:
        """The newest release tag (pre-releases aside), or the branch head when there is none."""
        tags = git("-c", "versionsort.suffix=-", "tag", "-l", RELEASE_TAGS, "--sort=-v:refname", cwd=self.repo).split()
        releases = [tag for tag in tags if "-" not in tag.removeprefix("template-")]
        ref = releases[0] if releases else self.branch
        return ref, git("rev-parse", f"{ref}^{{commit}}", cwd=self.repo)

    def render(self, commit: str, values: dict, into: pathlib.Path) -> pathlib.Path:
        """The project cargo-generate makes from the template at `commit` with `values`."""
        unpacked = into / "template"
        unpacked.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", "--format=tar", commit, self.subfolder], cwd=self.repo, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(unpacked)], input=archive.stdout, check=True)
        answers = into / "values.toml"
        answers.write_text("[values]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items() if key != "project-name"))
        generator = os.environ.get("CARGO_GENERATE", "cargo-generate")
        done = subprocess.run(
            [generator, "generate", "--path", str(unpacked / self.subfolder), "--name", values["project-name"],
             "--values-file", str(answers), "--silent", "--vcs", "none", "--destination", str(into)],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise Failure(f"cargo-generate could not render {commit[:12]}: {done.stderr.strip()}")
        return into / values["project-name"]


def toml_value(value) -> str:
    """A TOML value: a JSON string (without ASCII escapes) is a TOML basic string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(str(value), ensure_ascii=False)


def tree_of(render: pathlib.Path, parent: str | None, message: str) -> str:
    """A commit in this repository holding exactly `render`, less the project's own paths."""
    for path in OWN:
        target = render / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    git_dir = git("rev-parse", "--absolute-git-dir")
    with tempfile.TemporaryDirectory() as scratch:
        env = {"GIT_DIR": git_dir, "GIT_WORK_TREE": str(render), "GIT_INDEX_FILE": f"{scratch}/index", **IDENTITY}
        git("add", "-A", "-f", ".", cwd=render, env=env)
        tree = git("write-tree", cwd=render, env=env)
    return git("commit-tree", tree, *(["-p", parent] if parent else []), "-m", message, env=IDENTITY)


def describe(record: dict) -> str:
    tag, commit = record.get("tag") or "", record.get("commit") or ""
    return f"{tag} (written from {commit[:12]})" if tag else f"written from {commit[:12]}"


class Update:
    def __init__(self, target: str | None, scratch: pathlib.Path):
        if not pathlib.Path(RECORD).is_file():
            raise Failure(f"no {RECORD} here: this project was not generated from the template, or predates the record")
        self.record = tomllib.loads(pathlib.Path(RECORD).read_text())
        self.scratch = scratch
        self.source = Source(self.record["template"], scratch)
        recorded = self.record["template"]
        self.old = self.source.commit_of(recorded["tag"]) if recorded.get("tag") else None
        self.old = self.old or self.source.written_from(recorded.get("commit", ""))
        if not self.old:
            raise Failure(f"the recorded version {describe(recorded)} is not published at {self.source.url} any more")
        if target:
            self.target_ref, self.new = target, self.source.commit_of(target)
            if not self.new:
                raise Failure(f"{target}: no such tag, branch or commit at {self.source.url}")
        else:
            self.target_ref, self.new = self.source.newest()

    def renders(self) -> tuple[str, str]:
        """The two renders as commits (old, then new on top of it)."""
        values = self.record["values"]
        old = self.source.render(self.old, values, self.scratch / "old")
        new = self.source.render(self.new, values, self.scratch / "new")
        self.new_record_text = (new / RECORD).read_text()
        self.new_record = tomllib.loads(self.new_record_text)["template"]
        self.new_lock = (new / "Cargo.lock").read_bytes() if (new / "Cargo.lock").exists() else None
        self.old_lock = (old / "Cargo.lock").read_bytes() if (old / "Cargo.lock").exists() else None
        old_commit = tree_of(old, None, f"template {describe(self.record['template'])}")
        new_commit = tree_of(new, old_commit, f"template {self.target_ref}")
        return old_commit, new_commit

    def header(self) -> None:
        print(f"template: {self.source.url} ({self.source.branch}, {self.source.subfolder}/)")
        print(f"recorded: {describe(self.record['template'])}")
        print(f"target:   {self.target_ref} (template commit {self.new[:12]})")

    def changed_renders(self) -> tuple[str, str] | None:
        """The two renders as commits, or None when the target renders as the recorded version."""
        self.header()
        if self.old == self.new:
            return None
        old, new = self.renders()
        return None if git("rev-parse", f"{old}^{{tree}}") == git("rev-parse", f"{new}^{{tree}}") else (old, new)

    def status(self) -> int:
        renders = self.changed_renders()
        if renders is None:
            print("up to date: the update would change nothing")
            return 0
        old, new = renders
        # git 2.40 or later; exit 1 means conflicts, more is an error.
        merged = subprocess.run(["git", "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z",
                                 f"--merge-base={old}", "HEAD", new], capture_output=True, text=True)
        if merged.returncode not in (0, 1):
            raise Failure(f"git merge-tree (git 2.40 or later): {merged.stderr.strip()}")
        tree, *conflicts = [entry for entry in merged.stdout.split("\0") if entry]
        print(f"the update would change (besides {RECORD} and Cargo.lock):")
        changes = git("diff", "--name-status", "--no-renames", "-z", "HEAD", tree).split("\0")
        for status, path in zip(changes[0::2], changes[1::2]):
            if path in conflicts and not self.exists_in("HEAD", path):
                print(f"  kept removed: {path} (the template changed it; this project removed it)")
            else:
                print(f"  {status} {path}{'  (conflict)' if path in conflicts else ''}")
        return 0

    def update(self) -> int:
        renders = self.changed_renders()
        if renders is None:
            if self.old != self.new and self.new_record != self.record["template"]:
                pathlib.Path(RECORD).write_text(self.new_record_text)
                git("add", RECORD)
                print(f"no file changes; {RECORD} now records {describe(self.new_record)}")
            else:
                print("up to date: nothing changed")
            return 0
        old, new = renders
        picked = subprocess.run(["git", "cherry-pick", "--no-commit", new], capture_output=True, text=True)
        unmerged = [path for path in git("diff", "--name-only", "-z", "--diff-filter=U").split("\0") if path]
        git("cherry-pick", "--quit", check=False)
        if picked.returncode != 0 and not unmerged:
            raise Failure(f"the merge failed: {picked.stderr.strip()}; `git reset --hard` undoes what it left")
        conflicts, kept_removed = [], []
        for path in unmerged:
            if not self.exists_in("HEAD", path):
                # Removed here (the replaced example): it stays removed.
                git("--literal-pathspecs", "rm", "-q", "-f", "--", path)
                kept_removed.append(path)
            else:
                conflicts.append(path)
        pathlib.Path(RECORD).write_text(self.new_record_text)
        git("add", RECORD)
        self.lock()
        print("changed:")
        for line in git("status", "--short", "--no-renames").splitlines():
            print(f"  {line}")
        for path in kept_removed:
            print(f"kept removed (the template changed it, this project had removed it): {path}")
        if conflicts:
            print("CONFLICTS (changed here and in the template; resolve each, then `git add` it):")
            for path in conflicts:
                if self.exists_in(new, path):
                    print(f"  {path}  (both changed the same lines: resolve the markers)")
                else:
                    print(f"  {path}  (the template removed it, this project changed it: no markers;"
                          " `git add` keeps it, `git rm` takes the removal)")
            return 1
        print(f"updated to {self.target_ref}: review with `git diff --cached`, then commit")
        return 0

    @staticmethod
    def exists_in(commit: str, path: str) -> bool:
        return subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], capture_output=True).returncode == 0

    def lock(self) -> None:
        """Cargo.lock regenerated, never merged: the template's new one when the project's is still
        the template's old one, the project's own otherwise; either resolved against the merged
        manifests (`cargo update --workspace` keeps every other pin)."""
        lock = pathlib.Path("Cargo.lock")
        if self.new_lock is not None and lock.exists() and lock.read_bytes() == self.old_lock:
            lock.write_bytes(self.new_lock)
        done = subprocess.run(["cargo", "update", "--workspace", "--quiet"], capture_output=True, text=True)
        if done.returncode != 0:
            print("Cargo.lock: not resolved (a manifest with conflict markers, or no registry);"
                  " run `cargo update --workspace` once the manifests are resolved")
        if lock.exists():
            git("add", "Cargo.lock")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("update", "status"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    # From the environment (make passes TO), so that no shell ever parses it.
    target = os.environ.get("TO") or None
    try:
        if sys.argv[1] == "update" and git("status", "--porcelain"):
            raise Failure("the working tree has uncommitted changes: commit or stash them first")
        with tempfile.TemporaryDirectory(prefix="template-update-") as scratch:
            update = Update(target, pathlib.Path(scratch))
            return update.update() if sys.argv[1] == "update" else update.status()
    except Failure as error:
        print(f"template-update: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
