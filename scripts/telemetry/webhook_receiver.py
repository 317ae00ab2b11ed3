#!/usr/bin/env python3
"""A tiny webhook receiver for Alertmanager: appends every POSTed JSON body to a file.

    webhook_receiver.py --port 19094 --out FILE [--host 127.0.0.1]

Each POST becomes one line of FILE: {"received_at": <unix seconds>, "path": "...",
"payload": <the body, parsed>} (a body that is not JSON is kept as a string under
"payload_text" and answered 400). Any GET answers 200 "ok" (a readiness probe).
Standard library only; runs until killed.
"""

from __future__ import annotations

import argparse
import http.server
import json
import sys
import threading
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True, help="file the POSTs are appended to, one JSON per line")
    args = ap.parse_args()
    lock = threading.Lock()
    out = open(args.out, "a", encoding="utf-8")

    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self, code: int, text: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.reply(200, "ok\n")

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            row = {"received_at": time.time(), "path": self.path}
            try:
                row["payload"] = json.loads(body)
                code = 200
            except ValueError:
                row["payload_text"] = body.decode("utf-8", "replace")
                code = 400
            with lock:
                out.write(json.dumps(row) + "\n")
                out.flush()
            self.reply(code, "ok\n" if code == 200 else "not JSON\n")

        def log_message(self, fmt: str, *a) -> None:
            sys.stderr.write("webhook_receiver.py: %s %s\n" % (self.address_string(), fmt % a))

    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"webhook_receiver.py: listening on {args.host}:{args.port}, writing {args.out}", file=sys.stderr)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
