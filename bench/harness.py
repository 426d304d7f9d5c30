#!/usr/bin/env python3
"""bench/run's driver (standard library only): egret beside direct, HAProxy and nginx on
loopback, subjects interleaved within each round, results as JSON, BENCHMARKS.md and SVG charts.

Protocol: ../shared/reference/perf-anchors.md §8. What each scenario measures is in
bench/README.md; the numbers of the last full run are in BENCHMARKS.md.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EGRET = os.environ.get("EGRET", os.path.join(ROOT, "target/release/egret"))
LOADGEN = os.environ.get("LOADGEN", os.path.join(ROOT, "target/release/egret-loadgen"))
PB = int(os.environ.get("BENCH_PORT_BASE", "18600"))
CLK = os.sysconf("SC_CLK_TCK")

# Ports (127.0.0.1).
P = dict(
    backend=PB, backend_h2c=PB + 1, backend_tls=PB + 2,
    haproxy=PB + 10, haproxy_tls_orig=PB + 11, haproxy_h2=PB + 12, haproxy_tls_term=PB + 13,
    haproxy_sni=PB + 14, haproxy_stats=PB + 15,
    nginx=PB + 20, nginx_tls_orig=PB + 21, nginx_h2=PB + 22, nginx_tls_term=PB + 23,
    egret=PB + 30, egret_admin=PB + 31,
    egret2=PB + 40, egret2_admin=PB + 41, gw_mesh=PB + 42, gw_admin=PB + 43,
    egw=PB + 50, egw_admin=PB + 51, egw_tls=PB + 52, egw_sni=PB + 53,
    squid=PB + 60,
)
SMALL_BODY = "ok" + "x" * 35 + "\n"  # 38 bytes
KIB_BODY = "y" * 1023 + "\n"


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


class Fail(Exception):
    pass


# ----- processes ---------------------------------------------------------------------------

class Procs:
    def __init__(self, work):
        self.work = work
        self.all = []

    def start(self, name, argv, **kw):
        out = open(os.path.join(self.work, name + ".log"), "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        self.all.append((name, p))
        return p

    def stop_all(self):
        for _, p in reversed(self.all):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 5
        for _, p in self.all:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def children(pid):
    """pid and its direct children (nginx workers, squid kids)."""
    out = [pid]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                    out.append(int(d))
            except (OSError, ValueError):
                pass
    return out


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError):
            pass
    return total / CLK


def memory_kib(pids):
    """(sum of VmRSS, sum of Pss) in KiB."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for l in f:
                    if l.startswith("VmRSS:"):
                        rss += int(l.split()[1])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for l in f:
                    if l.startswith("Pss:"):
                        pss += int(l.split()[1])
        except OSError:
            pass
    return rss, pss


def wait_port(port, proc=None, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Fail(f"process for port {port} exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Fail(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def run(argv, timeout=120, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise Fail(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


# ----- setup -------------------------------------------------------------------------------

def make_certs(work):
    """An ECDSA P-256 CA and a server certificate for the backend names (openssl)."""
    d = os.path.join(work, "pki")
    os.makedirs(d)
    sh = lambda *a: run(list(a))
    sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/ca.key")
    sh("openssl", "req", "-x509", "-new", "-key", f"{d}/ca.key", "-subj", "/CN=bench CA",
       "-days", "2", "-out", f"{d}/ca.pem")
    sh("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{d}/server.ec")
    sh("openssl", "pkcs8", "-topk8", "-nocrypt", "-in", f"{d}/server.ec", "-out", f"{d}/server.key")
    with open(f"{d}/ext.cnf", "w") as f:
        f.write("subjectAltName=DNS:backend.test,DNS:backend-tls.test,DNS:api.bench.test\n"
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "req", "-new", "-key", f"{d}/server.key", "-subj", "/CN=backend.test", "-out", f"{d}/server.csr")
    sh("openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
       "-CAcreateserial", "-days", "2", "-extfile", f"{d}/ext.cnf", "-out", f"{d}/server.pem")
    with open(f"{d}/server.pem") as a, open(f"{d}/ca.pem") as b, open(f"{d}/server-chain.pem", "w") as o:
        o.write(a.read() + b.read())
    with open(f"{d}/server-chain.pem") as a, open(f"{d}/server.key") as b, open(f"{d}/haproxy.pem", "w") as o:
        o.write(a.read() + b.read())
    # credentialName layout for the egret gateway's TLS server.
    os.makedirs(f"{d}/creds/bench-server")
    shutil.copy(f"{d}/server-chain.pem", f"{d}/creds/bench-server/tls.crt")
    shutil.copy(f"{d}/server.key", f"{d}/creds/bench-server/tls.key")
    return d


def nginx_conf(work, name, workers, body):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    conf = f"""daemon off;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
{body}
}}
"""
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def start_backend(procs, work, pki):
    body = f"""
    server {{
        listen 127.0.0.1:{P['backend']} reuseport backlog=8192;
        listen 127.0.0.1:{P['backend_h2c']} http2 backlog=8192;
        listen 127.0.0.1:{P['backend_tls']} ssl backlog=8192;
        ssl_certificate {pki}/server-chain.pem;
        ssl_certificate_key {pki}/server.key;
        ssl_protocols TLSv1.3;
        location = /small {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
        location = /1k {{ return 200 "{KIB_BODY.strip()}\\n"; }}
        location / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
    }}"""
    # One worker (perf-anchors §8): the backend is the same for every subject.
    conf = nginx_conf(work, "backend", 1, body)
    return procs.start("backend", ["nginx", "-c", conf, "-e", f"{work}/backend/error.log"])


def start_nginx_proxy(procs, work, pki):
    body = f"""
    upstream plain {{ server 127.0.0.1:{P['backend']}; keepalive 64; }}
    upstream tls {{ server 127.0.0.1:{P['backend_tls']}; keepalive 64; }}
    proxy_http_version 1.1;
    # Both headers here, and none in the locations: nginx inherits proxy_set_header only into
    # levels that define none, and without `Connection ""` upstream keep-alive is off.
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_buffering on;
    server {{
        listen 127.0.0.1:{P['nginx']} backlog=8192;
        listen 127.0.0.1:{P['nginx_h2']} http2 backlog=8192;
        location / {{ proxy_pass http://plain; }}
    }}
    server {{
        listen 127.0.0.1:{P['nginx_tls_term']} ssl backlog=8192;
        ssl_certificate {pki}/server-chain.pem;
        ssl_certificate_key {pki}/server.key;
        ssl_protocols TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {{ proxy_pass http://plain; }}
    }}
    server {{
        listen 127.0.0.1:{P['nginx_tls_orig']} backlog=8192;
        location / {{
            proxy_pass https://tls;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {pki}/ca.pem;
            proxy_ssl_server_name on;
            proxy_ssl_name backend-tls.test;
            proxy_ssl_session_reuse on;
            proxy_ssl_protocols TLSv1.3;
        }}
    }}"""
    conf = nginx_conf(work, "nginx", 2, body)
    return procs.start("nginx", ["nginx", "-c", conf, "-e", f"{work}/nginx/error.log"])


# HTTP keep-alive both ways and upstream connection reuse (also bench/callgrind.py's).
HAPROXY_DEFAULTS = """defaults
    mode http
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
    http-reuse always
    option http-keep-alive
"""


def start_haproxy(procs, work, pki):
    cfg = f"""global
    nbthread 2
    maxconn 8000
    tune.ssl.default-dh-param 2048
    stats socket {work}/haproxy.sock
{HAPROXY_DEFAULTS}frontend plain
    bind 127.0.0.1:{P['haproxy']} backlog 8192
    bind 127.0.0.1:{P['haproxy_h2']} proto h2 backlog 8192
    bind 127.0.0.1:{P['haproxy_tls_term']} ssl crt {pki}/haproxy.pem ssl-min-ver TLSv1.3 no-tls-tickets backlog 8192
    default_backend plain
backend plain
    server b 127.0.0.1:{P['backend']}
frontend tls_orig
    bind 127.0.0.1:{P['haproxy_tls_orig']} backlog 8192
    default_backend tls_orig
backend tls_orig
    server b 127.0.0.1:{P['backend_tls']} ssl verify required ca-file {pki}/ca.pem sni str(backend-tls.test) alpn http/1.1
frontend sni
    mode tcp
    bind 127.0.0.1:{P['haproxy_sni']} backlog 8192
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend sni_backend if {{ req_ssl_sni -i backend.test }}
backend sni_backend
    mode tcp
    server b 127.0.0.1:{P['backend_tls']}
"""
    path = os.path.join(work, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(cfg)
    run(["haproxy", "-c", "-f", path])
    return procs.start("haproxy", ["haproxy", "-db", "-f", path])


def start_squid(procs, work):
    d = os.path.join(work, "squid")
    os.makedirs(d)
    cfg = f"""http_port 127.0.0.1:{P['squid']}
pid_filename {d}/squid.pid
cache deny all
cache_mem 8 MB
cache_dir null /tmp
access_log none
cache_log {d}/cache.log
cache_store_log none
acl localhost src 127.0.0.1/32
acl SSL_ports port {P['backend_tls']}
acl CONNECT method CONNECT
http_access allow localhost
http_access deny all
shutdown_lifetime 1 seconds
workers 1
"""
    path = os.path.join(d, "squid.conf")
    with open(path, "w") as f:
        f.write(cfg)
    user = []
    if os.geteuid() == 0:
        # squid drops privileges to 'proxy'; its files must be writable by it.
        subprocess.run(["chown", "-R", "proxy:proxy", d], check=False)
    return procs.start("squid", ["squid", "-N", "-f", path] + user)


EGRET_SIDECAR_YAML = """apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: default}}
spec:
  hosts: [backend.test]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: tls, protocol: TLS}}
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend}, tls: {backend_tls}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend-tls, namespace: default}}
spec:
  hosts: [backend-tls.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend_tls}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: backend-tls, namespace: default}}
spec:
  host: backend-tls.test
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {pki}/ca.pem, sni: backend-tls.test}}
"""

# Two hops: sidecar -> (mutual TLS mesh tunnel) -> egress gateway -> backend (plain HTTP).
EGRET_GATEWAY_YAML = """apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {gw_mesh}}}, labels: {{istio: egressgateway}}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [backend.test]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: default}}
spec:
  hosts: [backend.test]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend-through-egress-gateway, namespace: default}}
spec:
  hosts: [backend.test]
  gateways: [mesh, istio-system/istio-egressgateway]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route: [{{destination: {{host: istio-egressgateway.istio-system.svc.cluster.local, port: {{number: 80}}}}}}]
  - match: [{{gateways: [istio-system/istio-egressgateway], port: 80}}]
    route: [{{destination: {{host: backend.test, port: {{number: 80}}}}}}]
"""

# A one-hop egress gateway taking clients directly (--allow-direct): HTTP/2 (h2c) in, TLS
# termination (full TLS 1.3 handshakes) and TLS passthrough by SNI.
EGRET_EDGE_YAML = """apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    outboundTrafficPolicy: {{mode: REGISTRY_ONLY}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: istio-system}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [backend.test]
  - port: {{number: 8443, name: https, protocol: HTTPS}}
    hosts: [backend.test]
    tls: {{mode: SIMPLE, credentialName: bench-server}}
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [backend.test]
    tls: {{mode: PASSTHROUGH}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: istio-system}}
spec:
  hosts: [backend.test]
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  - {{number: 443, name: tls, protocol: TLS}}
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {backend}, tls: {backend_tls}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: istio-system}}
spec:
  hosts: [backend.test]
  gateways: [edge]
  http:
  - route: [{{destination: {{host: backend.test, port: {{number: 80}}}}}}]
  tls:
  - match: [{{port: 443, sniHosts: [backend.test]}}]
    route: [{{destination: {{host: backend.test, port: {{number: 443}}}}}}]
"""


def start_egret(procs, work, pki):
    fmt = dict(P, pki=pki)
    for name, text in (("sidecar.yaml", EGRET_SIDECAR_YAML), ("twohop.yaml", EGRET_GATEWAY_YAML),
                       ("edge.yaml", EGRET_EDGE_YAML)):
        with open(os.path.join(work, name), "w") as f:
            f.write(text.format(**fmt))
        run([EGRET, "validate", os.path.join(work, name)])
    ca = os.path.join(work, "meshca")
    run([EGRET, "ca", "init", "--dir", ca])
    run([EGRET, "ca", "issue", "--dir", ca, "--namespace", "istio-system", "--service-account",
         "istio-egressgateway-service-account", "--out", f"{work}/gw-id"])
    run([EGRET, "ca", "issue", "--dir", ca, "--namespace", "default", "--service-account", "app",
         "--out", f"{work}/app-id"])
    # Access log off (warn), as the references run without one (perf-anchors §8).
    quiet = ["--log-level", "warn", "--drain-seconds", "1"]
    out = {}
    out["egret"] = procs.start("egret-sidecar", [
        EGRET, "sidecar", "--config", f"{work}/sidecar.yaml", "--namespace", "default",
        "--service-account", "app", "--outbound-port", "0", "--proxy-port", str(P["egret"]),
        "--admin-port", str(P["egret_admin"])] + quiet)
    out["gateway"] = procs.start("egret-gateway", [
        EGRET, "gateway", "--config", f"{work}/twohop.yaml", "--namespace", "istio-system",
        "--labels", "istio=egressgateway", "--identity-dir", f"{work}/gw-id",
        "--listen", f"80=127.0.0.1:{P['gw_mesh']}", "--admin-port", str(P["gw_admin"])] + quiet)
    out["egret2"] = procs.start("egret-sidecar2", [
        EGRET, "sidecar", "--config", f"{work}/twohop.yaml", "--namespace", "default",
        "--service-account", "app", "--identity-dir", f"{work}/app-id", "--outbound-port", "0",
        "--proxy-port", str(P["egret2"]), "--admin-port", str(P["egret2_admin"])] + quiet)
    out["edge"] = procs.start("egret-edge", [
        EGRET, "gateway", "--config", f"{work}/edge.yaml", "--namespace", "istio-system",
        "--labels", "istio=egressgateway", "--allow-direct", "--credentials-dir", f"{pki}/creds",
        "--listen", f"80=127.0.0.1:{P['egw']}", "--listen", f"8443=127.0.0.1:{P['egw_tls']}",
        "--listen", f"443=127.0.0.1:{P['egw_sni']}", "--admin-port", str(P["egw_admin"])] + quiet)
    return out


# ----- subjects ----------------------------------------------------------------------------

class Subject:
    """Something that forwards HTTP/1.1 to the backend: where to send, what to send, whose CPU
    and memory count."""

    def __init__(self, name, port, pids, absolute=False, host="backend.test"):
        self.name, self.port, self.pids, self.absolute, self.host = name, port, pids, absolute, host

    def target(self, path):
        return f"http://{self.host}{path}" if self.absolute else path


def check_serves(s, path="/small"):
    """One request must answer 200 with the backend's body (the --quick failure condition)."""
    with socket.create_connection(("127.0.0.1", s.port), timeout=5) as c:
        c.sendall(f"GET {s.target(path)} HTTP/1.1\r\nHost: {s.host}\r\nConnection: close\r\n\r\n".encode())
        c.settimeout(10)
        data = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            data += b
    text = data.decode(errors="replace")
    want = SMALL_BODY if path == "/small" else KIB_BODY
    if not text.startswith("HTTP/1.1 200") or not text.endswith(want):
        raise Fail(f"{s.name} does not serve {path}: {text[:300]!r}")


WRK_LUA = """wrk.path = os.getenv("BENCH_TARGET")
wrk.headers["Host"] = os.getenv("BENCH_HOST")
"""


def wrk(work, s, path, conns, seconds, url=None):
    lua = os.path.join(work, "target.lua")
    if not os.path.exists(lua):
        with open(lua, "w") as f:
            f.write(WRK_LUA)
    env = dict(os.environ, BENCH_TARGET=s.target(path), BENCH_HOST=s.host)
    url = url or f"http://127.0.0.1:{s.port}"
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", lua, url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, env=env)
    if r.returncode != 0:
        raise Fail(f"wrk {s.name}: {r.stdout.strip()} {r.stderr.strip()}")
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    total = re.search(r"(\d+) requests in", r.stdout)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", r.stdout)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(x) for x in errs.groups()) if errs else 0)
    if not m or not total:
        raise Fail(f"wrk {s.name}: cannot parse: {r.stdout}")
    if int(total.group(1)) == 0 or errors > int(total.group(1)) // 100:
        raise Fail(f"{s.name} failed to serve under wrk ({errors} errors of {total.group(1)}):\n{r.stdout}")
    return dict(rps=float(m.group(1)), requests=int(total.group(1)), errors=errors)


def h2load(args, timeout=120):
    r = subprocess.run(["h2load"] + args, capture_output=True, text=True, timeout=timeout)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", r.stdout)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", r.stdout)
    if r.returncode != 0 or not m or not rps:
        raise Fail(f"h2load {' '.join(args)}: {r.stdout[-1500:]} {r.stderr[-500:]}")
    total, ok = int(m.group(1)), int(m.group(4))
    return dict(rps=float(rps.group(1)), requests=total, succeeded=ok, failed=total - ok)


def loadgen_rate(s, path, rate, conns, seconds):
    r = run([LOADGEN, "rate", "--addr", f"127.0.0.1:{s.port}", "--target", s.target(path),
             "--host", s.host, "--rate", str(rate), "--connections", str(conns),
             "--duration", str(seconds)], timeout=seconds + 60)
    out = json.loads(r.stdout)
    if out["ok"] == 0 or out["errors"] > out["requests"] // 100:
        raise Fail(f"{s.name} failed to serve at {rate} rps: {out}")
    return out


def measured(s, fn):
    """Runs fn() and adds the subject's CPU-seconds over it."""
    pids = s.pids()
    c0, t0 = cpu_seconds(pids), time.time()
    out = fn()
    out["cpu_s"] = cpu_seconds(pids) - c0
    out["wall_s"] = time.time() - t0
    done = out.get("requests") if "rps" in out else out.get("ok")
    if "succeeded" in out:
        done = out["succeeded"]
    out["cpu_s_per_10k"] = out["cpu_s"] / done * 10000 if done else None
    return out


def idle_memory(s, n):
    """RSS before and after n idle keep-alive connections (one request each)."""
    pids = s.pids()
    before = memory_kib(pids)
    p = subprocess.Popen([LOADGEN, "idle", "--addr", f"127.0.0.1:{s.port}", "--target", s.target("/small"),
                          "--host", s.host, "--connections", str(n)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("ready"):
        p.kill()
        raise Fail(f"{s.name}: idle connections: {line} {p.stderr.read()[-500:]}")
    time.sleep(1.0)
    after = memory_kib(pids)
    p.stdin.close()
    p.wait(30)
    time.sleep(0.5)
    return dict(connections=n, rss_before_kib=before[0], rss_after_kib=after[0],
                pss_before_kib=before[1], pss_after_kib=after[1],
                rss_per_1k_kib=(after[0] - before[0]) * 1000 / n,
                pss_per_1k_kib=(after[1] - before[1]) * 1000 / n)


# ----- the run -----------------------------------------------------------------------------

def versions():
    def first(argv, pat=None):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            text = (r.stdout + r.stderr).strip().splitlines()
            return text[0] if text else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for l in f:
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    rev = first(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        nproc=os.cpu_count(), cpu=cpu, kernel=platform.release(),
        egret=f"{first([EGRET, '--version'])} (git {rev})",
        # bench/run says which build it measures; otherwise whatever EGRET points at.
        egret_build=os.environ.get("EGRET_BUILD") or (
            f"EGRET={EGRET}" if "EGRET" in os.environ else "release (`cargo build --release`)"),
        haproxy=first(["haproxy", "-v"]), nginx=first(["nginx", "-v"]),
        squid=first(["squid", "-v"]), wrk=first(["wrk", "-v"]), h2load=first(["h2load", "--version"]),
        openssl=first(["openssl", "version"]),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-render", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--only", help="comma-separated scenarios to run (h1, latency, tls_origination, "
                    "http2, tls_handshakes, tls_passthrough, connect, memory); implies --no-render "
                    "and writes to a temporary file unless --out is given (for profiling work)")
    a = ap.parse_args()
    only = set(a.only.split(",")) if a.only else None

    def want(name):
        return only is None or name in only
    quick = a.quick
    rounds = a.rounds or (1 if quick else 3)
    D = 1 if quick else 5          # seconds per measurement
    WARM = 1 if quick else 2       # discarded warm-up per subject (whole seconds: wrk -d)
    IDLE_N = 100 if quick else 1000
    RATES = [(1000, 16)] if quick else [(1000, 16), (20000, 64)]

    work = tempfile.mkdtemp(prefix="egret-bench-")
    procs = Procs(work)
    results = dict(machine=versions(), quick=quick, rounds=rounds, seconds=D, scenarios={})
    res = results["scenarios"]
    try:
        pki = make_certs(work)
        backend = start_backend(procs, work, pki)
        hap = start_haproxy(procs, work, pki)
        ngx = start_nginx_proxy(procs, work, pki)
        eg = start_egret(procs, work, pki)
        sq = start_squid(procs, work)
        for port, proc in ((P["backend"], backend), (P["haproxy"], hap), (P["nginx"], ngx),
                           (P["egret"], eg["egret"]), (P["gw_mesh"], eg["gateway"]),
                           (P["egret2"], eg["egret2"]), (P["egw"], eg["edge"]), (P["squid"], sq)):
            wait_port(port, proc)
        pid = lambda p: (lambda: children(p.pid))
        subjects = [
            Subject("direct", P["backend"], lambda: []),
            Subject("haproxy", P["haproxy"], pid(hap)),
            Subject("nginx", P["nginx"], pid(ngx)),
            Subject("egret", P["egret"], pid(eg["egret"]), absolute=True),
            Subject("egret-gw", P["egret2"], lambda: [eg["egret2"].pid, eg["gateway"].pid], absolute=True),
        ]
        by_name = {s.name: s for s in subjects}
        backend_pids = pid(backend)
        for s in subjects:
            check_serves(s, "/small")
            check_serves(s, "/1k")
        log(f"all subjects serve; work dir {work}")
        # Idle memory right after start and one request (before any load).
        res["memory_start"] = {s.name: dict(zip(("rss_kib", "pss_kib"), memory_kib(s.pids())))
                               for s in subjects[1:]}

        def interleaved(key, subs, fn):
            """fn(subject) -> dict, for every subject in every round, order rotated per round."""
            out = res.setdefault(key, {s.name: [] for s in subs})
            for r in range(rounds):
                order = subs[r % len(subs):] + subs[:r % len(subs)]
                for s in order:
                    out[s.name].append(fn(s))
                    log(f"{key} round {r + 1} {s.name}: " + ", ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in out[s.name][-1].items() if k in ("rps", "p50_us", "p99_us", "cpu_s_per_10k", "achieved_rps")))

        # S1 + S3: H1 keep-alive max throughput, CPU per request at saturation.
        for body in ("small", "1k") if want("h1") else ():
            def s1(s, body=body):
                wrk(work, s, "/" + body, 64, WARM)
                b0 = cpu_seconds(backend_pids())
                out = measured(s, lambda: wrk(work, s, "/" + body, 64, D))
                out["backend_cpu_s"] = cpu_seconds(backend_pids()) - b0
                return out
            interleaved(f"h1_throughput_{body}", subjects, s1)

        # S2 + S3: fixed-rate latency (open loop, coordinated omission corrected), CPU at 1k rps.
        for rate, conns in RATES if want("latency") else ():
            def s2(s, rate=rate, conns=conns):
                return measured(s, lambda: loadgen_rate(s, "/small", rate, conns, D))
            interleaved(f"latency_{rate}", subjects, s2)

        # S6: TLS origination (plain HTTP in, TLS to the backend, upstream connections reused).
        tls_subjects = [
            Subject("haproxy", P["haproxy_tls_orig"], pid(hap)),
            Subject("nginx", P["nginx_tls_orig"], pid(ngx)),
            Subject("egret", P["egret"], pid(eg["egret"]), absolute=True, host="backend-tls.test"),
        ]
        for s in tls_subjects:
            check_serves(s)

        def s6(s):
            wrk(work, s, "/small", 64, WARM)
            return measured(s, lambda: wrk(work, s, "/small", 64, D))
        if want("tls_origination"):
            interleaved("tls_origination", tls_subjects, s6)

        # S7: HTTP/2 (h2c in; the proxies speak HTTP/1.1 keep-alive to the backend, except
        # direct). egret: the one-hop gateway taking clients directly.
        h2_subjects = [
            Subject("direct", P["backend_h2c"], lambda: []),
            Subject("haproxy", P["haproxy_h2"], pid(hap)),
            Subject("nginx", P["nginx_h2"], pid(ngx)),
            Subject("egret", P["egw"], pid(eg["edge"])),
        ]

        def s7(s):
            url = f"http://127.0.0.1:{s.port}/small"
            common = ["-c", "16", "-m", "32", "-t", "1", "-H", ":authority: backend.test"]
            h2load(common + ["-D", str(max(1, int(WARM))), url])
            out = measured(s, lambda: h2load(common + ["-D", str(D), url]))
            if out["failed"] > out["requests"] // 100:
                raise Fail(f"h2 {s.name}: {out}")
            return out
        if want("http2"):
            interleaved("http2", h2_subjects, s7)

        # S5: full TLS 1.3 handshakes (ECDSA P-256), one request per connection, per core-second
        # of the proxy (TLS termination; no session resumption).
        hs_subjects = [
            Subject("haproxy", P["haproxy_tls_term"], pid(hap)),
            Subject("nginx", P["nginx_tls_term"], pid(ngx)),
            Subject("egret", P["egw_tls"], pid(eg["edge"])),
        ]
        HS_N = 300 if quick else 3000

        def s5(s):
            url = "https://backend.test/small"
            args = ["--h1", "-t", "1", "-n", str(HS_N), "-c", str(HS_N), "-r", str(HS_N // (D or 1)),
                    "--connect-to", f"127.0.0.1:{s.port}", url]
            out = measured(s, lambda: h2load(args))
            if out["failed"] > out["requests"] // 100:
                raise Fail(f"TLS termination {s.name}: {out}")
            out["handshakes_per_core_s"] = out["succeeded"] / out["cpu_s"] if out["cpu_s"] else None
            return out
        if want("tls_handshakes"):
            interleaved("tls_handshakes", hs_subjects, s5)

        # S8: TLS passthrough by SNI: new connections per second (full handshake with the
        # backend through the proxy; one request each).
        sni_subjects = [
            Subject("direct", P["backend_tls"], lambda: []),
            Subject("haproxy", P["haproxy_sni"], pid(hap)),
            Subject("egret", P["egw_sni"], pid(eg["edge"])),
        ]

        def s8(s):
            url = "https://backend.test/small"
            args = ["--h1", "-t", "1", "-n", str(HS_N), "-c", str(HS_N), "-r", str(HS_N // (D or 1)),
                    "--connect-to", f"127.0.0.1:{s.port}", url]
            out = measured(s, lambda: h2load(args))
            if out["failed"] > out["requests"] // 100:
                raise Fail(f"TLS passthrough {s.name}: {out}")
            out["conns_per_core_s"] = out["succeeded"] / out["cpu_s"] if out["cpu_s"] else None
            return out
        if want("tls_passthrough"):
            interleaved("tls_passthrough", sni_subjects, s8)

        # S9: CONNECT egress (an app's HTTPS_PROXY): CONNECT, TLS with the origin through the
        # tunnel, one request, close; squid is the classic forward proxy.
        connect_subjects = [
            Subject("squid", P["squid"], pid(sq)),
            Subject("egret", P["egret"], pid(eg["egret"])),
        ]
        connect_to = {"squid": f"127.0.0.1:{P['backend_tls']}", "egret": "127.0.0.1:443"}

        def s9(s):
            def go():
                r = run([LOADGEN, "connect", "--addr", f"127.0.0.1:{s.port}", "--host", connect_to[s.name],
                         "--sni", "backend.test", "--ca", f"{pki}/ca.pem", "--target", "/small",
                         "--connections", "8", "--duration", str(D)], timeout=D + 60)
                out = json.loads(r.stdout)
                if out["ok"] == 0 or out["errors"] > out["requests"] // 100:
                    raise Fail(f"CONNECT through {s.name} failed: {out}")
                out["rps"] = out["tunnels_per_s"]
                out["requests"] = out["ok"]
                return out
            out = measured(s, go)
            out["tunnels_per_core_s"] = out["ok"] / out["cpu_s"] if out["cpu_s"] else None
            return out
        if want("connect"):
            interleaved("connect", connect_subjects, s9)

        # S4: memory, idle and per 1,000 idle keep-alive connections (once: deterministic
        # enough, and slow).
        mem = res.setdefault("memory", {})
        for s in subjects[1:] if want("memory") else ():
            mem[s.name] = idle_memory(s, IDLE_N)
            log(f"memory {s.name}: {mem[s.name]}")

        for name, p in procs.all:
            if p.poll() is not None:
                raise Fail(f"{name} exited during the run ({p.returncode}); see {work}/{name}.log")
    except Fail as e:
        log(f"FAILED: {e}")
        log(f"logs in {work}")
        procs.stop_all()
        return 1
    finally:
        procs.stop_all()

    date = results["machine"]["date"][:10]
    # A smoke run's numbers mean nothing: they stay out of the repository.
    default = (os.path.join(tempfile.gettempdir(), "egret-bench-quick.json") if quick or only
               else os.path.join(ROOT, "bench/results", f"{date}.json"))
    out = a.out or default
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    log(f"wrote {out}")
    if not quick and not only and not a.no_render:
        import render
        render.render(results, os.path.relpath(out, ROOT))
        log("wrote BENCHMARKS.md and bench/charts/")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
