"""A small real server that `modelbuild run` starts in tests of its process handling: it
reads the model file it is given (its /v1/models answer carries the file's sha256, so a test
sees that the materialised path holds the right bytes) and can misbehave on request.

    python engine_program.py --model PATH --port N [--delay S] [--exit-early] [--escape PIDFILE]
                             [--ignore-term] [--child PIDFILE]
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0, help="seconds of 'loading' before it listens")
    p.add_argument("--exit-early", action="store_true", help="print a few lines and exit 3 while loading")
    p.add_argument("--child", help="start a child in its process group; write its pid here")
    p.add_argument("--escape", help="start a grandchild in a session of its own; write its pid here")
    p.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (needs SIGKILL)")
    args, extra = p.parse_known_args()
    print(f"loading {args.model} (extra: {' '.join(extra) or 'none'})", flush=True)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.exit_early:
        print("error: tensor 'blk.0.attn_q.weight' has the wrong shape", flush=True)
        return 3
    with open(args.model, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    if args.child:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(args.child, "w") as fh:
            fh.write(str(child.pid))
    if args.escape:
        escaped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        with open(args.escape, "w") as fh:
            fh.write(str(escaped.pid))
    time.sleep(args.delay)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                body = b'{"status":"ok"}'
            elif self.path == "/v1/models":
                body = json.dumps({"data": [{"id": os.path.basename(args.model), "sha256": digest,
                                             "cwd": os.getcwd(), "extra": extra}]}).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *a: object) -> None:
            print("request: " + fmt % a, flush=True)

    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
