# otel-podnet: `make demo` runs the demo, `make test` runs every test. Both install what
# they need first (Debian packages and the Python package with its test extras), as root.

PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
APT_PACKAGES := clang-19 llvm-19 libbpf-dev libbpf1 bpftool iproute2 ethtool iperf3 openssl ca-certificates
PYTEST_ARGS ?=

.PHONY: setup apt pip bpf demo test unit kernel e2e lint bench clean

setup: apt pip bpf

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

pip:
	$(PIP) install -q --disable-pip-version-check -e '.[test]'

bpf:
	$(PYTHON) bpf/build.py

demo: setup
	otel-podnet demo

lint:
	ruff check otel_podnet tests bench
	ruff format --check otel_podnet tests bench
	mypy

unit:
	$(PYTHON) -m pytest tests/unit $(PYTEST_ARGS)

kernel:
	$(PYTHON) -m pytest tests/kernel $(PYTEST_ARGS)

e2e:
	$(PYTHON) -m pytest tests/e2e $(PYTEST_ARGS)

test: setup lint
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)

bench: setup
	$(PYTHON) bench/run.py

clean:
	rm -rf build dist *.egg-info otel_podnet/bpf/*.o
