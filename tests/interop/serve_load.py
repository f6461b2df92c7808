"""A load test for `tinyllm serve`: many clients stream completions at once; each checks that
its stream is whole and well formed (every chunk parses, the finish reason comes last, then the
token counts, then [DONE]); then the times are reported: time to the first token (p50, p99),
tokens per second of each client (p50), tokens per second over all clients, and the total time.

Every request asks for exactly --max-tokens tokens (ignore_eos: the stories' ends do not cut
them short) with its own seed, so runs compare. Needs httpx (pip install httpx). For example,
with the quickstart model:

    cargo run --release -- run pipelines/quickstart.toml
    target/release/tinyllm serve --checkpoint runs/quickstart/default --parallel 2 &
    python3 tests/interop/serve_load.py http://127.0.0.1:8080 --clients 32 --max-tokens 128
"""

import argparse
import asyncio
import json
import statistics
import sys
import time

import httpx


def percentile(values, p):
    """The p-th percentile (0-100) of `values`, nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def one_client(client, url, index, args):
    """Streams one completion; returns (time to first token, tokens, seconds) from the send."""
    body = {"prompt": args.prompt, "max_tokens": args.max_tokens, "seed": index,
            "temperature": 1.0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = None
    finish, usage, done = None, None, False
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise AssertionError(f"client {index}: {response.status_code} {await response.aread()}")
        async for line in response.aiter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            assert not done, f"client {index}: data after [DONE]"
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            if chunk.get("usage"):
                assert finish is not None, f"client {index}: token counts before the finish"
                usage = chunk["usage"]
                continue
            assert finish is None, f"client {index}: a chunk after the finish reason"
            choice = chunk["choices"][0]
            if choice["text"] and first is None:
                first = time.perf_counter() - started
            finish = choice["finish_reason"]
    elapsed = time.perf_counter() - started
    assert done, f"client {index}: no [DONE]"
    assert finish in ("length", "stop"), f"client {index}: finish_reason {finish}"
    assert usage is not None, f"client {index}: no token counts"
    return first if first is not None else elapsed, usage["completion_tokens"], elapsed


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one_client(client, url, i, args)
                                         for i in range(args.clients)))
        total = time.perf_counter() - started
    first = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    # A client's rate once its first token came: what a reader sees while it streams.
    rates = [(r[1] - 1) / (r[2] - r[0]) for r in results if r[1] > 1 and r[2] > r[0]]
    figures = {
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "tokens": tokens,
        "ttft_p50_s": percentile(first, 50),
        "ttft_p99_s": percentile(first, 99),
        "client_tokens_per_s_p50": statistics.median(rates) if rates else 0.0,
        "aggregate_tokens_per_s": tokens / total,
        "total_s": total,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{args.clients} clients x {args.max_tokens} tokens: all {args.clients} streams "
              f"complete and well formed, {tokens} tokens")
        print(f"time to first token: p50 {figures['ttft_p50_s']:.3f} s, "
              f"p99 {figures['ttft_p99_s']:.3f} s")
        print(f"tokens/s per client (p50): {figures['client_tokens_per_s_p50']:.1f}")
        print(f"tokens/s over all clients: {figures['aggregate_tokens_per_s']:.1f}")
        print(f"total: {total:.2f} s")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
