"""Load generator for `textrnn serve`: one streaming client, then N concurrent streaming clients.

It measures the total characters per second each way and the time to first character (p50, p99),
and prints one JSON object. The load is bounded (clients, requests, tokens) and goes to 127.0.0.1
only. Without --url it starts the server itself (`python -m textrnn serve --port 0`) and stops it
with SIGTERM at the end.

    python scripts/load_test.py --checkpoint checkpoints/RUN
    flock -x /tmp/textrnn-cpu.lock python scripts/load_test.py --checkpoint RUN --json load.json

The client is a small HTTP/1.1 reader on asyncio streams (no HTTP library), so that on a 2-core
machine the load generator itself takes as little of the CPU as it can.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


async def stream_completion(host: str, port: int, body: dict) -> dict:
    """One streaming request -> characters received, time to the first character and in total (seconds)."""
    payload = json.dumps(body).encode()
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (host.encode(), len(payload)) + payload
        )
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            rest = await reader.read(2000)
            raise RuntimeError(f"{status.decode().strip()}: {rest.decode(errors='replace')[-300:]}")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            chunked |= line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
        characters, first, buffer, done = 0, None, b"", False
        while not done:
            if chunked:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                buffer += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    continue
                if event == b"data: [DONE]":
                    done = True
                    break
                chunk = json.loads(event[6:])
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                for choice in chunk["choices"]:
                    if choice["text"] and first is None:
                        first = time.perf_counter() - started
                    characters += len(choice["text"])
        return {"characters": characters, "first": first, "seconds": time.perf_counter() - started}
    finally:
        writer.close()


async def client(host, port, requests, index, options, results) -> None:
    for number in range(requests):
        body = {
            "prompt": options.prompt,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "seed": index * 1000 + number,
            "stream": True,
        }
        results.append(await stream_completion(host, port, body))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def phase(host, port, clients: int, requests: int, options) -> dict:
    results: list[dict] = []
    started = time.perf_counter()
    await asyncio.gather(*(client(host, port, requests, index, options, results) for index in range(clients)))
    seconds = time.perf_counter() - started
    characters = sum(result["characters"] for result in results)
    firsts = [result["first"] * 1000 for result in results if result["first"] is not None]
    return {
        "clients": clients,
        "requests": len(results),
        "characters": characters,
        "seconds": round(seconds, 3),
        "chars_per_sec": round(characters / seconds, 1),
        "chars_per_sec_per_client": round(characters / seconds / clients, 1),
        "time_to_first_char_ms_p50": round(percentile(firsts, 0.5), 2),
        "time_to_first_char_ms_p99": round(percentile(firsts, 0.99), 2),
    }


def start_server(options) -> tuple[subprocess.Popen, int]:
    command = [sys.executable, "-m", "textrnn", "serve", "--port", "0", "--max-queue", "4096"]
    if options.checkpoint:
        command += ["--checkpoint", options.checkpoint]
    if options.server_threads:
        command += ["--threads", str(options.server_threads)]
    if options.server_engines:
        command += ["--engines", str(options.server_engines)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    line = server.stderr.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not found:
        server.kill()
        raise SystemExit(f"the server did not start: {line}{server.stderr.read()}")
    return server, int(found.group(1))


async def measure(host: str, port: int, options) -> dict:
    await stream_completion(host, port, {"prompt": options.prompt, "max_tokens": 200, "stream": True})  # warm-up
    print(f"1 client x {options.single_requests} requests ...", file=sys.stderr)
    single = await phase(host, port, 1, options.single_requests, options)
    print(f"{options.clients} clients x {options.requests} requests ...", file=sys.stderr)
    concurrent = await phase(host, port, options.clients, options.requests, options)
    return {"one_client": single, "concurrent": concurrent}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="Run directory to serve (when no --url is given).")
    parser.add_argument("--url", help="A running server on 127.0.0.1, e.g. http://127.0.0.1:8000.")
    parser.add_argument(
        "--server-threads", type=int, help="--threads of the server it starts (default: its own choice)."
    )
    parser.add_argument(
        "--server-engines", type=int, help="--engines of the server it starts (default: its own choice)."
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="Requests per client in the concurrent phase.")
    parser.add_argument("--single-requests", type=int, default=8, help="Requests of the single client.")
    parser.add_argument("--max-tokens", type=int, default=500, help="Characters asked for per request.")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--prompt", default="time traveller")
    parser.add_argument("--json", dest="json_path", help="Also write the result here.")
    options = parser.parse_args()
    if not (1 <= options.clients <= 256 and 1 <= options.requests <= 100 and 1 <= options.single_requests <= 100):
        raise SystemExit("bounded load: --clients in [1, 256], --requests and --single-requests in [1, 100]")
    if not 1 <= options.max_tokens <= 10_000:
        raise SystemExit("bounded load: --max-tokens in [1, 10000]")

    server = None
    if options.url:
        parts = urlsplit(options.url)
        if parts.hostname not in LOOPBACK or parts.port is None:
            raise SystemExit("--url must be http://127.0.0.1:PORT (this load generator only talks to this machine)")
        host, port = parts.hostname, parts.port
    else:
        server, port = start_server(options)
        host = "127.0.0.1"
    try:
        result = asyncio.run(measure(host, port, options))
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    single, concurrent = result["one_client"], result["concurrent"]
    record = {
        "checkpoint": options.checkpoint,
        "server_threads": options.server_threads or "default",
        "server_engines": options.server_engines or "default",
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "cpus": os.cpu_count(),
        **result,
        "speedup": round(concurrent["chars_per_sec"] / single["chars_per_sec"], 2),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if options.json_path:
        with open(options.json_path, "w", encoding="utf-8") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
