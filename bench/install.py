"""Supplier install: size of a fresh base install, idle memory of `client start`, one round on one core.

    python bench/install.py [--out bench-out/install] [--reuse] [--idle-seconds 30] [--reps 3] [--no-write]

1. **Install.** A fresh venv, the pinned CPU torch wheel, then ``pip install`` of this working
   tree *without extras* (what ``pip install sangsaeng`` gives a supplier), from the package
   registry. ``pip list`` must hold no Ray, no portal server library and no test tool. Sizes:
   site-packages as ``du`` counts it, with torch and without, with the bytecode pip compiles at
   install time and without it (``pip install --no-compile``), and the whole venv.
2. **Idle memory.** ``sangsaeng client start`` from that venv (its SuperNode and the worker that
   has imported the ClientApp, torch included) pointed at a loopback SuperLink address nothing
   listens on, so the SuperNode keeps retrying: the resident memory of the whole process tree,
   RSS summed (shared pages counted in each process) and PSS (shared pages split), sampled
   every second over `--idle-seconds`, from 10 s after the SuperNode started and the start-up
   import check ended (the start-up peak is reported apart).
3. **A round.** In that venv's Python, pinned to one core (``taskset -c 0``, one torch thread):
   a whole one-round federation of the real ServerApp and ClientApp in one process
   (``tests.loopback``, no Ray): profile, scaler, one round of local training (the defaults:
   `FederationConfig`'s local epochs and batch size), the site's evaluation. The site's export
   is AI4I 2020 resampled to 14,286 rows, so that its 70 % training split holds 10,000 rows.

Budget: the install downloads about 0.5 GB (3 min on a quiet machine, 9 on the shared one); then
about 2 min of measurements (``--reuse`` skips the install, ``--report-only`` only rewrites the section). Targets
(issue 17): install at most 1.3 GB, idle memory at most 300 MB, a round under 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sangsaeng import airgap  # noqa: E402  (stdlib only: this file also runs in the light venv)

TORCH = "torch==2.13.0"
SITE_ROWS = 14_286  # x 0.7 (the site's training split) = 10,000 rows
# Distributions a supplier's base install must not hold (tests/test_packaging.py checks the metadata).
FORBIDDEN = {
    "ray", "psycopg", "psycopg-binary", "argon2-cffi", "sqlmodel", "pydantic-settings", "python-multipart",
    "matplotlib", "pyarrow", "pillow", "elpv-dataset", "pytest", "hypothesis", "schemathesis", "playwright", "mypy",
    "ruff",
}  # fmt: skip
# Installed by Flower 1.42 itself (its SuperLink's), not by Sangsaeng's base requirements.
VIA_FLOWER = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "starlette")
MB = 1_000_000
MIB = 1024 * 1024


# --- 1. install ----------------------------------------------------------------------------------


def _run(cmd: list[str], **kwargs: Any) -> float:
    """Run `cmd` (failing loudly); its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, **kwargs)
    return time.perf_counter() - start


def _source_copy(dest: Path) -> Path:
    """This working tree's files (tracked and untracked, not ignored) under `dest`: what pip builds."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split("\0")  # fmt: skip
    shutil.rmtree(dest, ignore_errors=True)
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def install(venv: Path, src: Path) -> dict[str, float]:
    """A fresh venv with the pinned torch and the base package; seconds of each step."""
    import shutil

    shutil.rmtree(venv, ignore_errors=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    seconds = {"venv_s": _run([sys.executable, "-m", "venv", str(venv)])}
    seconds["torch_s"] = _run([*pip, TORCH])
    seconds["package_s"] = _run([*pip, str(src)])
    return seconds


def _du(path: Path, *, skip_pycache: bool = False) -> int:
    """Bytes allocated on disk under `path`, as ``du`` counts them (each hard-linked file once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, dirs, files in os.walk(path):
        if skip_pycache:
            dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def sizes(venv: Path) -> dict[str, Any]:
    """Installed distributions and the sizes that matter (bytes)."""
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    names = sorted(d["name"].lower().replace("_", "-") for d in json.loads(listed))
    site = next((venv / "lib").glob("python3*/site-packages"))
    torch = [site / "torch", *site.glob("torch-*.dist-info")]
    total, compiled = _du(site), _du(site) - _du(site, skip_pycache=True)
    torch_bytes = sum(_du(p) for p in torch)
    return {
        "distributions": names,
        "forbidden_present": sorted(FORBIDDEN & set(names)),
        "via_flower": [n for n in VIA_FLOWER if n in names],
        "site_packages": total,
        "site_packages_no_pycache": total - compiled,
        "pycache": compiled,
        "torch": torch_bytes,
        "torch_no_pycache": sum(_du(p, skip_pycache=True) for p in torch),
        "venv": _du(venv),
        "bytecode_used": _used_bytecode(venv),
    }


def _used_bytecode(venv: Path) -> int:
    """Bytes of the compiled bytecode of every module a site imports (the ClientApp, the CLI, the SuperNode).

    What a ``--no-compile`` install writes into ``__pycache__`` on first use (pip's compiled files
    are the same ones): the install's size after the site has run.
    """
    script = (
        "import importlib.util, os, sys\n"
        "import sangsaeng.cli, client.node, client.client_app, flwr.supernode.cli\n"
        "paths = {importlib.util.cache_from_source(m.__file__) for m in list(sys.modules.values())\n"
        "         if getattr(m, '__file__', None) and m.__file__.endswith('.py')}\n"
        "print(sum(os.stat(p).st_blocks * 512 for p in paths if os.path.exists(p) and 'site-packages' in p))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(venv / "bin" / "python"), "-c", script], check=True, capture_output=True, text=True,
                          env={**env, **airgap.AIRGAP_ENV})  # fmt: skip
    return int(done.stdout.strip().splitlines()[-1])


# --- 2. idle memory ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site(out: Path, data: Path) -> tuple[Path, Path]:
    """An enrolled site's directory (key made as `client enrol` makes it) and a network CA certificate."""
    from client.portal_commands import generate_site_key
    from coordinator.pki import NetworkCerts, init_network

    site_dir = out / "site"
    site_dir.mkdir(parents=True, exist_ok=True)
    for old in site_dir.glob("site_key*"):
        old.unlink()
    generate_site_key(site_dir)
    (site_dir / "site.json").write_text(json.dumps({"site_name": "bench-site"}), encoding="utf-8")
    certs = NetworkCerts(out / "certs")
    if not certs.ca_cert.exists():
        init_network(certs, name="Bench Anchor", hosts=["127.0.0.1"])
    return site_dir, certs.ca_cert


def _tree(pid: int) -> list[int]:
    """`pid` and every process below it (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def _kib(pid: int, path: str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _is_idle(pids: list[int]) -> bool:
    """The worker and its SuperNode only: no import check running any more."""
    commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in pids if Path(f"/proc/{p}").exists()]
    checking = any(b"import client.client_app" in c for c in commands)
    return any(b"flower-supernode" in c for c in commands) and not checking


def idle_memory(venv: Path, out: Path, data: Path, seconds: float) -> dict[str, Any]:
    """RSS and PSS (bytes) of a running `client start` process tree, and what it is made of."""
    site_dir, ca = _site(out, data)
    cmd = [str(venv / "bin" / "sangsaeng"), "client", "start", "--superlink", f"127.0.0.1:{_free_port()}",
           "--ca-cert", str(ca), "--data", str(data), "--site-dir", str(site_dir),
           "--runtime-port", str(_free_port())]  # fmt: skip
    log = (out / "client-start.log").open("wb")
    # As on the site's PC: the light venv activated (its flower-supernode first on PATH), no PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(airgap.AIRGAP_ENV, PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv))
    process = subprocess.Popen(cmd, cwd=out, stdout=log, stderr=subprocess.STDOUT, env=env)
    samples: list[tuple[int, int, int]] = []
    startup_rss = 0  # the start: the ClientApp import check's child, then the SuperNode starting
    try:
        deadline, idle_from = time.monotonic() + 300, None
        while time.monotonic() < deadline and process.poll() is None:
            pids = _tree(process.pid)
            rss = sum(_kib(p, "status", "VmRSS") for p in pids) * 1024
            startup_rss = max(startup_rss, rss)
            if idle_from is None and _is_idle(pids):
                idle_from = time.monotonic() + 10  # the SuperNode up, the check done: settle, then measure
            if idle_from is not None and time.monotonic() >= idle_from:
                if time.monotonic() >= idle_from + seconds:
                    break
                pss = sum(_kib(p, "smaps_rollup", "Pss") for p in pids) * 1024
                samples.append((len(pids), rss, pss))
            time.sleep(1)
        pids = _tree(process.pid)
        torch_loaded = any(
            "libtorch_cpu" in Path(f"/proc/{p}/maps").read_text() for p in pids if Path(f"/proc/{p}").exists()
        )
        names = [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[:3] for p in pids]
        supernode_rss = sum(_kib(p, "status", "VmRSS") for p in pids[1:]) * 1024
    finally:
        survivors = _tree(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        for pid in survivors[1:]:  # the SuperNode runs in its own session
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
    if not samples:
        raise RuntimeError(f"`client start` ended before it could be measured; see {out / 'client-start.log'}")
    return {
        "processes": max(s[0] for s in samples),
        "rss_max": max(s[1] for s in samples),
        "rss_median": statistics.median(s[1] for s in samples),
        "pss_max": max(s[2] for s in samples),
        "samples": len(samples),
        "startup_rss_max": startup_rss,
        "alive_throughout": process.returncode in (0, None, -signal.SIGTERM) and len(samples) >= seconds - 2,
        "torch_loaded": torch_loaded,
        "supernode_rss": supernode_rss,
        "clientapp_process_rss": _clientapp_rss(venv),
        "commands": [" ".join(Path(p.decode()).name if i == 0 else p.decode() for i, p in enumerate(n)) for n in names],
    }


def _clientapp_rss(venv: Path) -> int:
    """RSS (bytes) of a process of the light venv that has imported the ClientApp: the worker after its first task."""
    script = "import client.client_app, pathlib; print(pathlib.Path('/proc/self/status').read_text())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    status = subprocess.run([str(venv / "bin" / "python"), "-c", script], check=True, capture_output=True, text=True,
                            env={**env, **airgap.AIRGAP_ENV}).stdout  # fmt: skip
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) * 1024


# --- 3. one round ------------------------------------------------------------------------------


def _round_worker(data: Path, out: Path) -> dict[str, Any]:
    """One whole one-round federation (ServerApp + the site's ClientApp) in this process, one torch thread."""
    import torch

    from client.client_app import make_client_app
    from client.site import SiteConfig
    from coordinator.config import FederationConfig
    from coordinator.server_app import make_server_app
    from models.tasks import get_task
    from tests.loopback import run_in_process

    torch.set_num_threads(1)
    spec = get_task("predictive-maintenance")
    config = FederationConfig(task=spec, num_rounds=1, min_sites=1, out_dir=out)
    site = SiteConfig(name="bench-site", data_path=data, holdout_seed=0, torch_threads=1)
    results: list[Any] = []
    server = make_server_app(config, expected_sites=1, on_result=results.append)
    start = time.perf_counter()
    run_in_process(server, make_client_app([site]), 1)
    seconds = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return {
        "seconds": seconds,
        "status": results[-1].status if results else "no result",
        "train_rows": manifest["sites"]["bench-site"]["n_train"],
        "local_epochs": config.local_epochs,
        "batch_size": config.batch_size,
        "peak_mib": _kib(os.getpid(), "status", "VmHWM") / 1024,
    }


def round_times(venv: Path, src: Path, out: Path, data: Path, reps: int) -> dict[str, Any]:
    """`reps` rounds, each in a fresh process of the light venv pinned to core 0; the median and every run."""
    import shutil

    runs = []
    for rep in range(reps):
        run_dir = out / f"round-{rep}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = ["taskset", "-c", "0", str(venv / "bin" / "python"), str(src / "bench" / "install.py"),
               "--round-worker", "--data", str(data), "--out", str(run_dir)]  # fmt: skip
        env = {**os.environ, **airgap.AIRGAP_ENV, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=src)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"round {rep}: {runs[-1]}", flush=True)
    seconds = [r["seconds"] for r in runs]
    return {**runs[0], "seconds": statistics.median(seconds), "all_seconds": seconds,
            "peak_mib": max(r["peak_mib"] for r in runs)}  # fmt: skip


def site_export(out: Path) -> Path:
    """AI4I 2020 resampled (seeded, with replacement) to `SITE_ROWS` rows."""
    import pandas as pd

    from models.datasets import sample_path

    path = out / "site-export.csv"
    pd.read_csv(sample_path("predictive-maintenance")).sample(n=SITE_ROWS, replace=True, random_state=0).to_csv(
        path, index=False
    )
    return path


# --- the section -------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def report(s: dict[str, Any], idle: dict[str, Any], rnd: dict[str, Any], timing: dict[str, float]) -> tuple[str, bool]:
    """The BENCHMARKS.md section and whether every target is met."""

    def gb(n: float) -> str:
        return f"{n / 1e9:.2f} GB ({n / 2**30:.2f} GiB)"

    def mb(n: float) -> str:
        return f"{n / MB:.0f} MB"

    install_ok = s["site_packages"] <= 1.3e9
    lean_ok = s["site_packages_no_pycache"] <= 1.3e9
    idle_ok = idle["rss_max"] <= 300 * MB  # the measure: RSS of the whole process tree
    round_ok = rnd["seconds"] < 30
    lines = [
        "## Supplier install: size, idle memory, one round on one core (`bench/install.py`)",
        "",
        f"A fresh venv, `pip install {TORCH}`, then `pip install sangsaeng` (this tree, no extras) from the "
        f"package registry: {len(s['distributions'])} distributions, installed in "
        f"{timing['torch_s'] + timing['package_s']:.0f} s (on this shared machine, under the other jobs' load). "
        "None of Ray, the portal server's own libraries "
        "(SQLModel, psycopg, argon2, pydantic-settings, python-multipart), matplotlib, pyarrow, Pillow or a test "
        f"tool is installed (found: {', '.join(s['forbidden_present']) or 'none'}). Flower 1.42 itself requires "
        f"{', '.join(s['via_flower'])} (its SuperLink's): they come with any install of `flwr`, unused by a site.",
        "",
        "| measure | figure | target | |",
        "|---|---|---|---|",
        f"| site-packages, as `pip install` leaves it (bytecode compiled) | {gb(s['site_packages'])} | ≤ 1.3 GB | "
        f"{_verdict(install_ok)} |",
        f"| site-packages with `pip install --no-compile` (bytecode left to first use) | "
        f"{gb(s['site_packages_no_pycache'])} | ≤ 1.3 GB | {_verdict(lean_ok)} |",
        f"| the same after the site has run (the bytecode of the modules it imports, {mb(s['bytecode_used'])}, "
        f"written on first use) | {gb(s['site_packages_no_pycache'] + s['bytecode_used'])} | ≤ 1.3 GB | "
        f"{_verdict(s['site_packages_no_pycache'] + s['bytecode_used'] <= 1.3e9)} |",
        f"| of which torch (compiled / not) | {mb(s['torch'])} / {mb(s['torch_no_pycache'])} | | |",
        f"| site-packages without torch (compiled / not) | {mb(s['site_packages'] - s['torch'])} / "
        f"{mb(s['site_packages_no_pycache'] - s['torch_no_pycache'])} | | |",
        f"| the whole venv (bin/ holds Flower's `uv` binary) | {gb(s['venv'])} | | |",
        f"| idle `client start`, {idle['processes']} processes, RSS summed | {mb(idle['rss_max'])} max, "
        f"{mb(idle['rss_median'])} median | ≤ 300 MB | {_verdict(idle_ok)} |",
        f"| idle `client start`, PSS (shared pages split between the processes) | {mb(idle['pss_max'])} max | | |",
        f"| after its first task (the worker then holds the ClientApp: SuperNode + a process that imported it) | "
        f"{mb(idle['supernode_rss'] + idle['clientapp_process_rss'])} | | |",
        f"| one round, {rnd['train_rows']:,} training rows, one core | {rnd['seconds']:.1f} s (median of "
        f"{len(rnd['all_seconds'])}: {', '.join(f'{x:.1f}' for x in rnd['all_seconds'])}) | < 30 s | "
        f"{_verdict(round_ok)} |",
        "",
        f"Idle memory: `sangsaeng client start` from the light venv, waiting for its first task (the worker "
        f"imports the ClientApp, torch and opacus with it, when the first task comes; torch mapped while idle: "
        f"{'yes' if idle['torch_loaded'] else 'no'}), its SuperNode retrying a loopback "
        f"SuperLink address nothing listens on; {idle['samples']} samples, one a second, from 10 s after the "
        f"SuperNode started and the start-up check ended (the start itself peaks at {mb(idle['startup_rss_max'])}: "
        "`client start` imports the ClientApp once in a short-lived child, so that a broken install fails there). "
        f"The processes: {'; '.join(' '.join(Path(w).name for w in c.split()) for c in idle['commands'])}. RSS "
        "summed over the tree is the judged figure; it counts the library pages the processes share once in "
        "each, PSS splits them. After a run the worker keeps the ClientApp imported (no import cost in the "
        "next run): the line above it estimates that state.",
        "",
        f"The round: the real ServerApp and ClientApp in one process of the light venv (`tests.loopback`, no Ray) "
        f"under `taskset -c 0` and one torch thread; the whole one-round run: profile, federated scaler, "
        f"{rnd['local_epochs']} local epochs (batch {rnd['batch_size']}) of `predictive-maintenance` on AI4I "
        f"2020 resampled to {SITE_ROWS:,} rows (70 % train), the site's evaluation; the interpreter's start and "
        f"imports not counted. Peak memory of that process: {rnd['peak_mib']:.0f} MiB.",
        "",
        "Why the bytecode line: `pip` compiles every module it installs (here "
        f"{mb(s['pycache'])} of `__pycache__`, most for modules a site never imports); with `--no-compile` "
        "Python compiles only what it imports, on first use. Parquet exports add the `parquet` extra "
        "(pyarrow, about 180 MB).",
    ]
    return "\n".join(lines), install_ok and idle_ok and round_ok


def main() -> int:
    """Install, measure, write the section (or print it with ``--no-write``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/install"))
    parser.add_argument("--reuse", action="store_true", help="measure the venv of an earlier run (no install)")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--reps", type=int, default=3, help="rounds timed (median)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    parser.add_argument("--report-only", action="store_true", help="the section from the last run's measures.json")
    parser.add_argument("--round-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.round_worker:
        print(json.dumps(_round_worker(args.data, args.out)))
        return 0

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    venv, src = out / "venv", out / "src"
    timings_path = out / "install-timing.json"
    if args.report_only:
        m = json.loads((out / "measures.json").read_text())
        s, idle, rnd, timing = m["sizes"], m["idle"], m["round"], m["timing"]
    elif args.reuse and (venv / "bin" / "sangsaeng").exists():
        timing = json.loads(timings_path.read_text())
    else:
        timing = install(venv, _source_copy(src))
        timings_path.write_text(json.dumps(timing))
    if not args.report_only:
        print(f"installed: {timing}", flush=True)
        s = sizes(venv)
        print({k: v for k, v in s.items() if k != "distributions"}, flush=True)
        data = site_export(out)
        idle = idle_memory(venv, out, data, args.idle_seconds)
        print(f"idle: {idle}", flush=True)
        rnd = round_times(venv, src, out, data, args.reps)
        (out / "measures.json").write_text(json.dumps({"sizes": s, "idle": idle, "round": rnd, "timing": timing}))
    body, ok = report(s, idle, rnd, timing)
    print(body)
    if not args.no_write:
        from bench._report import write_section

        print(f"written to {write_section('install', body)}")
    return 0 if ok and not s["forbidden_present"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
