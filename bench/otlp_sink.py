#!/usr/bin/env python3
"""A minimal real OTLP/HTTP trace collector for bench/telemetry.sh (standard library only).

POST /v1/traces with a protobuf ExportTraceServiceRequest is answered 200 with an empty
ExportTraceServiceResponse (an empty protobuf body, content-type application/x-protobuf:
full success). Each request's spans are counted by walking the protobuf wire format
(ExportTraceServiceRequest.resource_spans = 1 -> ResourceSpans.scope_spans = 2 ->
ScopeSpans.spans = 2), so the count is what was really sent. GET /stats answers
{"requests": N, "bytes": N, "spans": N, "bad": N} as JSON.

Usage: otlp_sink.py PORT   (listens on 127.0.0.1:PORT)
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
stats = {"requests": 0, "bytes": 0, "spans": 0, "bad": 0}


def varint(b, i):
    shift = result = 0
    while True:
        if i >= len(b):
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if not c & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def fields(b, start, end):
    """Yield (field number, wire type, value start, value end) of one message."""
    i = start
    while i < end:
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, j = varint(b, i)
        elif wt == 1:
            j = i + 8
        elif wt == 5:
            j = i + 4
        elif wt == 2:
            n, i = varint(b, i)
            j = i + n
        else:
            raise ValueError("unsupported wire type %d" % wt)
        if j > end:
            raise ValueError("field runs past its message")
        yield num, wt, i, j
        i = j


def count_spans(body):
    n = 0
    for num, wt, s, e in fields(body, 0, len(body)):
        if num != 1 or wt != 2:
            continue
        for num2, wt2, s2, e2 in fields(body, s, e):
            if num2 != 2 or wt2 != 2:
                continue
            for num3, wt3, _, _ in fields(body, s2, e2):
                if num3 == 2 and wt3 == 2:
                    n += 1
    return n


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real collector

    def log_message(self, *args):
        pass

    def reply(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != "/v1/traces":
            self.reply(404, b"", "text/plain")
            return
        try:
            spans = count_spans(body)
            bad = 0
        except ValueError:
            spans, bad = 0, 1
        with lock:
            stats["requests"] += 1
            stats["bytes"] += len(body)
            stats["spans"] += spans
            stats["bad"] += bad
        if bad:
            self.reply(400, b"", "text/plain")
        else:
            self.reply(200, b"", "application/x-protobuf")

    def do_GET(self):
        if self.path != "/stats":
            self.reply(404, b"", "text/plain")
            return
        with lock:
            body = json.dumps(stats).encode()
        self.reply(200, body, "application/json")


def main():
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
