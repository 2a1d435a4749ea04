"""The kernel matrix: boot Debian's Linux 6.1 and 6.12 under QEMU and run, inside each as
root, `otel-podnet check` and the kernel tests whose outcome depends on the kernel
(marked `matrix`, `otel-podnet demo` among them) of this repository, with the same exact
assertions as on the host, which runs all of tests/kernel.

The guest is virtme-ng over this machine's root filesystem (9p), so the guest runs the
repository's own code: PYTHONPATH, the BPF object and the libbpf under test are passed
explicitly, never taken from an installed copy. Kernels and libbpf come from Debian's
packages, fetched and cached under /var/cache/otel-podnet by fetch.sh.

KVM is used where it works and TCG where it does not, decided by booting a guest under KVM
once and looking for its output. A guest that does not boot, times out or whose command
fails is a failure (exit 1), never a skip.

    python3 tests/matrix/run.py                    # the CI matrix (see MATRIX)
    python3 tests/matrix/run.py --all              # every kernel x every libbpf
    python3 tests/matrix/run.py --kernel 6.12 --libbpf 1.4 -- python3 -m otel_podnet check
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FETCH = Path(__file__).resolve().parent / "fetch.sh"
SENTINEL = "PODNET-MATRIX-EXIT="
STARTED = "PODNET-MATRIX-START"
GUEST_STATUS_DIR = "/run/podnet-matrix"  # read-write: the command's exit status, written by the guest
GUEST_LIBBPF_DIR = "/run/podnet-libbpf"  # /var/cache is a tmpfs in the guest: libbpf is mounted here

# (kernel series, libbpf series) run by `make test`: each kernel once, each libbpf once.
# A guest whose command has not started this long after QEMU did has failed to boot (a boot
# takes well under a minute under TCG; a kernel that panics early, e.g. on a command line
# over its 2,048 bytes, then sits idle): it fails then, not at the end of `--timeout`.
START_TIMEOUT = 300.0
MATRIX = (("6.1", "1.1"), ("6.12", "1.4"))
# The guest's tests: those whose outcome depends on the kernel, marked `matrix`; the host
# (tests/kernel in `make test`) runs them all. Under TCG one test that starts the agent and
# moves traffic takes 20 s to over a minute, depending on the host: all of tests/kernel
# took 1239 s in one guest on one host, and on another reached a third of its tests in
# 1800 s, with two guests to run. Marked: every program through the kernel's verifier and
# JIT on crafted packets (test_prog_run), the demo's exact figures (connections, bytes,
# connect latency, what no hook sees), and the hooks whose semantics moved between 6.1 and
# 6.18: retransmit and reset tracepoints, the timewait segments, IPv6, sockets older than
# the agent, BPF links on a crash. (A marker, not a list of test ids: the command travels
# on the guest kernel's command line, which has 2,048 bytes, and a longer one panics 6.1
# at boot.) -p no:cacheprovider because the root is read-only.
# sys.executable: the guest's PATH is not this shell's (a pyenv or venv python stays the same).
GUEST_TESTS = (
    sys.executable,
    "-m",
    "pytest",
    "tests/kernel",
    "-m",
    "matrix",
    "-v",  # one line per test as it ends: the CI log shows each one passing in each guest
    "-ra",
    "-p",
    "no:cacheprovider",
    "--color=no",
    "--durations=5",
)


@dataclass(frozen=True)
class Kernel:
    release: str  # e.g. 6.1.0-56-amd64
    image: Path

    @property
    def series(self) -> str:
        return ".".join(self.release.split(".")[:2])


@dataclass(frozen=True)
class Libbpf:
    version: str  # Debian version, e.g. 1:1.4.6-1~bpo12+1
    path: Path

    @property
    def series(self) -> str:
        upstream = self.version.split(":", 1)[-1]
        return ".".join(upstream.split(".")[:2])


def fetch() -> tuple[list[Kernel], list[Libbpf]]:
    """Fetch (or find cached) kernels and libbpf builds; fetch.sh prints what it has."""
    out = subprocess.run(["bash", str(FETCH)], check=True, capture_output=True, text=True).stdout
    kernels, libbpfs = [], []
    for line in out.splitlines():
        kind, version, path = line.split(" ", 2)
        if kind == "kernel":
            kernels.append(Kernel(version, Path(path) / "boot" / f"vmlinuz-{version}"))
        elif kind == "libbpf":
            libbpfs.append(Libbpf(version, Path(path)))
    return kernels, libbpfs


def vng_command(
    kernel: Kernel, script: str, kvm: bool, cpus: int, memory: str, rodirs: tuple[str, ...] = ()
) -> list[str]:
    cmd = ["vng", "--verbose", "--run", str(kernel.image), "--force-9p", "--cpus", str(cpus), "--memory", memory]
    cmd += [f"--rodir={d}" for d in rodirs]
    # the modules vng links /lib/modules/<release> to: /var/cache is a tmpfs in the guest
    modules = kernel.image.parent.parent
    cmd.append(f"--rodir={modules}={modules}")
    if not kvm:
        cmd.append("--disable-kvm")
        if cpus > (os.cpu_count() or 1):
            # more vCPUs than host cores (a big-node measurement): one TCG thread runs them
            # all, instead of one thread each fighting over the cores of a shared machine
            cmd.append("--qemu-opts=-accel tcg,thread=single")
    cmd += ["--append", "loglevel=4"]  # kernel warnings and worse only, on the console
    return [*cmd, "--cwd", str(REPO), "--exec", script]


def boot(
    kernel: Kernel,
    command: str,
    *,
    kvm: bool,
    timeout: float,
    cpus: int = 2,
    memory: str = "4G",
    echo: bool = True,
    rodirs: tuple[str, ...] = (),
    start_timeout: float | None = None,
) -> tuple[int | None, str]:
    """Boot ``kernel`` and run ``command`` (a shell line) inside it as root. Returns the
    command's exit status (None when the guest never reported one: no boot, a crash, the
    timeout) and the console output. The guest is killed, with its QEMU, on timeout, and
    also when ``start_timeout`` passes before the command starts (a boot that hangs)."""
    # The status goes to a file on the host (the console can lose its last lines when the
    # guest powers off) and to the console, for the log.
    status_dir = Path(tempfile.mkdtemp(prefix="podnet-matrix-"))
    status_file = status_dir / "status"
    script = f"echo {STARTED}; {command}; rc=$?; echo $rc > {GUEST_STATUS_DIR}/status; echo {SENTINEL}$rc; sleep 1"
    # vng and the virtme-run it calls live beside this Python's other scripts
    scripts = sysconfig.get_path("scripts")
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [*vng_command(kernel, script, kvm, cpus, memory, rodirs), f"--rwdir={GUEST_STATUS_DIR}={status_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: QEMU goes with it on timeout
        env=env,
    )
    lines: list[str] = []
    status: int | None = None
    started = False
    deadline = time.monotonic() + timeout
    first = min(timeout, start_timeout) if start_timeout else timeout

    def _kill(signum: int, frame: object) -> None:
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, _kill)
    signal.setitimer(signal.ITIMER_REAL, first)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            text = line.rstrip("\n")
            if text.startswith(SENTINEL):
                status = int(text[len(SENTINEL) :])
            elif text.startswith(STARTED):
                started = True
                signal.setitimer(signal.ITIMER_REAL, max(0.01, deadline - time.monotonic()))
            elif echo and started and not _kernel_noise(text):
                print(f"[{kernel.series}] {text}", flush=True)
        proc.wait(max(1.0, deadline - time.monotonic()))
    except (TimeoutError, subprocess.TimeoutExpired):
        if started:
            lines.append(f"matrix: timed out after {timeout:.0f} s\n")
            print(f"[{kernel.series}] timed out after {timeout:.0f} s: killing the guest", flush=True)
        else:
            lines.append(f"matrix: the command did not start within {first:.0f} s\n")
            print(f"[{kernel.series}] the command did not start within {first:.0f} s: killing the guest", flush=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if status_file.is_file():
            status = int(status_file.read_text().strip() or "-1")
        shutil.rmtree(status_dir, ignore_errors=True)
    return status, "".join(lines)


def _kernel_noise(line: str) -> bool:
    """Boot messages (dmesg lines) are kept out of the log unless the guest fails."""
    return line.startswith("[") and "] " in line[:20] and line[1:2] in " 0123456789"


_accel: dict[str, bool] = {}


def kvm_works(kernel: Kernel) -> bool:
    """Boot once under KVM: use it when a command runs, TCG otherwise (decided by trying)."""
    if kernel.release not in _accel:
        ok = False
        if os.access("/dev/kvm", os.R_OK | os.W_OK):
            status, out = boot(kernel, "true", kvm=True, timeout=60, cpus=1, memory="1G", echo=False)
            ok = status == 0
            if not ok:
                reason = next((ln for ln in out.splitlines() if "error" in ln.lower()), "no output")
                print(f"[{kernel.series}] KVM does not run this guest ({reason.strip()}): using TCG", flush=True)
        else:
            print(f"[{kernel.series}] /dev/kvm not usable: using TCG", flush=True)
        _accel[kernel.release] = ok
    return _accel[kernel.release]


def guest_env(libbpf: Libbpf, emulated: bool) -> str:
    env = {
        # Under TCG every instruction is emulated: the latency tests keep their exact counts
        # but not their timing bounds (tests/kernel/test_latency.py).
        "PODNET_TEST_EMULATED": "1" if emulated else "0",
        "PYTHONPATH": str(REPO),
        "PODNET_BPF_OBJECT": str(REPO / "otel_podnet" / "bpf" / "podnet.bpf.o"),
        "PODNET_LIBBPF": f"{GUEST_LIBBPF_DIR}/{libbpf.path.name}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def run_one(kernel: Kernel, libbpf: Libbpf, command: str, timeout: float, cpus: int = 2, memory: str = "4G") -> bool:
    kvm = kvm_works(kernel)
    title = f"Linux {kernel.release} x libbpf {libbpf.version} ({'KVM' if kvm else 'TCG'}, {cpus} vCPUs)"
    print(f"=== {title}: {command}", flush=True)
    started = time.monotonic()
    line = f"export {guest_env(libbpf, emulated=not kvm)}; uname -r; {command}"
    rodirs = (f"{GUEST_LIBBPF_DIR}={libbpf.path.parent}",)
    status, out = boot(
        kernel, line, kvm=kvm, timeout=timeout, cpus=cpus, memory=memory, rodirs=rodirs, start_timeout=START_TIMEOUT
    )
    took = time.monotonic() - started
    if status is None:
        print(out[-6000:], flush=True)  # the boot log: why it never reported
        print(f"=== FAILED {title}: the guest reported no exit status ({took:.0f} s)", flush=True)
        return False
    verdict = "passed" if status == 0 else f"FAILED (exit {status})"
    print(f"=== {verdict} {title} in {took:.0f} s", flush=True)
    return status == 0


def pick(items: list[Kernel] | list[Libbpf], series: str) -> Kernel | Libbpf:
    for it in items:
        if it.series == series:
            return it
    raise SystemExit(f"matrix: no {series} among {[it.series for it in items]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true", help="every kernel with every libbpf")
    p.add_argument("--kernel", help="one kernel series (6.1, 6.12)")
    p.add_argument("--libbpf", help="one libbpf series (1.1, 1.4)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per guest (default 1800)")
    p.add_argument("--cpus", type=int, default=2, help="guest vCPUs (default 2)")
    p.add_argument("--memory", default="4G", help="guest memory (default 4G)")
    p.add_argument("command", nargs="*", help="the command to run in the guest (default: check, then -m matrix)")
    args = p.parse_args(argv)

    if not (REPO / "otel_podnet" / "bpf" / "podnet.bpf.o").is_file():
        print("matrix: build the BPF object first (python3 bpf/build.py)", file=sys.stderr)
        return 1
    kernels, libbpfs = fetch()
    if args.kernel or args.libbpf:
        ks = [pick(kernels, args.kernel)] if args.kernel else kernels
        ls = [pick(libbpfs, args.libbpf)] if args.libbpf else libbpfs[:1]
        pairs = [(k, lb) for k in ks for lb in ls]
    elif args.all:
        pairs = [(k, lb) for k in kernels for lb in libbpfs]
    else:
        pairs = [(pick(kernels, k), pick(libbpfs, lb)) for k, lb in MATRIX]
    if args.command:
        command = shlex.join(args.command)
    else:
        # both run whatever the first gives; the guest fails when either does
        check = f"{sys.executable} -m otel_podnet check"
        command = f"{check}; c=$?; {shlex.join(GUEST_TESTS)}; t=$?; [ $c = 0 ] && [ $t = 0 ]"

    # a SIGTERM (timeout, CI cancel) unwinds like an error: the running guest is killed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    results = [(k, lb, run_one(k, lb, command, args.timeout, args.cpus, args.memory)) for k, lb in pairs]  # type: ignore[arg-type]
    print(f"=== kernel matrix ({time.monotonic() - started:.0f} s):", flush=True)
    for k, lb, ok in results:
        print(f"    {'passed' if ok else 'FAILED'}  Linux {k.release}  libbpf {lb.version}", flush=True)
    return 0 if all(ok for _, _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
