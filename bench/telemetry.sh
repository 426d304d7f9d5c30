#!/usr/bin/env bash
# The cost of observability, end to end (issue 6): two `egret gateway` processes on loopback
# routing HTTP `api.test` to the same local nginx. "off" has no access log and no tracing;
# "on" writes Istio's TEXT access log to a file (meshConfig.accessLogFile) and traces every
# request (defaultConfig.tracing.sampling: 100), exporting the spans over OTLP/HTTP to a local
# collector (bench/otlp_sink.py: a real OTLP/HTTP endpoint that counts what it receives).
# Istio's standard metrics (istio_requests_total, the duration and size histograms) cannot be
# turned off: both gateways keep them, so "off" is the metrics-only baseline.
# wrk sends the same request the same number of times to each, interleaved over several
# rounds: once with one connection (latency without queueing) and once with many
# (throughput). Reported: latency percentiles (wrk), CPU-seconds per 10,000 requests of each
# gateway process (utime+stime of all its threads, access-log writer and span exporter
# included, from /proc/<pid>/stat), the ratio, and what the "on" gateway logged and exported.
#
# Usage: bench/telemetry.sh [--quick] [--rounds N] [--requests N] [--load-requests N]
#                           [--connections N] [--no-build] [--out FILE] [--keep]
#
#   --quick            1 round, 2,000 + 20,000 requests: a smoke run of a few seconds
#   --rounds N         rounds (default 5); the order of the two gateways alternates per round
#   --requests N       requests per latency run, 1 connection (default 20000)
#   --load-requests N  requests per load run (default 200000)
#   --connections N    connections of the load run (default 32)
#   --no-build         use target/release/egret as it is (or $EGRET)
#   --out FILE         the JSON result (default bench/results/telemetry-<UTC date>.json)
#   --keep             keep the work directory (configs, access log, logs)
#
# Needs: cargo, wrk, nginx, curl, python3 (standard library only). Debian:
#   apt-get install wrk nginx-light curl python3
# Ports: 127.0.0.1:$BENCH_PORT_BASE..+5 (default 18580..18585) must be free.
# See bench/README.md.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

rounds=5
lat_requests=20000
load_requests=200000
connections=32
build=1
out=""
keep=0
quick=0

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; rounds=1; lat_requests=2000; load_requests=20000 ;;
        --rounds) rounds=$2; shift ;;
        --requests) lat_requests=$2; shift ;;
        --load-requests) load_requests=$2; shift ;;
        --connections) connections=$2; shift ;;
        --no-build) build=0 ;;
        --out) out=$2; shift ;;
        --keep) keep=1 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "telemetry.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for n in "$rounds" "$lat_requests" "$load_requests" "$connections"; do
    [ "$n" -ge 1 ] 2>/dev/null || { echo "telemetry.sh: counts must be numbers >= 1 (got $n)" >&2; exit 2; }
done

missing=""
for p in wrk nginx curl python3; do
    command -v "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "telemetry.sh: missing:$missing (Debian: apt-get install wrk nginx-light curl python3)" >&2
    exit 2
fi

base=${BENCH_PORT_BASE:-18580}
up_port=$base
off_port=$((base + 1))
on_port=$((base + 2))
off_admin=$((base + 3))
on_admin=$((base + 4))
collector_port=$((base + 5))

if [ "$build" = 1 ]; then
    echo "== cargo build --release -p egret"
    (cd "$root" && cargo build --release -p egret)
fi
egret=${EGRET:-$root/target/release/egret}
[ -x "$egret" ] || { echo "telemetry.sh: $egret not found (build it, or set EGRET)" >&2; exit 2; }

work=$(mktemp -d /tmp/egret-telemetry-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if [ "$keep" = 1 ]; then
        echo "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# ----- configuration -----------------------------------------------------------------------

mkdir -p "$work/off" "$work/on" "$work/logs"
access_log="$work/logs/access.log"
cat >"$work/off/gateway.yaml" <<EOF
# The egress gateway serves http://api.test and forwards it to the local nginx.
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [api.test]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.test]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: $up_port}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api-through-egress-gateway, namespace: default}
spec:
  hosts: [api.test]
  gateways: [istio-system/istio-egressgateway]
  http:
  - match: [{gateways: [istio-system/istio-egressgateway], port: 80}]
    route: [{destination: {host: api.test, port: {number: 80}}}]
EOF
cp "$work/off/gateway.yaml" "$work/on/gateway.yaml"
cat >"$work/on/mesh.yaml" <<EOF
# Istio's access log (default TEXT format) to a file, and every request traced to the local
# OTLP/HTTP collector.
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {name: telemetry-on, namespace: istio-system}
spec:
  meshConfig:
    accessLogFile: $access_log
    accessLogEncoding: TEXT
    enableTracing: true
    defaultConfig: {tracing: {sampling: 100}}
    defaultProviders: {tracing: [otel]}
    extensionProviders:
    - name: otel
      opentelemetry:
        service: 127.0.0.1
        port: $collector_port
        http: {path: /v1/traces}
EOF

echo "== egret validate"
for d in off on; do
    if ! "$egret" validate "$work/$d" >"$work/validate-$d.txt" 2>&1; then
        cat "$work/validate-$d.txt" >&2
        echo "telemetry.sh: the generated $d configuration does not validate" >&2
        exit 1
    fi
    echo "$d: $(cat "$work/$d"/*.yaml | grep -c '^kind:') resources, $(grep -c . "$work/validate-$d.txt" || true) diagnostic line(s)"
done

# ----- processes ---------------------------------------------------------------------------

mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {
        listen 127.0.0.1:$up_port;
        location / { return 200 "ok\n"; }
    }
}
EOF
nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
pids+=($!)

python3 "$here/otlp_sink.py" "$collector_port" 2>"$work/collector.log" &
pids+=($!)
collector_pid=$!

# --log-level warn: no diagnostic `access:` line per request on stderr in either gateway (the
# Istio access log is the thing measured).
start_gateway() { # name port admin
    "$egret" gateway --config "$work/$1" --namespace istio-system --labels istio=egressgateway \
        --listen "80=127.0.0.1:$2" --admin-port "$3" --allow-direct --log-level warn \
        2>"$work/$1.log" &
    pids+=($!)
    eval "${1}_pid=$!"
}
start_gateway off "$off_port" "$off_admin"
start_gateway on "$on_port" "$on_admin"

url() { echo "http://127.0.0.1:$1/v1/orders/42"; }
status() { # port
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Host: api.test' "$(url "$1")" || true
}

wait_ready() { # name port
    local i
    for i in $(seq 1 150); do
        if [ "$(status "$2")" = 200 ]; then
            return 0
        fi
        sleep 0.2
    done
    echo "telemetry.sh: the $1 gateway does not answer 200; its log:" >&2
    tail -20 "$work/$1.log" >&2
    exit 1
}
collector_stats() { curl -s --max-time 5 "http://127.0.0.1:$collector_port/stats"; }
for i in $(seq 1 50); do
    collector_stats >/dev/null 2>&1 && break
    sleep 0.1
done
collector_stats >/dev/null || { echo "telemetry.sh: the OTLP sink does not answer" >&2; cat "$work/collector.log" >&2; exit 1; }
wait_ready off "$off_port"
wait_ready on "$on_port"

metric() { # admin-port name: the value of an unlabelled series (0 when absent)
    curl -s --max-time 5 "http://127.0.0.1:$1/stats/prometheus" \
        | awk -v n="$2" '$1 == n {v = $2} END {print v == "" ? 0 : v}'
}
istio_requests() { # admin-port: sum of istio_requests_total over its series
    curl -s --max-time 5 "http://127.0.0.1:$1/stats/prometheus" \
        | awk '/^istio_requests_total[{ ]/ {s += $NF} END {printf "%d\n", s}'
}
spans_received() { collector_stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["spans"])'; }
log_lines() { if [ -e "$access_log" ]; then wc -l <"$access_log"; else echo 0; fi; }
# Wait until f (a function printing a number) reaches at least `want` (spans are batched
# and flushed every second; the access log is written by a thread).
wait_at_least() { # want f...
    local want=$1 i v
    shift
    for i in $(seq 1 100); do
        v=$("$@")
        [ "$v" -ge "$want" ] && { echo "$v"; return 0; }
        sleep 0.1
    done
    echo "$v"
}
check() { # what want got
    if [ "$2" != "$3" ]; then
        echo "telemetry.sh: $1: expected $2, got $3" >&2
        exit 1
    fi
}

# ----- the "on" gateway really logs and exports, the "off" one does neither ---------------

probe=20
echo "== checks: $probe requests to each gateway"
# Baselines once the readiness requests have been logged and exported.
sleep 2
ready_on=$(istio_requests "$on_admin")
ready_off=$(istio_requests "$off_admin")
lines0=$(wait_at_least "$ready_on" log_lines)
spans0=$(wait_at_least "$ready_on" spans_received)
for i in $(seq 1 $probe); do
    check "off gateway, request $i" 200 "$(status "$off_port")"
done
sleep 2 # more than the exporter's 1 s flush interval: an "off" span would have arrived
check "off gateway: access-log lines written (egret_access_log_lines_total)" 0 "$(metric "$off_admin" egret_access_log_lines_total)"
check "off gateway: spans exported (egret_trace_spans_exported_total)" 0 "$(metric "$off_admin" egret_trace_spans_exported_total)"
check "off gateway: spans received by the collector" "$spans0" "$(spans_received)"
check "off gateway: lines in the access log" "$lines0" "$(log_lines)"
check "off gateway: istio_requests_total (metrics are always on)" $((ready_off + probe)) "$(istio_requests "$off_admin")"
for i in $(seq 1 $probe); do
    check "on gateway, request $i" 200 "$(status "$on_port")"
done
lines=$(wait_at_least $((lines0 + probe)) log_lines)
check "on gateway: lines in the access log" $((lines0 + probe)) "$lines"
spans=$(wait_at_least $((spans0 + probe)) spans_received)
check "on gateway: spans received by the collector" $((spans0 + probe)) "$spans"
grep -q '"GET /v1/orders/42 HTTP/1.1" 200 - via_upstream' "$access_log" \
    || { tail -3 "$access_log" >&2; echo "telemetry.sh: unexpected access-log line" >&2; exit 1; }
check "on gateway: istio_requests_total" $((ready_on + probe)) "$(istio_requests "$on_admin")"
echo "off: 200 x $probe, no access-log line, no span; on: 200 x $probe, $probe access-log lines, $probe spans at the collector"
echo "  e.g. $(tail -1 "$access_log")"

# ----- load --------------------------------------------------------------------------------

cat >"$work/count.lua" <<'EOF'
-- wrk script: stop after N responses (the first argument after --) and count responses that
-- are not 200. wrk has no request count, and thread:stop() only ends the thread's loop: wrk's
-- main thread sleeps for the whole -d duration unless interrupted. So the thread also creates
-- the file named by the second argument, and telemetry.sh then interrupts wrk (SIGINT, as
-- Ctrl-C). The throughput is timed here, from the thread's start to the Nth response.
local ffi = require("ffi")
ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

n = 0
limit = 0
non200 = 0
elapsed_us = 0
local started = 0
local done_file = nil
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    limit = tonumber(args[1]) or 0
    done_file = args[2]
    started = now_us()
end

function response(status, headers, body)
    n = n + 1
    if status ~= 200 then
        non200 = non200 + 1
    end
    if n == limit then
        elapsed_us = now_us() - started
        wrk.thread:stop()
        if done_file then
            local f = io.open(done_file, "w")
            if f then f:close() end
        end
    end
end

function done(summary, latency, requests)
    local bad, elapsed = 0, 0
    for _, t in ipairs(threads) do
        bad = bad + t:get("non200")
        elapsed = math.max(elapsed, t:get("elapsed_us"))
    end
    local e = summary.errors
    io.write(string.format(
        'RESULT {"requests":%d,"elapsed_us":%d,"non200":%d,"errors":%d,'
            .. '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
        summary.requests, elapsed, bad,
        e.connect + e.read + e.write + e.timeout,
        latency.mean, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency:percentile(99.9), latency.max))
end
EOF

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

runs="$work/runs.jsonl"
: >"$runs"
run() { # round gateway mode connections requests
    local gw=$2 port pid before after cbefore cafter line wpid
    if [ "$gw" = off ]; then port=$off_port; pid=$off_pid; else port=$on_port; pid=$on_pid; fi
    rm -f "$work/wrk.done"
    before=$(cpu_ticks "$pid")
    cbefore=$(cpu_ticks "$collector_pid")
    wrk -t1 -c"$4" -d3600s --timeout 5s -s "$work/count.lua" \
        -H 'Host: api.test' "$(url "$port")" \
        -- "$5" "$work/wrk.done" >"$work/wrk.out" 2>&1 &
    wpid=$!
    while kill -0 "$wpid" 2>/dev/null; do
        if [ -e "$work/wrk.done" ]; then
            kill -INT "$wpid" 2>/dev/null || true
        fi
        sleep 0.05
    done
    wait "$wpid" || true
    after=$(cpu_ticks "$pid")
    cafter=$(cpu_ticks "$collector_pid")
    line=$(grep '^RESULT ' "$work/wrk.out" | cut -d' ' -f2- || true)
    [ -n "$line" ] || { cat "$work/wrk.out" >&2; echo "telemetry.sh: wrk gave no result" >&2; exit 1; }
    printf '{"round":%d,"gateway":"%s","mode":"%s","connections":%d,"cpu_s":%s,"collector_cpu_s":%s,"run":%s}\n' \
        "$1" "$gw" "$3" "$4" \
        "$(awk -v d=$((after - before)) -v t="$ticks" 'BEGIN {printf "%.2f", d / t}')" \
        "$(awk -v d=$((cafter - cbefore)) -v t="$ticks" 'BEGIN {printf "%.2f", d / t}')" \
        "$line" >>"$runs"
    tail -1 "$runs" | python3 -c 'import json, sys
r = json.load(sys.stdin); w = r["run"]
print("  round %d %-3s %-4s %7d req  p50 %5d us  p99 %6d us  cpu %5.2f s  non-200 %d" % (r["round"],
      r["gateway"], r["mode"], w["requests"], w["p50_us"], w["p99_us"], r["cpu_s"], w["non200"] + w["errors"]))'
}

echo "== warm-up"
for gw in off on; do
    run 0 "$gw" load "$connections" $((load_requests / 10 > 2000 ? load_requests / 10 : 2000)) >/dev/null
done
warm="$work/warmup.jsonl"
cp "$runs" "$warm"
: >"$runs"

echo "== $rounds round(s): $lat_requests requests on 1 connection, $load_requests on $connections"
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="off on"; else order="on off"; fi
    for gw in $order; do
        run "$r" "$gw" c1 1 "$lat_requests"
        run "$r" "$gw" load "$connections" "$load_requests"
    done
done

# ----- what the "on" gateway logged and exported -------------------------------------------

# Let the writer thread and the exporter catch up (flush every second) before counting:
# wait until the collector's span count and the log stop growing.
prev=""
for i in $(seq 1 30); do
    now="$(log_lines) $(spans_received)"
    [ "$now" = "$prev" ] && break
    prev=$now
    sleep 1
done
handled_on=$(istio_requests "$on_admin")
handled_off=$(istio_requests "$off_admin")
cat >"$work/sinks.json" <<EOF
{"istio_requests_total_on": $handled_on,
 "istio_requests_total_off": $handled_off,
 "access_log_file_lines": $(log_lines),
 "access_log_file_bytes": $(stat -c %s "$access_log"),
 "egret_access_log_lines_total": $(metric "$on_admin" egret_access_log_lines_total),
 "egret_access_log_dropped_total": $(metric "$on_admin" egret_access_log_dropped_total),
 "egret_trace_spans_exported_total": $(metric "$on_admin" egret_trace_spans_exported_total),
 "egret_trace_spans_dropped_total": $(metric "$on_admin" egret_trace_spans_dropped_total),
 "collector": $(collector_stats),
 "off_egret_access_log_lines_total": $(metric "$off_admin" egret_access_log_lines_total),
 "off_egret_trace_spans_exported_total": $(metric "$off_admin" egret_trace_spans_exported_total)}
EOF

# ----- report ------------------------------------------------------------------------------

if [ -z "$out" ]; then
    mkdir -p "$here/results"
    out="$here/results/telemetry-$(date -u +%Y-%m-%d).json"
fi
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo true || echo false)

RUNS="$runs" WARM="$warm" OUT="$out" COMMIT="$commit" DIRTY="$dirty" QUICK="$quick" \
ROUNDS="$rounds" SINKS="$work/sinks.json" BEFORE_ON=$((ready_on + probe)) \
WRK="$(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')" python3 - <<'EOF'
import json, os, platform, statistics, subprocess, datetime

runs = [json.loads(l) for l in open(os.environ["RUNS"]) if l.strip()]
warm = [json.loads(l) for l in open(os.environ["WARM"]) if l.strip()]
sinks = json.load(open(os.environ["SINKS"]))
bad = [r for r in runs + warm if r["run"]["non200"] or r["run"]["errors"]]
total = sum(r["run"]["requests"] for r in runs)

def per(gw, mode, key):
    return [r["run"][key] for r in runs if r["gateway"] == gw and r["mode"] == mode]

def cpu10k(gw, mode, key="cpu_s"):
    return [r[key] / r["run"]["requests"] * 10000
            for r in runs if r["gateway"] == gw and r["mode"] == mode]

def rps(gw, mode):
    return [r["run"]["requests"] / (r["run"]["elapsed_us"] / 1e6)
            for r in runs if r["gateway"] == gw and r["mode"] == mode]

def stats(v):
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v}

summary = {}
for mode in ("c1", "load"):
    s = {}
    for gw in ("off", "on"):
        s[gw] = {
            "p50_us": stats(per(gw, mode, "p50_us")),
            "p90_us": stats(per(gw, mode, "p90_us")),
            "p99_us": stats(per(gw, mode, "p99_us")),
            "p999_us": stats(per(gw, mode, "p999_us")),
            "mean_us": stats(per(gw, mode, "mean_us")),
            "cpu_s_per_10k": stats(cpu10k(gw, mode)),
            "requests_per_s": stats(rps(gw, mode)),
        }
    s["on"]["collector_cpu_s_per_10k"] = stats(cpu10k("on", mode, "collector_cpu_s"))
    off, on = s["off"], s["on"]
    s["added_p50_us"] = on["p50_us"]["median"] - off["p50_us"]["median"]
    s["added_p99_us"] = on["p99_us"]["median"] - off["p99_us"]["median"]
    s["cpu_ratio"] = on["cpu_s_per_10k"]["median"] / off["cpu_s_per_10k"]["median"]
    s["added_cpu_us_per_request"] = (on["cpu_s_per_10k"]["median"] - off["cpu_s_per_10k"]["median"]) * 100
    summary[mode] = s

# Requests the "on" gateway answered: the readiness and check requests, then the warm-up and
# the measured runs as wrk counted them (wrk may leave a few in flight when it is interrupted).
sent_on = int(os.environ["BEFORE_ON"]) + sum(r["run"]["requests"] for r in runs + warm if r["gateway"] == "on")
sinks["responses_counted_on"] = sent_on

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""

result = {
    "benchmark": "telemetry",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "egret_commit": os.environ["COMMIT"],
    "work_tree_dirty": os.environ["DIRTY"] == "true",
    "quick": os.environ["QUICK"] == "1",
    "machine": {
        "cpus": os.cpu_count(),
        "cpu_model": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "kernel": platform.release(),
        "memory": sh("free -h | awk '/Mem:/ {print $2}'"),
        "load_average_at_end": os.getloadavg(),
    },
    "tools": {"wrk": os.environ["WRK"], "nginx": sh("nginx -v 2>&1"),
              "python": platform.python_version()},
    "setup": {
        "off": "Istio standard metrics only (always on); no access log, no tracing",
        "on": "Istio standard metrics + accessLogFile (TEXT, default format, to a file) + "
              "tracing at 100% sampling exported over OTLP/HTTP to a local sink "
              "(bench/otlp_sink.py)",
        "gateway_log_level": "warn",
        "rounds": int(os.environ["ROUNDS"]),
        "modes": {"c1": "1 connection (latency without queueing)",
                  "load": "%d connections" % runs[-1]["connections"] if runs else ""},
    },
    "checks": {"requests": total,
               "non_200_or_errors": sum(r["run"]["non200"] + r["run"]["errors"] for r in runs + warm)},
    "sinks": sinks,
    "summary": summary,
    "runs": runs,
}
with open(os.environ["OUT"], "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")

def us(v): return "%.0f us" % v
print()
print("%-28s %14s %14s %16s" % ("", "off", "on", "on vs off"))
for mode, label in (("c1", "1 connection"), ("load", "%s connections" % (runs[-1]["connections"] if runs else "?"))):
    s = summary[mode]
    n, p = s["off"], s["on"]
    print(label)
    for k, name in (("p50_us", "  p50 latency"), ("p99_us", "  p99 latency")):
        print("%-28s %14s %14s %+14.0f us" % (name, us(n[k]["median"]), us(p[k]["median"]),
                                             p[k]["median"] - n[k]["median"]))
    print("%-28s %14.3f %14.3f %15.2fx" % ("  CPU-seconds / 10k req", n["cpu_s_per_10k"]["median"],
                                          p["cpu_s_per_10k"]["median"], s["cpu_ratio"]))
    print("%-28s %14.0f %14.0f %15.2fx" % ("  requests / s", n["requests_per_s"]["median"],
                                          p["requests_per_s"]["median"],
                                          p["requests_per_s"]["median"] / n["requests_per_s"]["median"]))
print("(medians of %s round(s); every value, min and max in %s)" % (os.environ["ROUNDS"], os.environ["OUT"]))
c = sinks["collector"]
print()
print("on gateway: %d responses counted (checks + wrk), istio_requests_total %d" % (sent_on, sinks["istio_requests_total_on"]))
print("  access log: %d lines in the file (%.1f MB), egret_access_log_lines_total %d, dropped %d"
      % (sinks["access_log_file_lines"], sinks["access_log_file_bytes"] / 1e6,
         sinks["egret_access_log_lines_total"], sinks["egret_access_log_dropped_total"]))
print("  spans: egret_trace_spans_exported_total %d, dropped %d; the collector received %d spans in %d requests (%.1f MB)"
      % (sinks["egret_trace_spans_exported_total"], sinks["egret_trace_spans_dropped_total"],
         c["spans"], c["requests"], c["bytes"] / 1e6))
print("off gateway: egret_access_log_lines_total %d, egret_trace_spans_exported_total %d"
      % (sinks["off_egret_access_log_lines_total"], sinks["off_egret_trace_spans_exported_total"]))
if bad:
    print("FAILED: %d run(s) had non-200 responses or socket errors" % len(bad))
    raise SystemExit(1)
if sinks["off_egret_access_log_lines_total"] or sinks["off_egret_trace_spans_exported_total"]:
    print("FAILED: the off gateway logged or exported")
    raise SystemExit(1)
if c["bad"]:
    print("FAILED: the collector received %d malformed export(s)" % c["bad"])
    raise SystemExit(1)
print("all %d measured responses were 200" % total)
EOF
