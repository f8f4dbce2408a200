"""Fleet benchmark: `python -m tests.benchmark_fleet [--nodes 1000] [--k 1,10,50] [--cycle S]`.

For each k: `hostbuild fleet serve` (its own process, one group of k slots, pre-reboots held up
to --wait seconds for a slot) over a three-member etcd on 127.0.0.1, and N asyncio nodes that
speak FleetLock: ask for the lock, "reboot" for --cycle seconds once granted, report steady
state. Prints the rollout time against the ideal ceil(N/k) x cycle, the most nodes down at once
seen by the clients (a node is down from its grant until it asks to release) and in etcd (every
revision of the group key, walked back through etcd's history), and the coordinator's CPU and
peak RSS. Targets: overhead <= 5 %, never more than k down, < 200 MiB and < 1 core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from builder.fleet.store import Store
from tests.etcdcluster import EtcdCluster, etcd_cluster, max_holders_in_etcd
from tests.fleetserve import fleet_serve

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Nodes:
    """The simulated fleet: counts who is down, as the nodes see it."""

    def __init__(self, port: int, cycle: float) -> None:
        self.port = port
        self.cycle = cycle
        self.down = 0
        self.max_down = 0
        self.requests = 0
        self.refusals: dict[str, int] = {}

    async def call(self, endpoint: str, node_id: str) -> int:
        body = json.dumps({"client_params": {"id": node_id, "group": "default"}}).encode()
        head = (
            f"POST /v1/{endpoint} HTTP/1.1\r\nhost: 127.0.0.1\r\nfleet-lock-protocol: true\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        self.requests += 1
        writer.write(head + body)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        status = int(answer.split(b" ", 2)[1])
        if status != 200:
            kind = json.loads(answer.split(b"\r\n\r\n", 1)[1]).get("kind", "?")
            self.refusals[kind] = self.refusals.get(kind, 0) + 1
        return status

    async def node(self, node_id: str) -> None:
        while await self.call("pre-reboot", node_id) != 200:
            await asyncio.sleep(0.01)
        self.down += 1
        self.max_down = max(self.max_down, self.down)
        await asyncio.sleep(self.cycle)  # rebooting
        self.down -= 1  # back up: from here on it only asks to release
        while await self.call("steady-state", node_id) != 200:
            await asyncio.sleep(0.01)

    async def run(self, count: int) -> float:
        start = time.monotonic()
        await asyncio.gather(*(self.node(f"node-{i:04d}") for i in range(count)))
        return time.monotonic() - start


def run_one(
    etcd: EtcdCluster, nodes: int, k: int, cycle: float, wait: float, log: Path
) -> dict[str, Any]:
    prefix = f"/hostbuild-bench/{k}-{time.time_ns()}/"
    options = ["--slots", str(k), "--wait", str(wait), "--reboot-deadline", "10m"]
    with fleet_serve(etcd.urls, prefix, options, log) as (port, proc):
        fleet = Nodes(port, cycle)
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        took = asyncio.run(fleet.run(nodes))
        cpu = cpu_seconds(proc.pid) - cpu0
        wall = time.monotonic() - wall0
        rss = peak_rss_mib(proc.pid)
    store = Store(etcd.urls, prefix=prefix)
    etcd_most, versions = max_holders_in_etcd(store, "default")
    ideal = math.ceil(nodes / k) * cycle
    return {
        "k": k,
        "nodes": nodes,
        "cycle": cycle,
        "rollout_s": round(took, 2),
        "ideal_s": round(ideal, 2),
        "overhead_pct": round(100 * (took - ideal) / ideal, 2),
        "max_down_clients": fleet.max_down,
        "max_down_etcd": etcd_most,
        "group_key_versions": versions,
        "requests": fleet.requests,
        "refusals": fleet.refusals,
        "coordinator_cpu_cores": round(cpu / wall, 3),
        "coordinator_peak_rss_mib": round(rss, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--k", default="1,10,50", help="slot counts to run, comma-separated")
    parser.add_argument(
        "--cycle",
        default="0.25",
        help="seconds a node is down: one, or one per k (comma-separated)",
    )
    parser.add_argument("--wait", type=float, default=30.0, help="the server's --wait (long poll)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="hostbuild-bench-") as tmp, etcd_cluster() as etcd:
        ks = [int(x) for x in args.k.split(",")]
        cycles = [float(x) for x in args.cycle.split(",")]
        if len(cycles) == 1:
            cycles *= len(ks)
        if len(cycles) != len(ks):
            parser.error("--cycle takes one value or one per k")
        for k, cycle in zip(ks, cycles, strict=True):
            r = run_one(etcd, args.nodes, k, cycle, args.wait, Path(tmp) / f"serve-{k}.log")
            results.append(r)
            ok = r["overhead_pct"] <= 5 and max(r["max_down_clients"], r["max_down_etcd"]) <= k
            ok = ok and r["coordinator_peak_rss_mib"] < 200 and r["coordinator_cpu_cores"] < 1
            print(
                f"k={k:<3} nodes={r['nodes']} cycle={r['cycle']}s: rollout {r['rollout_s']}s, "
                f"ideal {r['ideal_s']}s, overhead {r['overhead_pct']}%; max down: clients "
                f"{r['max_down_clients']}, etcd {r['max_down_etcd']} ({r['group_key_versions']} "
                f"versions); coordinator {r['coordinator_cpu_cores']} cores, peak RSS "
                f"{r['coordinator_peak_rss_mib']} MiB; {r['requests']} requests, refusals "
                f"{r['refusals']}; targets {'met' if ok else 'MISSED'}",
                flush=True,
            )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
