# exec-reaper: `make demo` runs the main job on a local control plane;
# `make test` runs every test. Pinned tools are built once into
# $(TOOLS_CACHE) (outside the repository) by hack/tools.sh.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
GO ?= go
BIN := $(CURDIR)/bin
export EXEC_REAPER_TOOLS_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/exec-reaper-tools

# Packages with goroutines run under the race detector.
RACE_PKGS := ./record/... ./provider/... ./deleter/... ./internal/... ./verifier/... ./test/fixture/...
UNIT_PKGS := ./templates/... ./cmd/... ./hack/...

# The pinned control-plane and node tools, built on first use; the node's
# Debian packages (runc, CNI plugins, iptables, conntrack, iproute2,
# busybox-static) are installed when missing.
TOOLS_ENV = EXEC_REAPER_KUBE_TOOLS="$$(hack/tools.sh kube)" EXEC_REAPER_GATEKEEPER="$$(hack/tools.sh gatekeeper)" \
	EXEC_REAPER_HELM="$$(hack/tools.sh helm)/helm" EXEC_REAPER_NODE_TOOLS="$$(hack/node-packages.sh && hack/tools.sh node)"
# The oldest Gatekeeper the README claims; only the e2e suite needs it.
OLD_GATEKEEPER_ENV = EXEC_REAPER_GATEKEEPER_OLD="$$(hack/tools.sh gatekeeper-old)"

.PHONY: all build test generate generate-check lint unit e2e verify-policies chart-test bench demo up down image tools clean

all: build

build: ## Build both binaries into bin/.
	$(GO) build -trimpath -o $(BIN)/ ./cmd/exec-reaper-provider ./cmd/exec-reaper-deleter

test: lint unit verify-policies chart-test e2e ## Every test: linters, unit, policy suites, chart, end to end.

generate: ## Write the generated files from their sources (the chart's copies of templates/*/template.yaml).
	$(GO) run ./hack/generate

generate-check: ## Fail when a generated file is stale, naming it and the command that refreshes it (make generate).
	$(GO) run ./hack/generate -check

lint: generate-check ## Stale generated files, gofmt, go vet and staticcheck (pinned).
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./test/...
	"$$(hack/tools.sh staticcheck)/staticcheck" ./...
	"$$(hack/tools.sh staticcheck)/staticcheck" -tags e2e ./test/...

unit: ## Unit tests; concurrent packages under -race.
	$(GO) test -race -count=1 $(RACE_PKGS)
	$(GO) test -count=1 $(UNIT_PKGS)

verify-policies: ## Run the gator suites of every template (external data included); stock gator on the pure-Rego ones.
	$(GO) run ./cmd/exec-reaper-gator verify ./templates/...
	"$$(hack/tools.sh gator)/gator" verify ./templates/record-guard/...

chart-test: ## helm lint and render tests of the chart.
	EXEC_REAPER_HELM="$$(hack/tools.sh helm)/helm" $(GO) test -count=1 ./charts/...

e2e: ## End-to-end suite on a local control plane with real Gatekeeper and kubectl.
	$(TOOLS_ENV) $(OLD_GATEKEEPER_ENV) $(GO) test -tags e2e -count=1 -p 1 -timeout 30m -v ./test/...

bench: ## Benchmarks; see BENCHMARKS.md. The second part runs against the local control plane.
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./provider/ ./provider/tlscerts/ ./record/
	$(TOOLS_ENV) $(GO) test -tags e2e -count=1 -timeout 40m -run '^$$' -bench . -benchtime 300x ./test/e2e/

demo: ## The main job: exec into a pod on a local control plane and watch exec-reaper evict it.
	$(TOOLS_ENV) $(GO) run ./test/demo

up: ## As demo, but leave the control plane running (make down stops it).
	$(TOOLS_ENV) $(GO) run ./test/demo -up

down: ## Stop a control plane left by make up, and clean what a crashed node left.
	$(GO) run ./test/demo -down

# The chart's default image; its tag is the chart's appVersion.
IMAGE ?= ghcr.io/exec-reaper/exec-reaper

image: ## Build the container image (needs a container engine): $(IMAGE):<appVersion>.
	docker build -t $(IMAGE):$$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/exec-reaper/Chart.yaml) .

tools: ## Build the pinned tools now (kube, Gatekeeper and the oldest one supported, staticcheck, helm, node) and install the node's packages.
	hack/node-packages.sh
	hack/tools.sh node >/dev/null
	hack/tools.sh kube >/dev/null
	hack/tools.sh gatekeeper >/dev/null
	hack/tools.sh gatekeeper-old >/dev/null
	hack/tools.sh staticcheck >/dev/null
	hack/tools.sh helm >/dev/null

clean:
	rm -rf $(BIN)
