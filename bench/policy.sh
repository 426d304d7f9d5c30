#!/usr/bin/env bash
# The cost of egress policy, end to end (issue 5): two `egret gateway` processes on loopback,
# one with no policies ("none"), one with 1,000 AuthorizationPolicies, 5 DENY policies and a
# RequestAuthentication with an inline JWKS ("policy"), both routing HTTP `api.test` to the
# same local nginx. wrk sends the same request, with a valid JWT, the same number of times to
# each, interleaved over several rounds: once with one connection (latency without queueing)
# and once with many (throughput). Reported: latency percentiles (wrk), CPU-seconds per 10,000
# requests of each gateway process (utime+stime from /proc/<pid>/stat), and the ratio.
#
# Usage: bench/policy.sh [--quick] [--rounds N] [--requests N] [--load-requests N]
#                        [--connections N] [--policies N] [--alg RS256|ES256] [--log-level LEVEL]
#                        [--no-build] [--out FILE] [--keep]
#
#   --quick            1 round, 2,000 + 20,000 requests: a smoke run of a few seconds
#   --rounds N         rounds (default 5); the order of the two gateways alternates per round
#   --requests N       requests per latency run, 1 connection (default 20000)
#   --load-requests N  requests per load run (default 200000)
#   --connections N    connections of the load run (default 32)
#   --policies N       ALLOW policies at the policy gateway (default 1000; the one the requests
#                      match is always one of them), besides the 5 DENY policies
#   --alg A            the token's algorithm: RS256 (default) or ES256
#   --log-level L      the gateways' --log-level (default warn: no access log line per request)
#   --no-build         use target/release/egret as it is (or $EGRET)
#   --out FILE         the JSON result (default bench/results/policy-<UTC date>.json)
#   --keep             keep the work directory (configs, keys, logs)
#
# Needs: cargo, wrk, nginx, openssl, curl, xxd, python3 (standard library only). Debian:
#   apt-get install wrk nginx-light openssl curl xxd python3
# Ports: 127.0.0.1:$BENCH_PORT_BASE..+4 (default 18480..18484) must be free.
# See bench/README.md.

set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

rounds=5
lat_requests=20000
load_requests=200000
connections=32
policies=1000
alg=RS256
log_level=warn
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
        --policies) policies=$2; shift ;;
        --alg) alg=$2; shift ;;
        --log-level) log_level=$2; shift ;;
        --no-build) build=0 ;;
        --out) out=$2; shift ;;
        --keep) keep=1 ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "policy.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$alg" in RS256|ES256) ;; *) echo "policy.sh: --alg RS256 or ES256" >&2; exit 2 ;; esac
[ "$policies" -ge 1 ] 2>/dev/null || { echo "policy.sh: --policies N, N >= 1" >&2; exit 2; }

missing=""
for p in wrk nginx openssl curl xxd python3; do
    command -v "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "policy.sh: missing:$missing (Debian: apt-get install wrk nginx-light openssl curl xxd python3)" >&2
    exit 2
fi

base=${BENCH_PORT_BASE:-18480}
up_port=$base
none_port=$((base + 1))
policy_port=$((base + 2))
none_admin=$((base + 3))
policy_admin=$((base + 4))

if [ "$build" = 1 ]; then
    echo "== cargo build --release -p egret"
    (cd "$root" && cargo build --release -p egret)
fi
egret=${EGRET:-$root/target/release/egret}
[ -x "$egret" ] || { echo "policy.sh: $egret not found (build it, or set EGRET)" >&2; exit 2; }

work=$(mktemp -d /tmp/egret-policy-bench.XXXXXX)
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

# ----- keys, JWKS and the token ------------------------------------------------------------

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ec.pem" 2>/dev/null
rsa_n=$(openssl rsa -in "$work/rsa.pem" -noout -modulus | cut -d= -f2 | xxd -r -p | b64url)
rsa_e=$(openssl rsa -in "$work/rsa.pem" -noout -text | awk '/publicExponent/ {print $2}')
[ "$rsa_e" = 65537 ] || { echo "policy.sh: unexpected RSA exponent $rsa_e" >&2; exit 1; }
# SubjectPublicKeyInfo of a P-256 key ends with the 65-byte point 04 || x || y.
openssl pkey -in "$work/ec.pem" -pubout -outform DER 2>/dev/null | tail -c 65 >"$work/ec.point"
ec_x=$(tail -c +2 "$work/ec.point" | head -c 32 | b64url)
ec_y=$(tail -c 32 "$work/ec.point" | b64url)
jwks="{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"bench-rsa\",\"use\":\"sig\",\"n\":\"$rsa_n\",\"e\":\"AQAB\"},{\"kty\":\"EC\",\"kid\":\"bench-ec\",\"use\":\"sig\",\"crv\":\"P-256\",\"x\":\"$ec_x\",\"y\":\"$ec_y\"}]}"

issuer=https://issuer.bench.test
subject=bench-client
now=$(date +%s)
claims="{\"iss\":\"$issuer\",\"sub\":\"$subject\",\"aud\":\"api.test\",\"groups\":[\"egress-users\",\"readers\"],\"iat\":$now,\"exp\":$((now + 86400))}"
if [ "$alg" = RS256 ]; then
    header='{"alg":"RS256","typ":"JWT","kid":"bench-rsa"}'
else
    header='{"alg":"ES256","typ":"JWT","kid":"bench-ec"}'
fi
input="$(printf %s "$header" | b64url).$(printf %s "$claims" | b64url)"
if [ "$alg" = RS256 ]; then
    sig=$(printf %s "$input" | openssl dgst -sha256 -sign "$work/rsa.pem" | b64url)
else
    # ECDSA: openssl writes DER (r, s); JWS wants r || s, 32 bytes each.
    sig=$(printf %s "$input" | openssl dgst -sha256 -sign "$work/ec.pem" \
        | openssl asn1parse -inform DER \
        | awk -F: '/INTEGER/ {h=$NF; while (length(h) < 64) h="0" h; printf "%s", substr(h, length(h)-63)}' \
        | xxd -r -p | b64url)
fi
token="$input.$sig"

# ----- configuration -----------------------------------------------------------------------

mkdir -p "$work/none" "$work/policy"
cat >"$work/none/gateway.yaml" <<EOF
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
cp "$work/none/gateway.yaml" "$work/policy/gateway.yaml"

# The same policy set as crates/egret-proxy/benches/policy.rs (see its header).
{
    cat <<EOF
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bench-jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  jwtRules:
  - issuer: $issuer
    jwks: '$jwks'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-paths, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/admin*', '/internal/*']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-debug-header, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - when: [{key: 'request.headers[x-debug]', values: ['1', 'true']}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-blocked-networks, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - from: [{source: {ipBlocks: [203.0.113.0/24, 198.51.100.0/24]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-api-without-jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ['*']}}]
    to: [{operation: {hosts: [api.test]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-api-writes, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: DENY
  rules:
  - to: [{operation: {hosts: [api.test], methods: [DELETE, PUT, PATCH]}}]
EOF
    for i in $(seq 0 $((policies - 2))); do
        if [ $((i % 250)) = 0 ]; then
            host=api.test
        elif [ $((i % 20)) = 19 ]; then
            host="'*.partner-$i.test'"
        else
            host="svc-$((i % 250)).partner.test"
        fi
        printf -- "---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-%04d, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/team-%d/sa/app-%d]}}]
    to: [{operation: {hosts: [%s], methods: [GET, POST], paths: ['/v1/team-%d/*']}}]
" "$i" "$i" "$i" "$host" "$i"
    done
    cat <<EOF
---
# The one ALLOW policy the benchmark's request matches (sorted last among the ALLOW policies).
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-jwt-clients, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ['$issuer/$subject']}}]
    to: [{operation: {hosts: [api.test], methods: [GET], paths: ['/v1/*']}}]
    when: [{key: 'request.auth.claims[groups]', values: [egress-users]}]
EOF
} >"$work/policy/policies.yaml"

echo "== egret validate"
for d in none policy; do
    if ! "$egret" validate "$work/$d" >"$work/validate-$d.txt" 2>&1; then
        cat "$work/validate-$d.txt" >&2
        echo "policy.sh: the generated $d configuration does not validate" >&2
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

start_gateway() { # name port admin
    "$egret" gateway --config "$work/$1" --namespace istio-system --labels istio=egressgateway \
        --listen "80=127.0.0.1:$2" --admin-port "$3" --allow-direct --log-level "$log_level" \
        2>"$work/$1.log" &
    pids+=($!)
    eval "${1}_pid=$!"
}
start_gateway none "$none_port" "$none_admin"
start_gateway policy "$policy_port" "$policy_admin"

url() { echo "http://127.0.0.1:$1/v1/orders/42"; }
status() { # port [curl args...]
    local port=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Host: api.test' "$@" "$(url "$port")" || true
}

wait_ready() { # name port
    local i
    for i in $(seq 1 150); do
        if [ "$(status "$2" -H "Authorization: Bearer $token")" = 200 ]; then
            return 0
        fi
        sleep 0.2
    done
    echo "policy.sh: the $1 gateway does not answer 200; its log:" >&2
    tail -20 "$work/$1.log" >&2
    exit 1
}
wait_ready none "$none_port"
wait_ready policy "$policy_port"

# The policy gateway really enforces: no token 403, a bad token 401, a DENY path 403.
check() { # what want got
    if [ "$2" != "$3" ]; then
        echo "policy.sh: $1: expected $2, got $3" >&2
        exit 1
    fi
}
check "policy gateway, no token" 403 "$(status "$policy_port")"
check "policy gateway, forged token" 401 "$(status "$policy_port" -H "Authorization: Bearer ${token%.*}.AAAA")"
check "none gateway, no token" 200 "$(status "$none_port")"
check "policy gateway, /admin" 403 "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: api.test' \
    -H "Authorization: Bearer $token" "http://127.0.0.1:$policy_port/admin")"
loaded=$(curl -s "http://127.0.0.1:$policy_admin/config_dump" | python3 -c 'import json, sys
s = json.load(sys.stdin)
print(len(s.get("authorization_policies", [])), len(s.get("request_authentications", [])))')
check "policy gateway snapshot: AuthorizationPolicies, RequestAuthentications" "$((policies + 5)) 1" "$loaded"
check "none gateway snapshot: AuthorizationPolicies, RequestAuthentications" "0 0" \
    "$(curl -s "http://127.0.0.1:$none_admin/config_dump" | python3 -c 'import json, sys
s = json.load(sys.stdin)
print(len(s.get("authorization_policies", [])), len(s.get("request_authentications", [])))')"
echo "policy gateway: $((policies + 5)) AuthorizationPolicies and 1 RequestAuthentication in force:"
echo "  no token 403, forged token 401, /admin 403; the $alg token 200"

# ----- load --------------------------------------------------------------------------------

cat >"$work/count.lua" <<'EOF'
-- wrk script: stop after N responses (the first argument after --) and count responses that
-- are not 200. wrk has no request count, and thread:stop() only ends the thread's loop: wrk's
-- main thread sleeps for the whole -d duration unless interrupted. So the thread also creates
-- the file named by the second argument, and policy.sh then interrupts wrk (SIGINT, as
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
    local gw=$2 port pid before after line wpid
    if [ "$gw" = none ]; then port=$none_port; pid=$none_pid; else port=$policy_port; pid=$policy_pid; fi
    rm -f "$work/wrk.done"
    before=$(cpu_ticks "$pid")
    wrk -t1 -c"$4" -d3600s --timeout 5s -s "$work/count.lua" \
        -H 'Host: api.test' -H "Authorization: Bearer $token" "$(url "$port")" \
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
    line=$(grep '^RESULT ' "$work/wrk.out" | cut -d' ' -f2- || true)
    [ -n "$line" ] || { cat "$work/wrk.out" >&2; echo "policy.sh: wrk gave no result" >&2; exit 1; }
    printf '{"round":%d,"gateway":"%s","mode":"%s","connections":%d,"cpu_s":%s,"run":%s}\n' \
        "$1" "$gw" "$3" "$4" "$(awk -v d=$((after - before)) -v t="$ticks" 'BEGIN {printf "%.2f", d / t}')" \
        "$line" >>"$runs"
    tail -1 "$runs" | python3 -c 'import json, sys
r = json.load(sys.stdin); w = r["run"]
print("  round %d %-6s %-4s %7d req  p50 %5d us  p99 %6d us  cpu %5.2f s  non-200 %d" % (r["round"],
      r["gateway"], r["mode"], w["requests"], w["p50_us"], w["p99_us"], r["cpu_s"], w["non200"] + w["errors"]))'
}

echo "== warm-up"
for gw in none policy; do
    run 0 "$gw" load "$connections" $((load_requests / 10 > 2000 ? load_requests / 10 : 2000)) >/dev/null
done
: >"$runs"

echo "== $rounds round(s): $lat_requests requests on 1 connection, $load_requests on $connections"
for r in $(seq 1 "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="none policy"; else order="policy none"; fi
    for gw in $order; do
        run "$r" "$gw" c1 1 "$lat_requests"
        run "$r" "$gw" load "$connections" "$load_requests"
    done
done

metrics=$(curl -s "http://127.0.0.1:$policy_admin/metrics" || true)
echo "$metrics" | grep -E '^egret_policy' >"$work/policy-metrics.txt" || true

# ----- report ------------------------------------------------------------------------------

if [ -z "$out" ]; then
    mkdir -p "$here/results"
    out="$here/results/policy-$(date -u +%Y-%m-%d).json"
fi
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo true || echo false)

RUNS="$runs" OUT="$out" COMMIT="$commit" DIRTY="$dirty" ALG="$alg" LOG_LEVEL="$log_level" \
QUICK="$quick" ROUNDS="$rounds" POLICIES="$policies" METRICS="$work/policy-metrics.txt" \
WRK="$(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')" python3 - <<'EOF'
import json, os, platform, statistics, subprocess, datetime

runs = [json.loads(l) for l in open(os.environ["RUNS"]) if l.strip()]
bad = [r for r in runs if r["run"]["non200"] or r["run"]["errors"]]
total = sum(r["run"]["requests"] for r in runs)

def per(gw, mode, key):
    return [r["run"][key] if key in r["run"] else r[key]
            for r in runs if r["gateway"] == gw and r["mode"] == mode]

def cpu10k(gw, mode):
    return [r["cpu_s"] / r["run"]["requests"] * 10000
            for r in runs if r["gateway"] == gw and r["mode"] == mode]

def rps(gw, mode):
    return [r["run"]["requests"] / (r["run"]["elapsed_us"] / 1e6)
            for r in runs if r["gateway"] == gw and r["mode"] == mode]

def stats(v):
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v}

summary = {}
for mode in ("c1", "load"):
    s = {}
    for gw in ("none", "policy"):
        s[gw] = {
            "p50_us": stats(per(gw, mode, "p50_us")),
            "p90_us": stats(per(gw, mode, "p90_us")),
            "p99_us": stats(per(gw, mode, "p99_us")),
            "p999_us": stats(per(gw, mode, "p999_us")),
            "mean_us": stats(per(gw, mode, "mean_us")),
            "cpu_s_per_10k": stats(cpu10k(gw, mode)),
            "requests_per_s": stats(rps(gw, mode)),
        }
    n, p = s["none"], s["policy"]
    s["added_p50_us"] = p["p50_us"]["median"] - n["p50_us"]["median"]
    s["added_p99_us"] = p["p99_us"]["median"] - n["p99_us"]["median"]
    s["cpu_ratio"] = p["cpu_s_per_10k"]["median"] / n["cpu_s_per_10k"]["median"]
    s["added_cpu_us_per_request"] = (p["cpu_s_per_10k"]["median"] - n["cpu_s_per_10k"]["median"]) * 100
    summary[mode] = s

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""

result = {
    "benchmark": "policy",
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
    "tools": {"wrk": os.environ["WRK"], "nginx": sh("nginx -v 2>&1")},
    "setup": {
        "policy_gateway": "%s ALLOW + 5 DENY AuthorizationPolicies, 1 RequestAuthentication "
                          "(inline JWKS: RSA-2048 + P-256)" % os.environ["POLICIES"],
        "allow_policies": int(os.environ["POLICIES"]),
        "token_alg": os.environ["ALG"],
        "gateway_log_level": os.environ["LOG_LEVEL"],
        "rounds": int(os.environ["ROUNDS"]),
        "modes": {"c1": "1 connection (latency without queueing)",
                  "load": "%d connections" % runs[-1]["connections"] if runs else ""},
    },
    "checks": {"requests": total, "non_200_or_errors": sum(r["run"]["non200"] + r["run"]["errors"] for r in runs)},
    "policy_metrics": [l for l in open(os.environ["METRICS"]).read().splitlines()],
    "summary": summary,
    "runs": runs,
}
with open(os.environ["OUT"], "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")

def us(v): return "%.0f us" % v
print()
print("%-28s %14s %14s %16s" % ("", "none", "policy", "policy vs none"))
for mode, label in (("c1", "1 connection"), ("load", "%s connections" % (runs[-1]["connections"] if runs else "?"))):
    s = summary[mode]
    n, p = s["none"], s["policy"]
    print(label)
    for k, name in (("p50_us", "  p50 latency"), ("p99_us", "  p99 latency")):
        rng = lambda x: "%s (%d-%d)" % (us(x[k]["median"]), x[k]["min"], x[k]["max"])
        print("%-28s %14s %14s %+14.0f us" % (name, us(n[k]["median"]), us(p[k]["median"]),
                                             p[k]["median"] - n[k]["median"]))
    print("%-28s %14.3f %14.3f %15.2fx" % ("  CPU-seconds / 10k req", n["cpu_s_per_10k"]["median"],
                                          p["cpu_s_per_10k"]["median"], s["cpu_ratio"]))
    print("%-28s %14.0f %14.0f %15.2fx" % ("  requests / s", n["requests_per_s"]["median"],
                                          p["requests_per_s"]["median"],
                                          p["requests_per_s"]["median"] / n["requests_per_s"]["median"]))
print("(medians of %s round(s); every value, min and max in %s)" % (os.environ["ROUNDS"], os.environ["OUT"]))
if bad:
    print("FAILED: %d run(s) had non-200 responses or socket errors" % len(bad))
    raise SystemExit(1)
print("all %d responses were 200" % total)
EOF
