#!/usr/bin/env python3
"""Instructions per request, egret sidecar beside HAProxy (valgrind --tool=callgrind).

Timings on a shared 2-core machine move by 10-20 % between runs; instruction counts repeat to
a few per mille. Each subject forwards N sequential keep-alive requests (38 B bodies) from one
client to the same nginx backend, on one data-plane thread (egret `--concurrency 1`, HAProxy
`nbthread 1`); it runs twice, with 200 and with 2,200 requests, and the difference divided by
2,000 is the cost of one request without the start-up. See bench/NOTES.md ("Sixth pass").

    bench/callgrind.py            # needs valgrind, haproxy, nginx, openssl; target/release/egret
    EGRET=target/pgo/use/release/egret bench/callgrind.py    # another build (bench/build-pgo)
"""
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

EGRET = h.EGRET  # target/release/egret unless EGRET is set, as for bench/harness.py
PORT = h.PB + 95  # the subject under valgrind
ADMIN = h.PB + 96


def drive(port, target, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        c.request("GET", target, headers={"Host": "backend.test"})
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or not body.startswith(b"ok"):
            raise SystemExit(f"callgrind: {r.status} {body[:80]!r}")
    c.close()


def instructions(work, name, argv, target, n, stop_signal):
    out = os.path.join(work, f"{name}-{n}.callgrind")
    log = open(os.path.join(work, f"{name}-{n}.log"), "wb")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv,
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # Under valgrind the start-up takes seconds, not milliseconds.
        h.wait_port(PORT, p, timeout=120)
        drive(PORT, target, n)
    finally:
        p.send_signal(stop_signal)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    with open(out) as f:
        m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
    if not m:
        raise SystemExit(f"callgrind: no totals in {out}")
    return int(m.group(1))


def main():
    for tool in ("valgrind", "haproxy", "nginx", "openssl"):
        if subprocess.run(["sh", "-c", f"command -v {tool} || test -x /usr/sbin/{tool}"],
                          capture_output=True).returncode:
            raise SystemExit(f"callgrind: {tool} is missing")
    if not os.access(EGRET, os.X_OK):
        raise SystemExit(f"callgrind: {EGRET} is not built (cargo build --release -p egret)")
    os.environ["PATH"] += ":/usr/sbin:/sbin"
    work = tempfile.mkdtemp(prefix="egret-callgrind-")
    procs = h.Procs(work)
    try:
        pki = h.make_certs(work)
        backend = h.start_backend(procs, work, pki)
        h.wait_port(h.P["backend"], backend)
        sidecar = os.path.join(work, "sidecar.yaml")
        with open(sidecar, "w") as f:
            f.write(h.EGRET_SIDECAR_YAML.format(**dict(h.P, pki=pki)))
        hap_cfg = os.path.join(work, "haproxy.cfg")
        with open(hap_cfg, "w") as f:
            f.write(f"""global
    nbthread 1
{h.HAPROXY_DEFAULTS}frontend plain
    bind 127.0.0.1:{PORT}
    default_backend plain
backend plain
    server b 127.0.0.1:{h.P['backend']}
""")
        subjects = [
            ("egret", [EGRET, "sidecar", "--config", sidecar, "--namespace", "default",
                       "--service-account", "app", "--outbound-port", "0",
                       "--proxy-port", str(PORT), "--admin-port", str(ADMIN),
                       "--log-level", "warn", "--drain-seconds", "0", "--concurrency", "1"],
             "http://backend.test/small", signal.SIGINT),
            ("haproxy", ["haproxy", "-db", "-f", hap_cfg], "/small", signal.SIGTERM),
        ]
        result = {}
        for name, argv, target, sig in subjects:
            lo = instructions(work, name, argv, target, 200, sig)
            hi = instructions(work, name, argv, target, 2200, sig)
            result[name] = (hi - lo) / 2000
            print(f"{name:8s} {result[name]:9,.0f} instructions per request", flush=True)
        print(f"egret / HAProxy: {result['egret'] / result['haproxy']:.3f}")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
