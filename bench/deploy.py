"""Deployment benchmark: time per round on one workload, in one run, side by side.

    python bench/deploy.py [--rounds 5] [--out bench-out/deploy]

Workload: AI4I 2020 split by machine `Type` (3 sites), the same MLP and local training
(2 epochs, batch 64) everywhere. Measured as the median time between the ends of consecutive
rounds (start-up and the profile phase excluded):

* Sangsaeng deployment: `coordinator up` pieces (SuperLink with TLS + SuperNode auth behind the
  nginx gateway) and three `sangsaeng client start` sites (stock SuperNode + warm worker);
  without and with SecAgg+;
* plain Flower FedAvg: stock SuperLink (TLS + SuperNode auth) and three stock SuperNodes in
  Flower's default subprocess isolation running `bench/plain_flower` (DefaultWorkflow + FedAvg,
  no profile, checkpoints or ledger); without and with SecAgg+;
* Sangsaeng in Flower's simulation engine.

Also the start-up cost a stock SuperNode pays per message: a fresh Python importing flwr,
torch and the ClientApp. Targets: per-round overhead over plain Flower <= 10 % without SecAgg+
and <= 50 % with it; per-round client start-up removed or under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import dataset  # noqa: E402  (sets up the environment first)
from bench._report import write_section  # noqa: E402
from client import portal_commands as pc  # noqa: E402
from coordinator.config import FederationConfig  # noqa: E402
from coordinator.deploy import (  # noqa: E402
    CONNECTION,
    DeploymentLayout,
    FlowerControl,
    SuperLinkSettings,
    flower_env,
    start_gateway,
    start_superlink,
    stop_processes,
)  # fmt: skip
from coordinator.pki import NetworkCerts, init_network  # noqa: E402
from coordinator.simulation import run_experiment, write_site_files  # noqa: E402
from models.datasets import SAMPLES  # noqa: E402
from models.scaler import FederatedScaler  # noqa: E402
from models.tasks import get_task  # noqa: E402

TASK = "predictive-maintenance"
ROOT = Path(__file__).resolve().parents[1]
os.environ["PATH"] = f"{os.environ['PATH']}:/usr/sbin:{Path(sys.executable).parent}"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def round_times(ends: list[float]) -> list[float]:
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def manifest_round_ends(out: Path) -> list[float]:
    manifest = json.loads((out / "manifest.json").read_text())
    return [r["updated_at"] for r in sorted(manifest["rounds"], key=lambda r: r["round"])]


def network(root: Path, certs_from: NetworkCerts) -> tuple[DeploymentLayout, SuperLinkSettings]:
    layout = DeploymentLayout(root)
    shutil.copytree(certs_from.dir, layout.certs.dir)
    return layout, SuperLinkSettings(
        layout, public_host="127.0.0.1", public_port=free_port(), internal_port=free_port()
    )


def register_sites(layout: DeploymentLayout, control: FlowerControl, names: list[str]) -> dict[str, Path]:
    dirs = {}
    for name in names:
        site_dir = layout.root / f"site-{name}"
        pc.generate_site_key(site_dir)
        (site_dir / "site.json").write_text(json.dumps({"site_name": name}))
        control.register(site_dir / "site_key.pub", name)
        dirs[name] = site_dir
    return dirs


def sangsaeng_deployment(
    root: Path, certs: NetworkCerts, files: dict[str, Path], rounds: int
) -> dict[str, list[float]]:
    layout, settings = network(root, certs)
    processes = [start_superlink(settings, log_file=root / "superlink.log"), start_gateway(settings)]
    try:
        dirs = register_sites(layout, FlowerControl(layout, settings.internal_address), list(files))
        for name, path in files.items():
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "coordinator.cli", "client", "start", "--superlink",
                 f"localhost:{settings.public_port}", "--ca-cert", str(layout.certs.ca_cert), "--data", str(path),
                 "--site-dir", str(dirs[name]), "--runtime-port", str(free_port())],
                stdout=(root / f"site-{name}.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
            ))  # fmt: skip
        out = {}
        for label, extra in (("no-secagg", []), ("secagg", ["--secagg"])):
            run_dir = root / f"run-{label}"
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "coordinator.cli", "coordinator", "run", "--state", str(root), "--task", TASK,
                 "--rounds", str(rounds), "--min-sites", str(len(files)), "--out", str(run_dir),
                 "--key-dir", str(root / "key"), *extra],
                check=True, stdout=(root / f"run-{label}.log").open("wb"), stderr=subprocess.STDOUT,
            )  # fmt: skip
            out[label] = round_times(manifest_round_ends(run_dir))
            print(f"sangsaeng deployment {label}: {statistics.median(out[label]):.2f} s/round "
                  f"({time.perf_counter() - start:.0f} s in all)", flush=True)  # fmt: skip
        return out
    finally:
        stop_processes(processes)


def plain_flower(root: Path, certs: NetworkCerts, files: dict[str, Path], rounds: int) -> dict[str, list[float]]:
    import tomli_w

    layout, settings = network(root, certs)
    processes = [start_superlink(settings, log_file=root / "superlink.log")]
    try:
        control = FlowerControl(layout, settings.internal_address)
        dirs = register_sites(layout, control, list(files))
        for name, path in files.items():
            processes.append(subprocess.Popen(
                [shutil.which("flower-supernode") or "flower-supernode", "--superlink", settings.internal_address,
                 "--root-certificates", str(layout.certs.ca_cert), "--auth-supernode-private-key",
                 str(dirs[name] / "site_key"), "--node-config", f'data-path="{path}"', "--port", str(free_port())],
                env=flower_env(layout), stdout=(root / f"supernode-{name}.log").open("wb"), stderr=subprocess.STDOUT,
                start_new_session=True,
            ))  # fmt: skip
        app = root / "app"
        app.mkdir()
        shutil.copy(ROOT / "bench" / "plain_flower" / "plain_flower.py", app / "plain_flower.py")
        spec = get_task(TASK)
        n_inputs = FederatedScaler.fit_pooled(dataset(TASK).head(500), spec).n_inputs
        (app / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
            '[project]\nname = "plainflower"\nversion = "1.0.0"\nlicense = "Apache-2.0"\ndependencies = []\n\n'
            '[tool.flwr.app]\npublisher = "bench"\n\n[tool.flwr.app.components]\n'
            'serverapp = "plain_flower:server_app"\nclientapp = "plain_flower:client_app"\n\n'
            f'[tool.flwr.app.config]\nnum-rounds = {rounds}\nsites = {len(files)}\nn-inputs = {n_inputs}\n'
            'secagg = false\ntimes-path = ""\n'
        )  # fmt: skip
        out = {}
        for label, secagg in (("no-secagg", False), ("secagg", True)):
            times = root / f"times-{label}.jsonl"
            overrides = root / f"config-{label}.toml"
            overrides.write_bytes(tomli_w.dumps({"secagg": secagg, "times-path": str(times)}).encode())
            start = time.perf_counter()
            flwr = shutil.which("flwr") or "flwr"
            subprocess.run(
                [flwr, "run", str(app), CONNECTION, "--run-config", str(overrides), "--stream"],
                check=True, env=flower_env(layout), stdout=(root / f"run-{label}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            out[label] = round_times([json.loads(line) for line in times.read_text().splitlines()])
            print(f"plain flower {label}: {statistics.median(out[label]):.2f} s/round "
                  f"({time.perf_counter() - start:.0f} s in all)", flush=True)  # fmt: skip
        return out
    finally:
        stop_processes(processes)


def simulation(root: Path, files: dict[str, Path], rounds: int) -> list[float]:
    config = FederationConfig.with_defaults(task=get_task(TASK), num_rounds=rounds, out_dir=root, key_dir=root / "key")
    run_experiment(get_task(TASK), files, config)
    return round_times(manifest_round_ends(root))


def import_cost(repeats: int = 3) -> float:
    """Wall time of a fresh interpreter importing what a stock per-message ClientApp process imports."""
    costs = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import flwr.supernode.runtime.run_clientapp, torch, client.client_app"],
                       check=True, cwd=ROOT)  # fmt: skip
        costs.append(time.perf_counter() - start)
    return statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "deploy")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    files, _ = write_site_files(dataset(TASK), SAMPLES[TASK].split_by, args.out / "data", spec=get_task(TASK))
    files = {name: path.resolve() for name, path in files.items()}
    certs = NetworkCerts(args.out / "certs")
    init_network(certs, name="Bench", hosts=["localhost", "127.0.0.1"])

    ours = sangsaeng_deployment(args.out / "sangsaeng", certs, files, args.rounds)
    plain = plain_flower(args.out / "plain", certs, files, args.rounds)
    sim = simulation(args.out / "simulation", files, args.rounds)
    startup = import_cost()

    med = statistics.median
    rows = [
        ("plain Flower FedAvg (stock SuperNodes, subprocess isolation)", med(plain["no-secagg"]), med(plain["secagg"])),
        ("Sangsaeng deployment (gateway, TLS, node auth, warm worker)", med(ours["no-secagg"]), med(ours["secagg"])),
        ("Sangsaeng in Flower's simulation engine", med(sim), None),
    ]
    overhead = med(ours["no-secagg"]) / med(plain["no-secagg"]) - 1
    overhead_secagg = med(ours["secagg"]) / med(plain["no-secagg"]) - 1
    overhead_secagg_same = med(ours["secagg"]) / med(plain["secagg"]) - 1
    lines = [
        f"One run, {platform.machine()}, {os.cpu_count()} cores, {args.rounds} rounds, AI4I split by Type "
        f"({len(files)} sites on this one machine, all processes sharing its cores). Seconds per round: median time "
        "between the ends of consecutive rounds (start-up and profile phase excluded).",
        "",
        "| runtime | s/round, no SecAgg+ | s/round, SecAgg+ |",
        "|---|---:|---:|",
        *[f"| {name} | {a:.2f} | {'n/a' if b is None else f'{b:.2f}'} |" for name, a, b in rows],
        "",
        f"- Per-round overhead over plain Flower without SecAgg+: **{overhead:+.0%}** (target <= +10 %: "
        f"{'met' if overhead <= 0.10 else 'MISSED'}).",
        f"- With SecAgg+, against plain Flower without it: **{overhead_secagg:+.0%}** (target <= +50 %: "
        f"{'met' if overhead_secagg <= 0.50 else 'MISSED'}); "
        f"against plain Flower with SecAgg+: {overhead_secagg_same:+.0%}.",
        f"- Start-up a stock SuperNode pays per message (fresh Python importing flwr, torch and the ClientApp): "
        f"**{startup:.2f} s** x 2 messages per site per round. Sangsaeng's worker imports once: removed "
        "(target: removed or < 2 s).",
    ]
    (args.out / "deploy.json").write_text(json.dumps({"ours": ours, "plain": plain, "simulation": sim,
                                                      "startup_s": startup}, indent=2))  # fmt: skip
    write_section("deploy", "## Deployment: time per round (`bench/deploy.py`)\n\n" + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
