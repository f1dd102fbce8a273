"""HTTP clients following app logs through the control plane flat out, in a process of their own.

``python -m bench.log_readers URL DATAPLANE ENV APP [APP ...]`` (admin token in
``$CHOREO_BENCH_TOKEN``, CA bundle in ``$CHOREO_BENCH_CA``) opens ``GET .../apps/APP/logs?follow=true``
for each app and reads as fast as the control plane sends. Every 0.1 s it prints one JSON line:
``{"bytes": [...], "failed": "..." | null}``, the bytes read per stream so far.

Why a process: the readers are a user's terminals, not part of the data plane or the control plane.
Run in the benchmark's own process, their HTTP parsing took the event loop the agent (and the
control plane) run on, and the starvation figure measured the benchmark's readers as much as the
tunnel.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys

import httpx


async def main(url: str, dp: str, env: str, apps: list[str]) -> None:
    ctx = ssl.create_default_context(cafile=os.environ["CHOREO_BENCH_CA"])
    headers = {"Authorization": f"Bearer {os.environ['CHOREO_BENCH_TOKEN']}"}
    counts = [0] * len(apps)
    failed: list[str] = []

    async def follow(i: int, http: httpx.AsyncClient) -> None:
        path = f"/api/v1/dataplanes/{dp}/environments/{env}/apps/{apps[i]}/logs"
        try:
            async with http.stream("GET", path, params={"follow": "true"}) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread())[:200]
                    raise RuntimeError(f"logs of {apps[i]}: {resp.status_code} {body!r}")
                async for chunk in resp.aiter_bytes():
                    counts[i] += len(chunk)
            raise RuntimeError(f"logs of {apps[i]}: the stream ended")
        except Exception as exc:  # reported to the benchmark, which fails the measurement
            failed.append(f"{type(exc).__name__}: {exc}")

    async with httpx.AsyncClient(base_url=url, headers=headers, verify=ctx, timeout=None) as http:
        tasks = [asyncio.create_task(follow(i, http)) for i in range(len(apps))]
        try:
            while True:
                print(json.dumps({"bytes": counts, "failed": failed[0] if failed else None}), flush=True)
                await asyncio.sleep(0.1)
        finally:
            for t in tasks:
                t.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
