"""A tiny stdlib-only web app for slipway.

slipway starts it from the Procfile (`web: python app.py`) with PORT and DYNO
set; the router sends HTTP for <app>.<domain> to this port.
"""

import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        # Every path gets the greeting: a hello app has nothing else to serve.
        dyno = os.environ.get("DYNO", "unknown")
        body = f"Hello from slipway! (dyno {dyno})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # The default log_message writes one line per request to stderr, which
    # slipway merges into the app log as app[web.1]; that is what we want.


def main():
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("0.0.0.0", port), Hello)
    # Don't let in-flight request threads keep the process alive at exit.
    server.daemon_threads = True

    def on_sigterm(signum, frame):
        # slipway stops a dyno with SIGTERM (SIGKILL 30 s later).
        # shutdown() blocks until serve_forever() returns, and serve_forever()
        # runs in this very (main) thread, so call it from another thread.
        print("Received SIGTERM, shutting down", flush=True)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)

    print(f"Listening on 0.0.0.0:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
