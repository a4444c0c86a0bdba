# berth — see README.md. `make run` and `make test` install what they need on Debian.

DEBIAN_PACKAGES := gcc containerd runc protobuf-compiler docker-registry busybox-static apache2-utils iproute2 tini containernetworking-plugins iptables libfaketime libssl-dev pkg-config ca-certificates python3 python3-venv nginx chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BERTH := target/debug/berth
DEV_DIR ?= .berth-dev

.PHONY: all deps pyenv build run test bench chaos chaos-short lint fmt clean

all: build

# Installs the Debian packages that are missing (containerd, runc, protoc, a registry, busybox).
deps:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

build: deps
	cargo build -p berth

# A Python environment for the tests that use real clients: grpcio-tools (the API from
# generated stubs), the aws CLI and boto3 (the ECS endpoint), selenium (the web console, in
# Debian's chromium), all from PyPI.
PYENV := target/pyenv
PYTHON_PACKAGES := grpcio-tools grpcio-health-checking awscli boto3 selenium
pyenv: deps
	@[ -x $(PYENV)/bin/python ] && [ -x $(PYENV)/bin/aws ] && \
		$(PYENV)/bin/python -c 'import grpc_tools, grpc_health, boto3, selenium' 2>/dev/null || { \
		python3 -m venv $(PYENV) && \
		$(PYENV)/bin/pip install -q $(PYTHON_PACKAGES); }

# One server + one agent in one process, with its own containerd and a local registry on
# 127.0.0.1:5000 holding a demo image built from busybox. Runs in the foreground.
run: build
	$(BERTH) dev --data-dir $(DEV_DIR)

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

# Everything: formatting, lints, unit tests, end-to-end tests against real containerd, and a
# short chaos run that injects every kind of fault once.
test: deps pyenv lint
	cargo build -p berth -p berth-chaos
	BERTH_PYTHON=$(CURDIR)/$(PYENV)/bin/python cargo test --workspace
	BERTH_BIN=$(CURDIR)/target/debug/berth target/debug/berth-chaos run --duration 20s --every-kind-first

# Every kind of fault once (about 2 minutes).
chaos-short: deps
	cargo build -p berth -p berth-chaos
	BERTH_BIN=$(CURDIR)/target/debug/berth target/debug/berth-chaos run --duration 20s --every-kind-first

# Benchmarks on a release build; SCENARIO=raft runs one. Results: bench/results/latest.{json,md}.
# The peers measured beside berth in the same run come from Debian too (etcd; nginx is above).
BENCH_PACKAGES := etcd-server
bench:
	$(MAKE) deps DEBIAN_PACKAGES="$(DEBIAN_PACKAGES) $(BENCH_PACKAGES)"
	$(MAKE) pyenv
	cargo build --release -p berth -p berth-bench
	BERTH_BIN=$(CURDIR)/target/release/berth BERTH_PYTHON=$(CURDIR)/$(PYENV)/bin/python target/release/berth-bench $(SCENARIO)

# Faults against real servers for DURATION (120s), checked for linearizability and
# invariants (CHAOS.md); SEED=N replays a schedule.
DURATION ?= 120s
chaos: deps
	cargo build --release -p berth -p berth-chaos
	BERTH_BIN=$(CURDIR)/target/release/berth target/release/berth-chaos run --duration $(DURATION) $(if $(SEED),--seed $(SEED))

fmt:
	cargo fmt --all

clean:
	cargo clean
	rm -rf $(DEV_DIR)
