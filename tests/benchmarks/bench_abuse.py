"""Abuse figures against a real gunicorn (defaults, seeded random vit_t) behind the nginx front:

- worker RSS before / peak / after for 8 concurrent decompression bombs (969-byte-class JPEGs claiming
  6000x6000, as in issue 16), and for 8 concurrent real 6000x6000 PNGs (36 MP each decoded);
- /healthz latency through the front while 16 clients trickle 10 MB bodies at 1 byte/s;
- /healthz latency during a burst of 50 distinct uploads, with how many were answered 200 / 503.

    python tests/benchmarks/bench_abuse.py
"""

from __future__ import annotations

import argparse
import concurrent.futures
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

from servers import PeakRss, gunicorn, nginx_front, rss_bytes  # noqa: E402
from test_abuse import HealthProbe, distinct_png, jpeg_bomb, png_bomb, upload, wait_until_idle  # noqa: E402

MB = 1e6


def bombs(app, front, name: str, payloads: list[bytes]) -> None:
    wait_until_idle(front.url)
    pid = app.worker_pid()
    with PeakRss(pid) as rss:
        with concurrent.futures.ThreadPoolExecutor(len(payloads)) as pool:
            replies = list(pool.map(lambda i: upload(front.url, payloads[i], f"127.0.9.{i + 1}"), range(len(payloads))))
        wait_until_idle(front.url)
        time.sleep(2)
    baseline, peak = rss.baseline, rss.peak
    after = rss_bytes(pid)
    statuses = sorted(r.status for r in replies)
    print(
        f"{name}: RSS before {baseline / MB:.0f} MB, peak {peak / MB:.0f} MB, after {after / MB:.0f} MB; "
        f"answers {statuses}"
    )


def slow_clients(front) -> None:
    host, port = front.url.removeprefix("http://").split(":")
    slow = []
    for i in range(16):
        sock = socket.create_connection((host, int(port)), source_address=(f"127.0.10.{i + 1}", 0))
        sock.sendall(b"POST /api/images HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        slow.append(sock)
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for sock in slow:
                sock.sendall(b"\0")
            stop.wait(1.0)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    time.sleep(1)
    with HealthProbe(front.url) as probe:
        small = upload(front.url, distinct_png(70_000), "127.0.10.100")
        time.sleep(5)
    stop.set()
    thread.join()
    for sock in slow:
        sock.close()
    report("16 slow clients", probe)
    print(f"  a small upload meanwhile: {small.status} in {small.seconds:.1f} s")


def burst(front) -> None:
    wait_until_idle(front.url)
    images = [distinct_png(80_000 + i) for i in range(50)]
    with HealthProbe(front.url) as probe, concurrent.futures.ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda i: upload(front.url, images[i], f"127.0.11.{i + 1}"), range(50)))
    report("50-upload burst", probe)
    busy = [r.seconds for r in replies if r.status == 503]
    done = [r.seconds for r in replies if r.status == 200]
    print(
        f"  answers: {len(done)} x 200 (median {statistics.median(done) if done else 0:.1f} s), "
        f"{len(busy)} x 503 (median {statistics.median(busy) if busy else 0:.2f} s, max {max(busy, default=0):.2f} s)"
    )


def report(name: str, probe: HealthProbe) -> None:
    latencies = sorted(probe.latencies)
    print(
        f"{name}: /healthz x{len(latencies)} median {1000 * statistics.median(latencies):.0f} ms, "
        f"max {1000 * latencies[-1]:.0f} ms, failures {len(probe.failures)}"
    )


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sam-abuse-"))
    settings = {"SAM_TRUSTED_PROXIES": "1"}
    with gunicorn(workdir, **settings) as app, nginx_front(workdir, app, **settings) as front:
        upload(front.url, distinct_png(1), "127.0.9.200")  # The first forward pass is slow.
        bombs(app, front, "8 JPEG bombs (header 6000x6000)", [jpeg_bomb() for _ in range(8)])
        bombs(app, front, "8 PNG 6000x6000 (36 MP decoded each)", [png_bomb()] * 8)
        slow_clients(front)
        burst(front)
    return 0


if __name__ == "__main__":
    sys.exit(main())
