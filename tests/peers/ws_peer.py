#!/usr/bin/python3
"""HTTP and WebSocket peers for ams-agent's load-balancer tests and
bench/lb.sh, on loopback only, built on python3-websockets (Debian's, run
with /usr/bin/python3).

  ws_peer.py server ADDR:PORT NAME [ADDR:PORT NAME ...]
      Stands in for AMS nodes' port 5080: a plain GET answers 200 with
      "NAME\\n" (what the balancer's health check and curl see); a
      WebSocket on any path gets the message "NAME" first, then every
      message it sends back as "NAME:<message>". Prints "READY" once every
      address listens.

  ws_peer.py clients URL COUNT
      Opens COUNT WebSockets to URL through the balancer, one after the
      other, and prints "OPEN <i> <name>" for each (the name the node sent
      first), or "FAILED <i> <why>". Then reads commands on stdin:
        check   every open connection sends "ping" and must get its echo
                within 2 s; prints "ALIVE <n> <name>..." then "DROPPED <m>"
                (connections that closed or did not answer, counted once)
        quit
"""

import asyncio
import http
import sys

import websockets


def split_addr(a):
    host, _, port = a.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(pairs):
    servers = []
    for addr, name in pairs:
        host, port = split_addr(addr)

        async def handler(ws, path=None, name=name):
            try:
                await ws.send(name)
                async for msg in ws:
                    await ws.send("%s:%s" % (name, msg))
            except websockets.ConnectionClosed:
                pass

        def plain(path, headers, name=name):
            if headers.get("Upgrade", "").lower() != "websocket":
                body = (name + "\n").encode()
                return (
                    http.HTTPStatus.OK,
                    [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                    body,
                )
            return None

        servers.append(
            await websockets.serve(handler, host, port, process_request=plain, ping_interval=None)
        )
    print("READY", flush=True)
    await asyncio.Future()


async def clients(url, count):
    conns = []
    for i in range(count):
        try:
            ws = await websockets.connect(url, open_timeout=5, ping_interval=None, close_timeout=1)
            name = await asyncio.wait_for(ws.recv(), 5)
            conns.append([ws, name, True])
            print("OPEN %d %s" % (i, name), flush=True)
        except Exception as e:  # noqa: BLE001 - reported to the test
            print("FAILED %d %s" % (i, type(e).__name__), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        cmd = line.strip()
        if cmd in ("", "quit"):
            break
        if cmd == "check":
            alive, dropped = [], 0
            for c in conns:
                ws, name, ok = c
                if not ok:
                    continue
                try:
                    await ws.send("ping")
                    answer = await asyncio.wait_for(ws.recv(), 2)
                    if answer != "%s:ping" % name:
                        raise ValueError(answer)
                    alive.append(name)
                except Exception:  # noqa: BLE001 - a dropped connection
                    c[2] = False
                    dropped += 1
            print("ALIVE %d %s" % (len(alive), " ".join(alive)), flush=True)
            print("DROPPED %d" % dropped, flush=True)
    for ws, _, ok in conns:
        if ok:
            await ws.close()


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "server" and len(sys.argv) % 2 == 0:
        pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
        asyncio.run(serve(pairs))
    elif len(sys.argv) == 4 and sys.argv[1] == "clients":
        asyncio.run(clients(sys.argv[2], int(sys.argv[3])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
