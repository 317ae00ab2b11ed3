#!/usr/bin/env python3
"""A stand-in for kanary's HTTP server, for working on the live view without building kanary.

Serves crates/kanary/assets (/, /app.js, /style.css) and a fake /api/summary that changes every
second, in exactly the shape kanary serves: two models (if, ae) scoring a simulated stream of
the seed scenario (latency/cpu/memory, 1% anomalies) across three services.

    python3 scripts/browser/mock_server.py --port 8080         # then open http://127.0.0.1:8080/
    python3 scripts/browser/mock_server.py --port 0            # pick a free port; the first line
                                                               # printed is the URL
    --wait 10          no events for the first 10 s (the page's empty state)
    --no-models        with --wait: "models" is [] while waiting
    --unlabelled       events carry no labels (no precision/recall/F1)
    --outage 20:30     /api/summary answers 503 from 20 s to 30 s (the "connection lost" state)

Standard library only.
"""

import argparse
import json
import math
import pathlib
import random
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "crates" / "kanary" / "assets"
ROUTES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
SERVICES = ["checkout", "payments", "search"]
FEATURES = {"latency": (100.0, 8.0, 120.0, 20.0), "cpu": (35.0, 4.0, 40.0, 10.0), "memory": (500.0, 15.0, 200.0, 40.0)}
HISTORY = 300
RECENT_SCORES = 300
RECENT_ANOMALIES = 20
RATE_WINDOW = 30  # seconds of history behind anomaly_rate


def ratio(a, b):
    return a / b if b else None


class ModelSim:
    """One fake detector: scores are noisy, anomalies score higher, so there are FPs and FNs."""

    def __init__(self, name, rng, labelled, warmup_events):
        self.name = name
        self.rng = rng
        self.labelled = labelled
        self.warmup_events = warmup_events
        self.events = self.scored = self.anomalies = self.invalid = 0
        self.tp = self.fp = self.fn = self.tn = 0
        self.latency = None
        self.thresholds = {}
        self.recent_scores = deque(maxlen=RECENT_SCORES)
        self.recent_anomalies = deque(maxlen=RECENT_ANOMALIES)
        self.history = deque(maxlen=HISTORY)
        self.last_threshold = None
        self._sec_events = 0
        self._window = deque()  # (second, scored, anomalies) for the anomaly rate

    def threshold_for(self, service):
        if service not in self.thresholds:
            base = 0.62 if self.name == "if" else 0.25
            self.thresholds[service] = round(base * (1 + self.rng.uniform(-0.04, 0.04)), 4)
        return self.thresholds[service]

    def score(self, event):
        r = self.rng
        if self.name == "if":
            s = r.gauss(0.45, 0.055)
            if event["anomaly"]:
                s += r.gauss(0.2, 0.1)
            return max(0.0, min(1.0, s))
        s = abs(r.gauss(0.0, 0.065)) + 0.02
        if event["anomaly"]:
            s += abs(r.gauss(0.3, 0.2))
        return s

    def contributions(self, event):
        r = self.rng
        raw = {f: abs(r.gauss(0.15, 0.08)) for f in FEATURES}
        if event["anomaly"]:
            raw[event["anomaly"]] += r.uniform(0.3, 2.5)
        else:
            raw[r.choice(list(FEATURES))] += r.uniform(0.3, 1.5)
        total = sum(raw.values())
        return {f: round(v / total, 4) for f, v in raw.items()}

    def observe(self, event, now):
        self.events += 1
        self._sec_events += 1
        if self.events <= self.warmup_events:
            return
        self.scored += 1
        thr = self.threshold_for(event["service"])
        self.last_threshold = thr
        score = self.score(event)
        flagged = score >= thr
        label = event.get("label")
        self.latency = max(0.00005, self.rng.gauss(0.0009 if self.name == "if" else 0.0014, 0.0002))
        if flagged:
            self.anomalies += 1
        if label is not None:
            if flagged and label:
                self.tp += 1
            elif flagged:
                self.fp += 1
            elif label:
                self.fn += 1
            else:
                self.tn += 1
        self.recent_scores.append(
            {"ts": round(event["ts"], 3), "score": round(score, 4), "threshold": thr, "flagged": flagged, "label": label}
        )
        if flagged:
            self.recent_anomalies.appendleft(
                {
                    "ts": round(event["ts"], 3),
                    "service": event["service"],
                    "score": round(score, 4),
                    "threshold": thr,
                    "label": label,
                    "contributions": self.contributions(event),
                }
            )
        if self._window and self._window[-1][0] == int(now):
            sec, sc, an = self._window[-1]
            self._window[-1] = (sec, sc + 1, an + int(flagged))
        else:
            self._window.append((int(now), 1, int(flagged)))

    def quality(self):
        p = ratio(self.tp, self.tp + self.fp)
        r = ratio(self.tp, self.tp + self.fn)
        f = 2 * p * r / (p + r) if p is not None and r is not None and (p + r) > 0 else None
        return p, r, f

    def anomaly_rate(self, now):
        while self._window and self._window[0][0] < now - RATE_WINDOW:
            self._window.popleft()
        sc = sum(w[1] for w in self._window)
        an = sum(w[2] for w in self._window)
        return an / sc if sc else 0.0

    def tick_second(self, t):
        """Close one second of history."""
        p, r, f = self.quality()
        self.history.append(
            {
                "t": float(t),
                "throughput_eps": float(self._sec_events),
                "anomaly_rate": round(self.anomaly_rate(t), 6),
                "precision": None if not self.labelled or p is None else round(p, 4),
                "recall": None if not self.labelled or r is None else round(r, 4),
                "f1": None if not self.labelled or f is None else round(f, 4),
            }
        )
        self.throughput = float(self._sec_events)
        self._sec_events = 0

    def state(self):
        if self.events == 0:
            return "waiting"
        if self.scored == 0:
            return "warming_up"
        return "scoring"

    def summary(self, now):
        p, r, f = self.quality()
        lab = self.labelled
        return {
            "model": self.name,
            "state": self.state(),
            "events": self.events,
            "scored": self.scored,
            "anomalies": self.anomalies,
            "invalid": self.invalid,
            "throughput_eps": getattr(self, "throughput", 0.0),
            "anomaly_rate": round(self.anomaly_rate(now), 6),
            "latency_seconds": None if self.latency is None else round(self.latency, 6),
            "threshold": self.last_threshold,
            "labelled": lab,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "precision": round(p, 4) if lab and p is not None else None,
            "recall": round(r, 4) if lab and r is not None else None,
            "f1": round(f, 4) if lab and f is not None else None,
            "history": list(self.history),
            "recent_scores": list(self.recent_scores),
            "recent_anomalies": list(self.recent_anomalies),
        }


class Sim:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.started = time.time()
        self.lock = threading.Lock()
        self.models = [
            ModelSim(name, random.Random(args.seed + i + 1), not args.unlabelled, args.warmup * args.eps)
            for i, name in enumerate(args.models)
        ]
        self.last_step = self.started
        self.last_second = int(self.started)
        self.outage = None
        if args.outage:
            a, b = args.outage.split(":")
            self.outage = (float(a), float(b))

    def event(self, ts):
        r = self.rng
        ev = {"ts": ts, "service": r.choice(SERVICES), "anomaly": None}
        if not self.args.unlabelled:
            ev["label"] = 0
        for f, (mu, sd, _, _) in FEATURES.items():
            ev[f] = max(0.0, r.gauss(mu, sd))
        if r.random() < 0.01:
            f = r.choice(list(FEATURES))
            ev[f] += r.gauss(FEATURES[f][2], FEATURES[f][3])
            ev["anomaly"] = f
            if "label" in ev:
                ev["label"] = 1
        return ev

    def step(self):
        now = time.time()
        with self.lock:
            elapsed = now - self.started
            dt = now - self.last_step
            self.last_step = now
            if elapsed >= self.args.wait:
                # a gently varying rate, so the throughput chart has a shape
                eps = self.args.eps * (1 + 0.25 * math.sin(elapsed / 17.0) + 0.08 * math.sin(elapsed / 3.1))
                n = int(eps * dt + self.rng.random())
                for k in range(n):
                    ev = self.event(now - dt + dt * (k + 1) / max(n, 1))
                    for m in self.models:
                        m.observe(ev, now)
            while self.last_second < int(now):
                self.last_second += 1
                for m in self.models:
                    m.tick_second(self.last_second)

    def summary(self):
        now = time.time()
        with self.lock:
            elapsed = now - self.started
            waiting = elapsed < self.args.wait
            models = [] if (waiting and self.args.no_models) else [m.summary(now) for m in self.models]
            return {
                "service": "kanary demo",
                "uptime_seconds": round(elapsed, 3),
                "generated_at": round(now, 3),
                "models": models,
            }

    def in_outage(self):
        if not self.outage:
            return False
        e = time.time() - self.started
        return self.outage[0] <= e < self.outage[1]

    def run(self):
        while True:
            self.step()
            time.sleep(0.05)


def make_handler(sim, quiet):
    class Handler(BaseHTTPRequestHandler):
        server_version = "kanary-mock"

        def log_message(self, fmt, *args):
            if not quiet:
                sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

        def send(self, code, body, ctype, extra=None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/api/summary":
                if sim.in_outage():
                    return self.send(503, b'{"error":"simulated outage"}', "application/json")
                body = json.dumps(sim.summary(), separators=(",", ":")).encode()
                return self.send(200, body, "application/json")
            if path == "/metrics":
                with sim.lock:
                    lines = [f'detector_events_total{{model="{m.name}"}} {m.events}' for m in sim.models]
                return self.send(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")
            if path in ROUTES:
                name, ctype = ROUTES[path]
                try:
                    body = (ASSETS / name).read_bytes()  # read on every request: edit and reload
                except OSError as e:
                    return self.send(500, str(e).encode(), "text/plain")
                return self.send(200, body, ctype)
            return self.send(404, b"not found\n", "text/plain")

        do_HEAD = do_GET

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    ap.add_argument("--models", default="if,ae", type=lambda s: [m for m in s.split(",") if m])
    ap.add_argument("--eps", type=float, default=900.0, help="events per second")
    ap.add_argument("--wait", type=float, default=0.0, help="seconds before the first event")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of events before scoring")
    ap.add_argument("--no-models", action="store_true", help='"models": [] while waiting')
    ap.add_argument("--unlabelled", action="store_true", help="events carry no labels")
    ap.add_argument("--outage", help="A:B — answer 503 between A and B seconds after start")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quiet", action="store_true", help="no request log")
    args = ap.parse_args()

    sim = Sim(args)
    threading.Thread(target=sim.run, daemon=True).start()
    srv = ThreadingHTTPServer((args.host, args.port), make_handler(sim, args.quiet))
    srv.daemon_threads = True
    host, port = srv.server_address[:2]
    print(f"http://{host}:{port}/", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
