"""Serve bench.bare:app with pyvoy exactly as depot-api serves its app: N processes on one
port (SO_REUSEPORT), each with the server options of depot_api.server.supervisor. pyvoy hands this
process's sys.path (which has the repository root: run it with `python -m`) to its workers."""

from __future__ import annotations

import argparse
import asyncio
import signal

from pyvoy import PyvoyServer


async def main(workers: int) -> None:
    async def start(port: int) -> PyvoyServer:
        server = PyvoyServer(
            "bench.bare:app",
            address="127.0.0.1",
            port=port,
            lifespan=True,
            tls_enable_http3=False,
            stdout=None,
            stderr=None,
        )
        await server.start()
        return server

    first = await start(0)
    servers = [first] + [await start(first.listener_port) for _ in range(workers - 1)]
    print(f"bare listening on http://127.0.0.1:{first.listener_port}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await asyncio.gather(*(s.stop() for s in servers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1)
    asyncio.run(main(parser.parse_args().workers))
