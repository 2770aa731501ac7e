"""Portal read-route benchmark: requests/s and p50/p99 latency at 50 concurrent clients.

One run measures both databases: for SQLite (a file in a temp dir) and PostgreSQL (a fresh
database on 127.0.0.1:5432) it starts the portal as a real server process
(``sangsaeng portal serve`` = uvicorn on 127.0.0.1), seeds it through its own API and the
site client (real enrolments, runs, a signed release), then drives each main read route with
load tools in other processes: for capacity (closed loop) ``wrk`` when installed (Debian's
``wrk``, a bench tool only), else a Python asyncio/httpx generator; for latency at a fixed
offered rate (open loop, which wrk cannot do) this script's own generator, HTTP/1.1 on asyncio
streams (``python bench/portal.py --loadgen URL --paced RATE``). Each tool's CPU per request is
measured and reported. Writes the "portal" section of BENCHMARKS.md.

    python bench/portal.py [--seconds 10] [--connections 50] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import write_section  # noqa: E402

PG_ADMIN = os.environ.get("SANGSAENG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PASSWORD = "bench-password-123"
TARGET_P99_MS = 50.0
TARGET_RPS = 1000.0


def _cpu_seconds(match: Callable[[int, int, bytes], bool]) -> float:
    """User + system CPU seconds of the live processes for which `match(pid, ppid, cmdline)` holds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if match(int(entry.name), int(fields[1]), cmdline):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def server_cpu(pid: int) -> float:
    """CPU seconds used so far by the portal server `pid` and its worker processes (live ones)."""
    children: dict[int, set[int]] = {}

    def note(p: int, ppid: int, _cmd: bytes) -> bool:
        children.setdefault(ppid, set()).add(p)
        return False

    _cpu_seconds(note)
    family, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            family.add(child)
            todo.append(child)
    return _cpu_seconds(lambda p, _ppid, _cmd: p in family)


def database_cpu(database: str | None) -> float:
    """CPU seconds used so far by the PostgreSQL backends serving `database` (0 for SQLite: it is in-process)."""
    if database is None:
        return 0.0
    needle = f" {database} ".encode()
    return _cpu_seconds(lambda _p, _ppid, cmd: cmd.startswith(b"postgres:") and needle in cmd)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], port: int, workers: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "coordinator.cli",
        "portal",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    # Its own process group: uvicorn's workers are its children, and a failed start must end them too
    # (left running, they hold the stderr pipe open and the read below never ends).
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    import httpx

    deadline = time.monotonic() + 300  # importing the portal takes minutes on a loaded machine
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/keys/release-signing", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise RuntimeError(f"portal did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


def seed(base: str, env: dict[str, str], tmp: Path, runs: int = 20, sites: int = 6) -> dict[str, str]:
    """A realistic federation through the portal's own API; returns the routes to load and a token."""
    import httpx

    from client import portal_commands as pc
    from tests.portal.factories import model_artifact  # a real MLP artifact for the task

    subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "portal",
            "create-admin",
            "--email",
            "bench@anchor.kr",
            "--org",
            "Bench Anchor",
            "--password",
            PASSWORD,
        ],
        env=env,
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    token = httpx.post(
        f"{base}/api/v1/login/access-token", data={"username": "bench@anchor.kr", "password": PASSWORD}
    ).json()
    anchor = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=30)
    fid = anchor.post(
        "/api/v1/federations", json={"name": "Bench", "task_name": "predictive-maintenance", "threshold": 0.5}
    ).json()["id"]
    names = [f"site-{i:02d}" for i in range(sites)]
    for name in names:
        invite = anchor.post(
            f"/api/v1/federations/{fid}/invites", json={"organisation_name": f"Supplier {name}", "site_name": name}
        ).json()
        record = pc.enroll(base, invite["token"], tmp / name)
        anchor.post(f"/api/v1/memberships/{record['membership_id']}/approve")
    coordinator = anchor.post(f"/api/v1/federations/{fid}/tokens", json={"name": "bench"}).json()["token"]
    coord = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {coordinator}"}, timeout=30)
    import base64
    import hashlib

    artifact = model_artifact()
    run_id = 0
    for r in range(runs):
        privacy = {
            n: {"epsilon": 1.0 + r * 0.1, "budget_epsilon": 8.0, "epsilon_by_round": [0.1 * k for k in range(1, 11)]}
            for n in names
        }
        body = {
            "run_ref": f"run-{r:03d}",
            "sites": names,
            "privacy": privacy,
            "rounds": [
                {
                    "round": k,
                    "metrics": {"roc_auc": 0.8 + 0.01 * k, "loss": 1 / k},
                    "per_site": {n: {"roc_auc": 0.8} for n in names},
                }
                for k in range(1, 11)
            ],
        }
        run_id = coord.post(f"/api/v1/federations/{fid}/runs", json=body).json()["id"]
        if r % 4 == 3:
            rel = coord.post(
                f"/api/v1/federations/{fid}/releases",
                json={
                    "run_id": run_id,
                    "version": f"1.{r}.0",
                    "artifact_sha256": hashlib.sha256(artifact).hexdigest(),
                    "artifact_b64": base64.b64encode(artifact).decode(),
                },
            ).json()
            anchor.post(f"/api/v1/releases/{rel['id']}/approve")
            anchor.post(f"/api/v1/releases/{rel['id']}/publish")
    return {
        "token": token["access_token"],
        "GET /federations": "/api/v1/federations",
        "GET /federations/{id}/memberships": f"/api/v1/federations/{fid}/memberships",
        "GET /federations/{id}/site-keys": f"/api/v1/federations/{fid}/site-keys",
        "GET /federations/{id}/releases": f"/api/v1/federations/{fid}/releases",
        "GET /federations/{id}/privacy": f"/api/v1/federations/{fid}/privacy",
        "GET /runs/{id}": f"/api/v1/runs/{run_id}",
    }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, token: str, seconds: int, connections: int) -> dict[str, float]:
    """Closed loop with wrk (2 threads); its own CPU per request from the rusage of the waited-for child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "10s",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency(pct: str) -> float:
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * _UNITS[unit]

    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    served = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": latency("50"),
        "p99": latency("99"),
        "errors": float(errors.group(1)) if errors else 0.0,
        "requests": served,
        "loadgen_cpu_ms": cpu * 1000 / max(served, 1.0),
    }


async def _loadgen(url: str, token: str, seconds: float, connections: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            response = await client.get(url)
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += response.status_code >= 300

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30) as client:
        start = time.perf_counter()
        cpu = time.process_time()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
    qs = statistics.quantiles(latencies, n=100)
    return {
        "rps": len(latencies) / elapsed,
        "p50": qs[49],
        "p99": qs[98],
        "errors": float(errors),
        "requests": float(len(latencies)),
        "loadgen_cpu_ms": cpu * 1000 / len(latencies),
    }


async def _paced(url: str, token: str, seconds: float, clients: int, rate: float) -> dict[str, float]:
    """Open loop: each of `clients` keep-alive connections sends `rate` requests/s on a fixed schedule.

    Latency counts from the scheduled send time, so a slow server cannot hide its queueing
    by delaying the next request (no coordinated omission). HTTP/1.1 is spoken directly on
    asyncio streams (uvloop when installed): httpx cost 7-10 ms of CPU per request, which at
    200 requests/s is most of two cores, taken from the server being measured.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    errors = 0
    interval = 1.0 / rate

    async def worker(index: int, start: float) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        due = start + interval * index / clients  # spread the clients over one interval
        try:
            while due < start + seconds:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                latencies.append((time.perf_counter() - due) * 1000)
                errors += not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2"))
                due += interval
        finally:
            writer.close()

    start = time.perf_counter() + 0.2  # every connection open before the first send
    cpu = time.process_time()
    await asyncio.gather(*(worker(i, start) for i in range(clients)))
    cpu = time.process_time() - cpu
    qs = statistics.quantiles(latencies, n=100)
    return {
        "rps": len(latencies) / seconds,
        "p50": qs[49],
        "p99": qs[98],
        "errors": float(errors),
        "loadgen_cpu_ms": cpu * 1000 / len(latencies),
    }


def run_paced(url: str, token: str, seconds: int, clients: int, rate: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--loadgen", url, "--token", token, "--seconds", str(seconds),
         "--connections", str(clients), "--paced", str(rate)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def run_python_loadgen(url: str, token: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--loadgen",
            url,
            "--token",
            token,
            "--seconds",
            str(seconds),
            "--connections",
            str(connections),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure_backend(
    name: str, url: str, args: argparse.Namespace, tmp: Path, database: str | None = None
) -> tuple[list[tuple[str, dict]], str]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SANGSAENG_PORTAL_ENVIRONMENT": "production",
        "SANGSAENG_PORTAL_SECRET_KEY": uuid.uuid4().hex,
        "SANGSAENG_PORTAL_DATA_DIR": str(tmp / name),
        "SANGSAENG_PORTAL_DB_POOL_SIZE": "10",
    }
    port = free_port()
    server = start_server(env, port, args.workers)
    base = f"http://127.0.0.1:{port}"
    try:
        routes = seed(base, env, tmp / f"{name}-sites")
        token = routes.pop("token")
        tool = "wrk, 2 threads" if shutil.which("wrk") else "python asyncio/httpx load generator"
        results = []
        for label, path in routes.items():
            load = run_wrk if shutil.which("wrk") else run_python_loadgen
            load(base + path, token, 2, args.connections)  # warm-up
            before = server_cpu(server.pid), database_cpu(database)
            stats = load(base + path, token, args.seconds, args.connections)
            after = server_cpu(server.pid), database_cpu(database)
            served = stats.get("requests") or stats["rps"] * args.seconds
            # CPU per request, whatever else the machine runs: what two idle cores would allow.
            stats["server_cpu_ms"] = (after[0] - before[0]) * 1000 / served
            stats["db_cpu_ms"] = (after[1] - before[1]) * 1000 / served
            paced = {rate: run_paced(base + path, token, args.seconds, args.connections, rate) for rate in args.rate}
            print(
                f"{name:10s} {label:38s} {stats['rps']:8.0f} req/s  p50 {stats['p50']:6.1f} ms  "
                f"p99 {stats['p99']:6.1f} ms  non-2xx {stats['errors']:.0f}  CPU/request: server "
                f"{stats['server_cpu_ms']:.2f} ms, database {stats['db_cpu_ms']:.2f} ms, load generator "
                f"{stats.get('loadgen_cpu_ms', float('nan')):.2f} ms | paced "
                + "; ".join(f"{r:g}/s: p50 {v['p50']:.1f} ms p99 {v['p99']:.1f} ms" for r, v in paced.items()),
                flush=True,
            )
            results.append((label, {**stats, "paced": paced}))
        return results, tool
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rate", type=float, nargs="+", default=[1.0, 4.0], help="requests/s per client in the paced measurements"
    )
    parser.add_argument("--paced", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen and args.paced:
        try:
            import uvloop  # the portal's server uses it too (uvicorn's default loop when installed)

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        print(json.dumps(runner(_paced(args.loadgen, args.token, args.seconds, args.connections, args.paced))))
        return
    if args.loadgen:  # the closed-loop fallback when wrk is not installed
        print(json.dumps(asyncio.run(_loadgen(args.loadgen, args.token, args.seconds, args.connections))))
        return

    from sqlalchemy import create_engine, text

    from portal.core.db import migrate

    rows: list[str] = []
    paced_rows: list[str] = []
    capacity: list[tuple[str, float]] = []
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    tools = set()
    with tempfile.TemporaryDirectory(prefix="portal-bench-") as tmpdir:
        tmp = Path(tmpdir)
        backends = [("SQLite", f"sqlite:///{tmp / 'bench.db'}")]
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        pg_name = f"sangsaeng_portal_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
        backends.append(("PostgreSQL", admin.url.set(database=pg_name).render_as_string(hide_password=False)))
        try:
            for name, url in backends:
                migrate(url)
                results, tool = measure_backend(name, url, args, tmp, pg_name if name == "PostgreSQL" else None)
                tools.add(tool)
                for label, s in results:
                    cpu = s["server_cpu_ms"] + s["db_cpu_ms"]
                    lg = s.get("loadgen_cpu_ms")
                    capacity.append((name, s["rps"]))
                    rows.append(
                        f"| {name} | `{label}` | {s['rps']:.0f} | {s['p50']:.1f} | {s['p99']:.1f} "
                        f"| {s['server_cpu_ms']:.2f} | {s['db_cpu_ms']:.2f} | {lg if lg is None else round(lg, 2)} "
                        f"| {cores * 1000 / cpu:.0f} | {cores * 1000 / (cpu + (lg or 0.0)):.0f} |"
                    )
                    for rate, p in s["paced"].items():
                        met = "yes" if p["p99"] < TARGET_P99_MS and p["errors"] == 0 else "**no**"
                        paced_rows.append(
                            f"| {rate * args.connections:.0f} | {name} | `{label}` | {p['rps']:.0f} | {p['p50']:.1f} "
                            f"| {p['p99']:.1f} | {p['loadgen_cpu_ms']:.2f} | {met} |"
                        )
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
    load_after = os.getloadavg()
    verdicts = []
    for rate in args.rate:
        offered = f"| {rate * args.connections:.0f} |"
        ok = all(r.endswith("| yes |") for r in paced_rows if r.startswith(offered))
        verdicts.append(
            f"- {args.connections} clients at {rate:g} request/s each ({rate * args.connections:.0f} requests/s "
            f"offered): p99 under {TARGET_P99_MS:.0f} ms on every route and both databases: "
            f"**{'met' if ok else 'MISSED'}**"
        )
    body = "\n".join(
        [
            "## Portal: read routes at 50 concurrent clients (`bench/portal.py`)",
            "",
            f"Measured in one run on {platform.node()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}: "
            f"the portal served by `sangsaeng portal serve --workers {args.workers}` (uvicorn, 127.0.0.1) with a "
            "seeded federation (6 approved sites, 20 DP runs of 10 rounds, 5 signed releases), as the anchor admin "
            "(bearer token; every request authenticates and checks access in the database). Load tools run in a "
            "second process and share the server's two cores. The machine is shared: its load average "
            f"(1/5/15 min) was {' / '.join(f'{x:.1f}' for x in load_before)} when the run began and "
            f"{' / '.join(f'{x:.1f}' for x in load_after)} when it ended, on {cores} cores; every figure below "
            "depends on it, the CPU per request least (it too grows when the cores are contended).",
            "",
            f"**Latency at {args.connections} concurrent clients** (open loop: each client sends requests on a fixed "
            f"schedule, {args.seconds} s per route and rate; latency from the scheduled send time, so queueing is "
            "counted; every row from this script's own open-loop generator, `python bench/portal.py --loadgen URL "
            "--paced RATE`: HTTP/1.1 written directly on asyncio streams over uvloop, one keep-alive connection per "
            "client, since wrk has no fixed-rate mode; its CPU per request is in the table):",
            "",
            "| offered req/s | database | route | requests/s | p50 ms | p99 ms | load generator CPU ms/req "
            "| p99 < 50 ms |",
            "|---|---|---|---|---|---|---|---|",
            *paced_rows,
            "",
            f"**Capacity** ({' and '.join(sorted(tools))}, closed loop: {args.connections} connections sending "
            f"back to back, {args.seconds} s per route after a 2 s warm-up). Here latency is queueing by "
            "construction (Little's law: 50 in flight / requests per second). CPU per request is the CPU "
            "time the server's processes (and, for PostgreSQL, the database's backends) and the load generator "
            "used during the closed-loop run, divided by the requests served; the ceilings are what "
            f"{cores} idle cores would serve at that cost, without and with the load generator on them:",
            "",
            "| database | route | requests/s | p50 ms | p99 ms | server CPU ms/req | database CPU ms/req "
            f"| load generator CPU ms/req | ceiling req/s ({cores} cores, server) "
            f"| ceiling req/s ({cores} cores, with load generator) |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Targets (p99 under 50 ms for reads at 50 concurrent clients; {TARGET_RPS:.0f} requests/s at saturation):",
            *verdicts,
            *(
                f"- at saturation on {backend}: {TARGET_RPS:.0f} requests/s on every route: "
                f"**{'met' if all(r >= TARGET_RPS for b, r in capacity if b == backend) else 'MISSED'}** "
                f"(lowest {min(r for b, r in capacity if b == backend):.0f})"
                for backend in dict.fromkeys(b for b, _ in capacity)
            ),
        ]
    )
    print(f"wrote {write_section('portal', body)}")


if __name__ == "__main__":
    main()
