"""Load on ``covidseg serve``: N concurrent clients on the loopback for a bounded time.

Starts the server in a subprocess (the built-in model unless ``--model`` names another), sends
``POST /api/predict`` with one X-ray from every client in a loop, and prints requests/s, p50/p95
latency, the status codes (errors: anything but 200 and the 503 of a full queue, target 0) and
the server's resident memory before and after. A client that gets a 503 waits the Retry-After
the server sends (``--retry-after 0``: retries at once, the rudest client):

    python benchmarks/serve_load.py --clients 8 --seconds 60
    python benchmarks/serve_load.py --image src/covidseg/examples/covid-19.png --queue 4
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from covidseg.engine.device import cpu_info


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="run folder, bundle or built-in name (default: the built-in model)")
    p.add_argument("--image", default=str(Path(__file__).parents[1] / "src/covidseg/examples/covid-19.png"))
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--queue", type=int, default=4)
    p.add_argument(
        "--retry-after",
        type=float,
        default=1.0,
        help="share of the server's Retry-After a client waits after a 503 (default 1: as asked; 0: retry at once)",
    )
    a = p.parse_args()
    data = Path(a.image).read_bytes()
    port = _free_port()
    cmd = [sys.executable, "-m", "covidseg", "serve", "--port", str(port), "--queue", str(a.queue)]
    server = subprocess.Popen(cmd + ([a.model] if a.model else []), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise SystemExit("the server did not start: " + server.stdout.read().decode()[-2000:])
        httpx.post(f"{url}/api/predict", files={"file": ("x.png", data)}, timeout=120)  # warm-up
        before = _rss_mb(server.pid)
        latencies: list[float] = []
        codes: Counter = Counter()
        lock = threading.Lock()
        stop = time.time() + a.seconds

        def client() -> None:
            with httpx.Client(timeout=120) as c:
                while time.time() < stop:
                    t0 = time.perf_counter()
                    wait = 0.0
                    try:
                        r = c.post(f"{url}/api/predict", files={"file": ("x.png", data)})
                        code = r.status_code
                        if code == 503:  # a full queue: wait as the server asks, as a polite client does
                            wait = min(float(r.headers.get("Retry-After", 1)), 10.0) * a.retry_after
                    except (httpx.HTTPError, ValueError) as exc:
                        code = type(exc).__name__
                    with lock:
                        codes[code] += 1
                        if code == 200:
                            latencies.append(time.perf_counter() - t0)
                    time.sleep(min(wait, max(stop - time.time(), 0.0)))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        after = _rss_mb(server.pid)
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(30)
    lat = np.asarray(latencies) * 1000
    errors = sum(n for code, n in codes.items() if code not in (200, 503))
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['summary']}")
    print(f"image {a.image}, {a.clients} clients, {a.seconds:g} s, queue {a.queue}")
    print(f"answered  {codes[200]} ok ({codes[200] / wall:.2f} requests/s), {codes[503]} busy (503)")
    if lat.size:
        print(f"latency   p50 {np.percentile(lat, 50):.0f} ms, p95 {np.percentile(lat, 95):.0f} ms (ok answers)")
    print(f"errors    {errors} {dict(codes)}")
    print(f"memory    {before:.0f} MB before, {after:.0f} MB after; server alive: {alive}")


if __name__ == "__main__":
    main()
