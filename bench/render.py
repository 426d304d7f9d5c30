#!/usr/bin/env python3
"""Renders a bench/run results JSON into BENCHMARKS.md and bench/charts/*.svg (standard library
only; the SVG is written by hand). `python3 bench/render.py bench/results/DATE.json` re-renders.
"""

import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLORS = {"direct": "#888888", "haproxy": "#1f77b4", "nginx": "#2ca02c", "egret": "#d62728",
          "egret-gw": "#ff7f0e"}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def col(runs, key):
    return [r.get(key) for r in runs]


def fmt(v, digits=3):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def ms(us):
    return None if us is None else us / 1000.0


def with_spread(runs, key, scale=1.0):
    xs = [x * scale for x in col(runs, key) if x is not None]
    if not xs:
        return "–"
    lo, hi = min(xs), max(xs)
    m = statistics.median(xs)
    if len(xs) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(lo)}–{fmt(hi)})"


def ratio(a, b):
    return None if a is None or not b else a / b


# ----- SVG ---------------------------------------------------------------------------------

def bar_chart(title, unit, values, path, note=""):
    """values: [(label, median, lo, hi)]"""
    w, h, left, top, bottom = 640, 60 + 34 * len(values), 110, 40, 30
    vmax = max((hi or m or 0) for _, m, _, hi in values) or 1
    scale = (w - left - 90) / vmax
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{title}</text>']
    for i, (label, m, lo, hi) in enumerate(values):
        y = top + i * 34
        color = COLORS.get(label, "#9467bd")
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{label}</text>')
        if m is not None:
            out.append(f'<rect x="{left}" y="{y + 4}" width="{m * scale:.1f}" height="18" fill="{color}"/>')
            if lo is not None and hi is not None and hi > lo:
                out.append(f'<line x1="{left + lo * scale:.1f}" x2="{left + hi * scale:.1f}" y1="{y + 13}" y2="{y + 13}" stroke="black"/>')
            out.append(f'<text x="{left + (hi or m) * scale + 6:.1f}" y="{y + 17}">{fmt(m)} {unit}</text>')
    out.append(f'<text x="{left}" y="{h - 10}" fill="#555">{note}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def latency_chart(res, rates, path):
    """Latency (p50 solid, p99 dashed) against the offered rate, one line per subject."""
    w, h, left, right, top, bottom = 640, 360, 70, 120, 40, 50
    series = {}
    for rate in rates:
        for name, runs in res.get(f"latency_{rate}", {}).items():
            series.setdefault(name, []).append((rate, med(col(runs, "p50_us")), med(col(runs, "p99_us"))))
    ymax = max((p99 or 0) for pts in series.values() for _, _, p99 in pts) / 1000 or 1
    xs = list(range(len(rates)))
    xpos = lambda i: left + (w - left - right) * (i / max(1, len(rates) - 1))
    ypos = lambda v: top + (h - top - bottom) * (1 - v / ymax)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">Latency vs offered rate (p50 solid, p99 dashed; ms, CO-corrected)</text>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>']
    for k in range(5):
        v = ymax * k / 4
        out.append(f'<text x="{left - 6}" y="{ypos(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        out.append(f'<line x1="{left}" y1="{ypos(v):.1f}" x2="{w - right}" y2="{ypos(v):.1f}" stroke="#eee"/>')
    for i, rate in zip(xs, rates):
        out.append(f'<text x="{xpos(i):.1f}" y="{h - bottom + 18}" text-anchor="middle">{rate:,} req/s</text>')
    for n, (name, pts) in enumerate(series.items()):
        color = COLORS.get(name, "#9467bd")
        for idx, dash in ((1, ""), (2, ' stroke-dasharray="5,4"')):
            coords = " ".join(f"{xpos(i):.1f},{ypos((p[idx] or 0) / 1000):.1f}" for i, p in zip(xs, pts))
            out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for i, p in zip(xs, pts):
                out.append(f'<circle cx="{xpos(i):.1f}" cy="{ypos((p[idx] or 0) / 1000):.1f}" r="3" fill="{color}"/>')
        out.append(f'<text x="{w - right + 10}" y="{top + 16 * n + 10}" fill="{color}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ----- Markdown ----------------------------------------------------------------------------

def render(results, json_rel):
    res = results["scenarios"]
    m = results["machine"]
    charts = os.path.join(ROOT, "bench/charts")
    os.makedirs(charts, exist_ok=True)
    L = []
    add = L.append
    add("# egret benchmarks: beside direct, HAProxy and nginx\n")
    add(f"Generated by `bench/run` ({results['rounds']} interleaved rounds, {results['seconds']} s per "
        f"measurement, subjects rotated each round; median and (min–max) over the rounds) from "
        f"[`{json_rel}`]({json_rel}). Everything on 127.0.0.1 of one machine: client, backend and "
        "proxy share its cores, so absolute numbers are small and noisy — read the **ratios**, which "
        "come from the same run. Method: `bench/README.md`.\n")
    add("| machine | |\n|---|---|")
    for k in ("date", "cpu", "nproc", "kernel", "egret", "egret build", "haproxy", "nginx", "squid",
              "wrk", "h2load", "openssl"):
        # Runs before 2026-11-22 measured `cargo build --release` and did not record the build.
        dflt = "release (`cargo build --release`)" if k == "egret build" else "?"
        add(f"| {k} | {m.get(k.replace(' ', '_'), dflt)} |")
    add("")
    add("Subjects: **direct** (client → backend nginx, 1 worker), **haproxy** (nbthread 2, "
        "`http-reuse always`), **nginx** (2 workers, upstream `keepalive 64`, HTTP/1.1), **egret** "
        "(sidecar in explicit-proxy mode: one hop; 2 data-plane threads, `--concurrency` default on 2 cores; access log off), **egret-gw** "
        "(sidecar → mutual-TLS mesh tunnel → egress gateway → backend: two hops, two processes).\n")

    targets = []

    # Throughput.
    for body in ("small", "1k"):
        key = f"h1_throughput_{body}"
        if key not in res:
            continue
        r = res[key]
        direct = med(col(r.get("direct", []), "rps"))
        hap = med(col(r.get("haproxy", []), "rps"))
        add(f"## HTTP/1.1 keep-alive, maximum throughput ({'38 B' if body == 'small' else '1 KiB'} body)\n")
        add("`wrk -t1 -c64`. CPU: utime+stime of the subject's processes from `/proc` over the run.\n")
        add("| subject | requests/s | × direct | × HAProxy | CPU-s per 10k requests | × HAProxy CPU |")
        add("|---|---|---|---|---|---|")
        hap_cpu = med(col(r.get("haproxy", []), "cpu_s_per_10k"))
        for name, runs in r.items():
            rps = med(col(runs, "rps"))
            cpu = med(col(runs, "cpu_s_per_10k"))
            add(f"| {name} | {with_spread(runs, 'rps')} | {fmt(ratio(rps, direct))} | {fmt(ratio(rps, hap))} | "
                f"{with_spread(runs, 'cpu_s_per_10k') if name != 'direct' else '–'} | "
                f"{fmt(ratio(cpu, hap_cpu)) if name != 'direct' else '–'} |")
        add("")
        bar_chart(f"HTTP/1.1 keep-alive throughput, {'38 B' if body == 'small' else '1 KiB'} body",
                  "req/s", [(n, med(col(x, "rps")), *spread(col(x, "rps"))) for n, x in r.items()],
                  os.path.join(charts, f"throughput_{body}.svg"), "median; line: min–max over rounds")
        add(f"![throughput](bench/charts/throughput_{body}.svg)\n")
        if body == "small" and "egret" in r and hap:
            e = med(col(r["egret"], "rps"))
            targets.append(("throughput ≥ HAProxy's (38 B, one hop)", f"{fmt(ratio(e, hap))} × HAProxy", e >= hap))
            ec = med(col(r["egret"], "cpu_s_per_10k"))
            targets.append(("CPU per request at saturation ≤ HAProxy's", f"{fmt(ratio(ec, hap_cpu))} × HAProxy",
                            ec is not None and hap_cpu is not None and ec <= hap_cpu))

    # Latency.
    rates = sorted(int(k.split("_")[1]) for k in res if k.startswith("latency_"))
    if rates:
        add("## Latency at a fixed rate (open loop, coordinated-omission corrected)\n")
        add("`egret-loadgen rate` (bench/loadgen): requests due at a fixed rate over 16 (1k/s) or 64 "
            "(20k/s) keep-alive connections; an overdue request's latency counts from when it was "
            "due. *Added* = subject − direct (medians over rounds), in ms.\n")
        add("| rate | subject | achieved req/s | p50 | p90 | p99 | added p50 | added p90 | added p99 | CPU-s per 10k |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for rate in rates:
            r = res[f"latency_{rate}"]
            d = {q: med(col(r.get("direct", []), q)) for q in ("p50_us", "p90_us", "p99_us")}
            for name, runs in r.items():
                q = {k: med(col(runs, k)) for k in d}
                added = lambda k: "–" if name == "direct" else fmt(ms(q[k] - d[k]) if q[k] is not None and d[k] is not None else None)
                add(f"| {rate:,}/s | {name} | {fmt(med(col(runs, 'achieved_rps')))} | {with_spread(runs, 'p50_us', 0.001)} | "
                    f"{with_spread(runs, 'p90_us', 0.001)} | {with_spread(runs, 'p99_us', 0.001)} | {added('p50_us')} | "
                    f"{added('p90_us')} | {added('p99_us')} | {with_spread(runs, 'cpu_s_per_10k') if name != 'direct' else '–'} |")
            if rate == 1000 and "egret" in r and "haproxy" in r:
                ea = med(col(r["egret"], "p50_us")) - d["p50_us"]
                ha = med(col(r["haproxy"], "p50_us")) - d["p50_us"]
                targets.append(("added p50 at 1k req/s ≤ HAProxy's", f"egret +{ea / 1000:.3f} ms, HAProxy +{ha / 1000:.3f} ms", ea <= ha))
        add("")
        latency_chart(res, rates, os.path.join(charts, "latency.svg"))
        add("![latency](bench/charts/latency.svg)\n")

    # Memory.
    if "memory" in res:
        add("## Memory: idle, and per 1,000 idle keep-alive connections\n")
        add("VmRSS (and Pss, which does not double-count pages shared between nginx's processes) "
            "of the subject's processes before and after opening the connections, one request on "
            "each, held open.\n")
        add("| subject | RSS at start (MiB) | RSS idle after the load scenarios (MiB) | RSS with the connections (MiB) | RSS per 1,000 connections (MiB) | Pss per 1,000 (MiB) |")
        add("|---|---|---|---|---|---|")
        start = res.get("memory_start", {})
        for name, x in res["memory"].items():
            s0 = start.get(name, {}).get("rss_kib")
            add(f"| {name} | {fmt(s0 / 1024 if s0 else None)} | {x['rss_before_kib'] / 1024:.1f} | {x['rss_after_kib'] / 1024:.1f} | "
                f"{x['rss_per_1k_kib'] / 1024:.2f} | {x['pss_per_1k_kib'] / 1024:.2f} |")
        add(f"\n({list(res['memory'].values())[0]['connections']:,} connections.)\n")
        if "egret" in res["memory"]:
            x = res["memory"]["egret"]
            s0 = res.get("memory_start", {}).get("egret", {}).get("rss_kib", x["rss_before_kib"])
            targets.append(("RSS idle ≤ 15 MiB", f"{s0 / 1024:.1f} MiB at start, {x['rss_before_kib'] / 1024:.1f} MiB after the load",
                            s0 <= 15 * 1024))
            targets.append(("RSS ≤ 4 MiB per 1,000 idle keep-alive connections", f"{x['rss_per_1k_kib'] / 1024:.2f} MiB",
                            x["rss_per_1k_kib"] <= 4 * 1024))

    def simple(key, title, text, metric, unit, label):
        if key not in res:
            return None
        r = res[key]
        add(f"## {title}\n")
        add(text + "\n")
        add(f"| subject | requests/s | {label} | CPU-s per 10k |")
        add("|---|---|---|---|")
        for name, runs in r.items():
            add(f"| {name} | {with_spread(runs, 'rps')} | {with_spread(runs, metric) if metric else '–'} | "
                f"{with_spread(runs, 'cpu_s_per_10k') if name != 'direct' else '–'} |")
        add("")
        return r

    simple("tls_origination", "TLS origination (plain HTTP in, TLS 1.3 to the backend, upstream reuse)",
           "`wrk -t1 -c64` to the proxy; the proxy verifies the backend's certificate (ECDSA P-256) and "
           "keeps upstream connections.", None, "", "–")
    simple("http2", "HTTP/2 (h2c in)",
           "`h2load -c16 -m32`; direct is nginx's h2c listener; the proxies speak HTTP/1.1 to the "
           "backend. egret here is an egress gateway taking clients directly (`--allow-direct`): the "
           "sidecar's explicit proxy is HTTP/1.1.", None, "", "–")
    r = simple("tls_handshakes", "Full TLS 1.3 handshakes (ECDSA P-256) per core-second",
               "`h2load --h1`, one request per new connection, no resumption (HAProxy and nginx: tickets and cache off; egret sends one stateless ticket per handshake, as Envoy does, which no client here uses); "
               "handshakes ÷ the terminating proxy's CPU-seconds.", "handshakes_per_core_s", "",
               "handshakes per core-second")
    if r and "egret" in r:
        e = med(col(r["egret"], "handshakes_per_core_s"))
        h = med(col(r.get("haproxy", []), "handshakes_per_core_s"))
        met = e is not None and e >= 5000
        short = f"; {(1 - e / 5000) * 100:.0f} % short" if e is not None and not met else ""
        vs = f", {fmt(ratio(e, h))} × HAProxy" if e and h else ""
        targets.append(("≥ 5,000 TLS 1.3 ECDSA handshakes per core-second (gateway)",
                        f"{fmt(e)} (HAProxy {fmt(h)}{vs}{short})", met))
    r = simple("connect", "CONNECT egress: egret vs squid",
               "`egret-loadgen connect`, 8 workers: CONNECT, a TLS 1.3 handshake with the origin through "
               "the tunnel, one request, close (an app with `HTTPS_PROXY`). egret routes the tunnel by "
               "the ClientHello's SNI (REGISTRY_ONLY applies); squid relays it.", "tunnels_per_core_s", "",
               "tunnels per proxy core-second")
    simple("tls_passthrough", "TLS passthrough by SNI: new connections",
           "`h2load --h1` with SNI backend.test, one request per connection; the proxy routes on the "
           "ClientHello's SNI and relays bytes (HAProxy `mode tcp` with `req_ssl_sni`).",
           "conns_per_core_s", "", "connections per proxy core-second")

    if targets:
        add("## Targets (issue 8), one-hop sidecar, this run\n")
        add("| target | measured | met |")
        add("|---|---|---|")
        for t, v, ok in targets:
            add(f"| {t} | {v} | {'yes' if ok else '**no**'} |")
        add("")
        if not all(ok for _, _, ok in targets):
            add("A target marked **no** is missed by what its row shows. What the profiles show "
                "for it is in the notes below: “TLS handshakes at the gateway” for the handshake "
                "rate, the passes before it for the rest.\n")
    notes = os.path.join(ROOT, "bench/NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            add(f.read())
    add("## Caveats\n")
    add("Shared 2-core VM: client, backend and proxy compete for the same cores, so p99 is not "
        "comparable across runs. Debian's HAProxy and nginx use OpenSSL 3.0, which is slow at TLS; "
        "TLS comparisons favour rustls/aws-lc more than against BoringSSL/AWS-LC builds. Published "
        "mesh numbers (Istio ≈ 0.20 vCPU and 60 MB per 1,000 req/s) include telemetry and real "
        "networks: compare CPU per request and the shape of added latency, not totals.")
    with open(os.path.join(ROOT, "BENCHMARKS.md"), "w") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    path = sys.argv[1]
    with open(path) as f:
        render(json.load(f), os.path.relpath(os.path.abspath(path), ROOT))
