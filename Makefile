# otel-podnet: `make demo` runs the demo, `make test` runs every test. Both install what
# they need first (Debian packages and the Python package with its test extras), as root.

PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
APT_PACKAGES := clang-19 llvm-19 libbpf-dev libbpf1 bpftool iproute2 ethtool iperf3 openssl ca-certificates \
	prometheus tmux qemu-system-x86 kmod busybox-static file iptables
# what only `make bench` runs: a high-rate HTTP client and server, and perf for profiles
BENCH_PACKAGES := wrk nginx-light linux-perf
PYTEST_ARGS ?=

.PHONY: setup apt bench-apt stop-packaged-prometheus pip bpf demo test test-kernels test-cluster cluster-node unit kernel e2e e2e-tools cluster-tools images lint bench clean

setup: apt pip bpf

# A package counts as there only when installed: one removed but not purged (dpkg -s still
# knows it, with its configuration files) is installed again.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		case " $$(echo $$missing) " in *" prometheus "*) $(MAKE) --no-print-directory stop-packaged-prometheus;; esac; \
	fi

# Debian's prometheus package starts its own service on install (systemd or sysvinit): the
# tests only need the binaries (promtool, and prometheus on a port of their own), so a
# service that this install started is stopped and disabled again.
stop-packaged-prometheus:
	@if [ -d /run/systemd/system ]; then systemctl disable --now prometheus.service >/dev/null 2>&1 || true; \
	elif [ -x /etc/init.d/prometheus ]; then /etc/init.d/prometheus stop >/dev/null 2>&1 || true; fi

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

# The e2e tools (otelcol, kube-apiserver, etcd, helm, and the real node's kubelet,
# kube-proxy, controller-manager and scheduler) are built from pinned Go modules and
# cached; the first build takes minutes, so it starts in the background while the lint,
# unit and kernel tests run (the e2e fixtures wait for it through the scripts' locks).
e2e-tools: cluster-tools
	@mkdir -p build
	@nohup bash tests/e2e/infra/build-otelcol.sh > build/otelcol-build.log 2>&1 &
	@nohup bash tests/e2e/infra/build-kube.sh > build/kube-build.log 2>&1 &
	@nohup bash deploy/image/build.sh --tag 0.1.0 --tag 0.1.0-b > build/images-build.log 2>&1 &

# What building and running the container images needs (deploy/image/build.sh, the image
# tests in tests/e2e/test_image.py): buildah (chroot isolation, overlay storage, as root),
# mmdebstrap for the Debian base, runc to start the images as containerd would.
CLUSTER_APT_PACKAGES := buildah mmdebstrap runc uidmap
cluster-tools:
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(CLUSTER_APT_PACKAGES)"

# The agent, pause and workload images as docker-archives (cached; paths on stdout).
images: cluster-tools
	bash deploy/image/build.sh

# The real node of tests/cluster: containerd, runc and the CNI plugins from Debian (the
# kubelet, kube-proxy and the control plane come from build-kube.sh, the images from
# deploy/image/build.sh); iptables and conntrack for kube-proxy, util-linux's nsenter.
CLUSTER_NODE_APT_PACKAGES := containerd runc containernetworking-plugins iptables conntrack util-linux
cluster-node:
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(CLUSTER_NODE_APT_PACKAGES)"

# Only the real-node tests: a single node on this machine running the agent's image
# (tests/cluster; ~10 minutes once the binaries and images are cached).
test-cluster: setup e2e-tools cluster-node
	$(PYTHON) -m pytest tests/cluster $(PYTEST_ARGS)

# The kernel matrix: tests/kernel (the demo among them) and `otel-podnet check` inside
# Debian's Linux 6.1 (with libbpf 1.1) and 6.12 (with libbpf 1.4) under QEMU, fetched into
# /var/cache/otel-podnet by tests/matrix/fetch.sh. In `make test` it runs right after lint,
# while the e2e tools build in the background, so the two overlap.
test-kernels: setup
	$(PYTHON) tests/matrix/run.py

# The matrix first, then every test on this machine's kernel, the real node last (its
# binaries and images build in the background meanwhile): both always run, and the
# target fails when either does.
test: setup e2e-tools cluster-node lint
	@$(PYTHON) tests/matrix/run.py; matrix=$$?; \
	$(PYTHON) -m pytest tests/unit tests/kernel tests/e2e tests/cluster $(PYTEST_ARGS); tests=$$?; \
	[ $$matrix -eq 0 ] && [ $$tests -eq 0 ]

# Debian's nginx packages start their own nginx on install: the bench runs its own inside a
# simulated pod, so a service that this install started is stopped again.
bench-apt:
	@missing=$$(for p in $(BENCH_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		case " $$(echo $$missing) " in *" nginx-light "*) \
			if [ -d /run/systemd/system ]; then systemctl disable --now nginx.service >/dev/null 2>&1 || true; \
			elif [ -x /etc/init.d/nginx ]; then /etc/init.d/nginx stop >/dev/null 2>&1 || true; fi;; esac; \
	fi

bench: setup bench-apt
	$(PYTHON) bench/run.py
	$(PYTHON) bench/interleave.py

clean:
	rm -rf build dist *.egg-info otel_podnet/bpf/*.o
