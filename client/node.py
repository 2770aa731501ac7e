"""A supplier site on the network: Flower's SuperNode plus a warm worker that runs our ClientApp.

    sangsaeng client start --superlink HOST:PORT --ca-cert ca.pem --data export.csv \\
        [--site-dir ./sangsaeng-site] [--site NAME] [--max-epsilon 3] [--dp-required]

`client start` launches a stock ``flower-supernode`` (TLS against the network CA, SuperNode
authentication with the site key created at enrolment) in Flower's ``process`` isolation
mode, and then serves that SuperNode's tasks itself, in one long-lived process:

* **Code the supplier trusts.** The ClientApp that runs is the one in the Sangsaeng version
  the supplier installed (`client.client_app.app`). The bundle a run brings is never installed
  or imported; it must name exactly that app and version, or the task is answered with an
  error reply that says what was refused and why (the run goes on with the other sites).
* **No start-up cost per round.** Flower's default launches a fresh ``flwr-clientapp`` process
  (re-importing torch) for every message; the worker imports everything once and takes each
  task from the SuperNode's Runtime API with Flower's own client calls.
* **A light idle site.** The worker imports the ClientApp (torch, opacus, scikit-learn: about
  350 MB resident) when the first task arrives, not at start: a site waiting for its first run
  holds only the SuperNode and a small poller (BENCHMARKS.md, "Supplier install").

A stock ``flower-supernode`` in its default subprocess mode also works with our bundle (the
bundle holds no code, so it too runs the installed ClientApp); `client start` adds the checks.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from client.errors import NodeError
from sangsaeng import airgap
from sangsaeng.console import fail
from sangsaeng.errors import SangsaengError
from sangsaeng.identity import CLIENTAPP_REF, FAB_ID, sangsaeng_version
from sangsaeng.protocol import ErrorCode

__all__ = [
    "NodeSettings",
    "start_supernode",
    "serve_tasks",
    "check_bundle",
    "check_private_key",
    "check_client_app_imports",
    "start_command",
]

log = logging.getLogger("sangsaeng.client")
# What flower-supernode logs when the SuperLink refuses to activate its key (Flower exit code 305; the
# process itself exits with 1); `client start` retries for ACTIVATION_PATIENCE s, every ACTIVATION_RETRY.
ACTIVATION_REFUSED = "Exit Code: 305"
ACTIVATION_PATIENCE = 150.0
ACTIVATION_RETRY = 5.0
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Runtime API poll otherwise


@dataclass(frozen=True)
class NodeSettings:
    """Everything `client start` needs (the site's one settings object for deployment)."""

    superlink: str
    ca_cert: Path
    private_key: Path
    node_config: dict[str, Any]
    runtime_port: int = 9094
    log_file: Path | None = None

    def node_config_arg(self) -> str:
        """The node config as ``flower-supernode --node-config`` takes it."""
        parts = []
        for key, value in self.node_config.items():
            if isinstance(value, bool):
                parts.append(f"{key}={'true' if value else 'false'}")
            elif isinstance(value, int | float):
                parts.append(f"{key}={value}")
            else:
                parts.append(f'{key}="{value}"')
        return " ".join(parts)


def check_private_key(path: Path) -> None:
    """The site key must exist and be readable by its owner only (it never leaves the site)."""
    if not path.exists():
        raise NodeError(f"site key {path} not found: enrol first with `sangsaeng client enrol`")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise NodeError(f"site key {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")


def check_bundle(fab_id: str, fab_version: str, fab_content: bytes) -> str | None:
    """Why this site refuses a run's bundle, or None when it names exactly the installed app."""
    import io
    import tomllib
    import zipfile

    want_id, want_version = FAB_ID, sangsaeng_version()
    if fab_id != want_id or fab_version != want_version:
        return (f"this site runs only the client code it installed ({want_id} {want_version}); "
                f"the run asks for {fab_id} {fab_version}: refused (install that version to approve it)")  # fmt: skip
    try:
        with zipfile.ZipFile(io.BytesIO(fab_content)) as bundle:
            names = bundle.namelist()
            project = tomllib.loads(bundle.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return f"the run's bundle is unreadable ({exc}): refused"
    code = [name for name in names if not name.endswith((".toml", ".md", ".txt", "/")) and "/." not in name]
    code = [name for name in code if not name.startswith(".info/") and name != "LICENSE"]
    if code:
        return f"the run's bundle carries code this site did not approve ({', '.join(code[:5])}): refused"
    clientapp = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {}).get("clientapp")
    if clientapp != CLIENTAPP_REF:
        return f"the run's bundle names ClientApp {clientapp!r}, this site runs only {CLIENTAPP_REF!r}: refused"
    return None


def _activation_refused(settings: NodeSettings) -> bool:
    """True when the SuperNode that just exited was refused activation (the end of its log says so)."""
    if settings.log_file is None or not settings.log_file.exists():
        return False
    with settings.log_file.open("rb") as log_file:
        log_file.seek(max(0, settings.log_file.stat().st_size - 4096))
        return ACTIVATION_REFUSED in log_file.read().decode(errors="replace")


def _stopped(stopping: threading.Event, process: subprocess.Popen) -> bool:
    """True once the site is asked to stop or its SuperNode has exited."""
    return stopping.is_set() or process.poll() is not None


def start_supernode(settings: NodeSettings) -> subprocess.Popen:
    """Start a stock flower-supernode in process-isolation mode (we serve its tasks)."""
    import shutil

    check_private_key(settings.private_key)
    if not settings.ca_cert.exists():
        raise NodeError(f"network CA certificate {settings.ca_cert} not found (the anchor hands it out)")
    exe = shutil.which("flower-supernode") or str(Path(sys.executable).parent / "flower-supernode")
    command = [
        exe,
        "--superlink", settings.superlink,
        "--root-certificates", str(settings.ca_cert),
        "--auth-supernode-private-key", str(settings.private_key),
        "--node-config", settings.node_config_arg(),
        "--isolation", "process",
        "--port", str(settings.runtime_port),
        "--max-retries", "20",
    ]  # fmt: skip
    out = settings.log_file.open("ab") if settings.log_file else None
    env = {**os.environ, **airgap.AIRGAP_ENV}
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT if out else None, env=env,
                            start_new_session=True)  # fmt: skip


TASK_RETRY_FOR = 120.0  # seconds a task's calls to the local SuperNode are retried before the task fails
_RETRYABLE_STATUS = (502, 503, 504)


def _task_retry_invoker() -> Any:
    """Retries for one task's Runtime API calls that end, and never signal this process.

    Flower's own invoker (`make_simple_http_retry_invoker`) is made for a ``flwr-clientapp``
    process per task: on a refused task token it sends SIGINT to its own process, and it retries
    without end. In this warm worker that SIGINT would stop the whole site (`client start`
    handles it as the operator's Ctrl-C) and an endless retry would hold every later task back.
    """
    import httpx
    from flwr.supercore.retry import RetryInvoker, exponential

    return RetryInvoker(
        wait_gen_factory=lambda: exponential(max_delay=10),
        recoverable_exceptions=(httpx.TransportError, httpx.HTTPStatusError),
        max_tries=None,
        max_time=TASK_RETRY_FOR,
        should_giveup=lambda exc: (
            isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code not in _RETRYABLE_STATUS
        ),
    )


def _task_heartbeat(client: Any, lost: threading.Event) -> Callable[[], bool]:
    """The task's heartbeat to the SuperNode; a refused one sets `lost` (Flower's own raises SIGINT, see above)."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611

    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            response = client.SendTaskHeartbeat(request)
        except httpx.TransportError:
            return False  # retried by the sender
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in _RETRYABLE_STATUS:
                return False
            lost.set()
            return True
        if not response.success:
            lost.set()
        return True

    return beat


TASK_INPUT_PULL_FOR = 60.0  # seconds a task waits for its message's content to be at the SuperNode


def _pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """Flower's `pull_task_input`, waiting `TASK_INPUT_PULL_FOR` s at most for the message's content (Flower: 2 h).

    Flower 1.42's SuperNode creates a message's task before it downloads the message's content,
    and when the run stops during that download (`RunNotRunningException` is a BaseException, which
    its clean-up does not catch) the task stays behind without content that will ever come. Waiting
    for it held every later task of the site back (the SuperNode had already received the next
    run's message): the hang seen after a coordinator was killed. Given up, the next task is served.
    """
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError
    from flwr.supernode.runtime import run_clientapp as flower

    response = client.PullTaskInput(flower.PullTaskInputRequest())
    flower.TaskIdentity.task_id = response.task_id
    flower.TaskIdentity.run_id = response.run.run_id
    flower.TaskIdentity.node_id = response.context.node_id
    context = flower.context_from_proto(response.context)
    run = flower.run_from_proto(response.run)
    fab = flower.fab_from_proto(response.fab)
    pulled = client.PullMessages(flower.PullAppMessagesRequest())
    if not pulled.messages_list:
        raise NodeError(f"run {run.run_id}: the SuperNode gave this task no message")
    node = flower.Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    try:
        message = flower.pull_and_inflate_object_from_tree(
            tree,
            flower.make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
            flower.make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
            return_type=flower.Message,
            max_time=TASK_INPUT_PULL_FOR,
        )
    except ObjectPullError as exc:
        raise NodeError(
            f"run {run.run_id}: the message's content did not reach the SuperNode within {TASK_INPUT_PULL_FOR:.0f} s "
            f"(its run stopped while it was downloaded?); task given up ({exc})"
        ) from None
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower's: the deflated message lacks its id
    return message, context, run, fab


def _run_one_task(runtime_address: str, token: str, load_client_app: Callable[[], Any]) -> str:
    """Run one task in this process with Flower's Runtime API calls; returns a status line.

    The task's heartbeat starts first: the SuperNode gives a claimed task 30 s to start, and the
    first task imports the ClientApp (torch, opacus: longer than that on a loaded machine).
    Every message taken is answered: the SuperNode takes its next message only once the last one
    has a reply, so a ClientApp that raises is answered with an error reply naming the exception
    (as Flower's own ``flwr-clientapp`` does), never left unanswered.
    """
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode as FlowerErrorCode
    from flwr.common.constant import SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                      RuntimeTokenHttpInterceptor(token)],
        retry_invoker=_task_retry_invoker(),
    )  # fmt: skip
    lost = threading.Event()
    heartbeat = HeartbeatSender(_task_heartbeat(client, lost))
    heartbeat.start()
    context, status, details = None, SubStatus.FAILED, "task failed"
    try:
        client_app = load_client_app()  # a broken install raises here (and stops the worker, see serve_tasks)
        message, context, run, fab = _pull_task_input(client)
        refusal = check_bundle(run.fab_id, run.fab_version, fab.content)
        if refusal is not None:
            log.error("run %s refused: %s", run.run_id, refusal)
            reply = Message(Error(code=ErrorCode.REFUSED, reason=refusal), reply_to=message)
            details, outcome = refusal, "refused"
        else:
            try:
                reply = client_app(message=message, context=context)
                status, details, outcome = SubStatus.COMPLETED, "", "done"
            except Exception as exc:  # answered with an error reply, below
                log.exception("run %s: the ClientApp raised", run.run_id)
                details, outcome = f"the ClientApp raised {type(exc).__name__}: {exc}", "failed"
                reply = Message(Error(code=FlowerErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                                reply_to=message)  # fmt: skip
        push_message(client, reply, context)
        if lost.is_set():
            outcome += " (the SuperNode had dropped the task)"
        return f"run {run.run_id}: {message.metadata.message_type} {outcome}"
    finally:
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()


def check_client_app_imports() -> None:
    """Import the installed ClientApp in a short-lived child process; `NodeError` if it cannot be imported.

    A broken install fails at `client start`, not mid-round, and the long-lived worker stays
    light until its first task (it imports the ClientApp then).
    """
    done = subprocess.run([sys.executable, "-c", "import client.client_app"], capture_output=True, text=True,
                          env={**os.environ, **airgap.AIRGAP_ENV})  # fmt: skip
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise NodeError(f"this site's ClientApp cannot be imported ({lines[-1]}): reinstall sangsaeng")


@functools.cache
def _installed_client_app() -> Any:
    """The ClientApp of the installed Sangsaeng (`client.client_app.app`), imported once, on the first task."""
    from client.client_app import app

    return app


def serve_tasks(runtime_address: str, *, stop: Callable[[], bool], poll: float = 0.1, max_poll: float = 1.0) -> None:
    """Take the SuperNode's ClientApp tasks one after another, in this process.

    Asks the SuperNode every `poll` seconds after a task, backing off to every `max_poll` while
    none comes: the SuperNode itself fetches work from the SuperLink only every 3 s, and ten asks a
    second kept the worker and its SuperNode at a few per cent of a factory PC's core each, idle.
    """
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    retry = make_simple_http_retry_invoker()
    retry.max_time = 5.0  # Flower's retries forever: give up now and then, so that `stop` is checked
    executor = RuntimeHttpClient.from_server_address(
        server_address=runtime_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=retry,
    )  # fmt: skip
    wait = poll
    try:
        while not stop():
            try:
                response = executor.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            except Exception as exc:  # the SuperNode restarting: wait for it
                log.warning("SuperNode runtime API not answering (%s); retrying", exc)
                time.sleep(1.0)
                continue
            if response.HasField("task") and response.token:
                wait = poll
                try:
                    log.info(_run_one_task(runtime_address, response.token, _installed_client_app))
                except ImportError:  # a broken install stops the worker, loudly
                    raise
                except Exception:  # one failed task must not stop the site
                    log.exception("task failed")
            else:
                time.sleep(wait)
                wait = min(2 * wait, max_poll)
    finally:
        executor.close()


def start_command(
    data: Annotated[Path, typer.Option(help="This site's CSV/Parquet export.")],
    superlink: Annotated[
        str | None, typer.Option(help="The anchor's fleet address, HOST:PORT (default: from enrolment).")
    ] = None,
    ca_cert: Annotated[
        Path | None, typer.Option(help="The network CA certificate (default: the one enrolment checked and saved).")
    ] = None,
    site_dir: Annotated[Path, typer.Option(help="Directory made by `client enrol`.")] = Path("sangsaeng-site"),
    site: Annotated[str | None, typer.Option(help="Site name (default: the enrolled name).")] = None,
    max_epsilon: Annotated[float | None, typer.Option(min=0.01, help="This site's privacy budget.")] = None,
    dp_required: Annotated[bool, typer.Option("--dp-required", help="Refuse rounds without DP-SGD.")] = False,
    runtime_port: Annotated[int, typer.Option(help="Local port of the SuperNode's Runtime API.")] = 9094,
) -> None:
    """Join the network: start this site's SuperNode and serve its training tasks."""
    import json
    import signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        record = json.loads((site_dir / "site.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"{site_dir / 'site.json'} unreadable ({exc}); enrol first with `sangsaeng client enrol`")
    superlink = superlink or record.get("superlink")
    if ca_cert is None and record.get("ca_cert"):
        ca_cert = site_dir / record["ca_cert"]
    if not superlink or ca_cert is None:
        missing = " and ".join(n for n, v in (("--superlink", superlink), ("--ca-cert", ca_cert)) if not v)
        fail(f"enrolment gave this site no network address or CA certificate (none was set then): give {missing}")
    node_config: dict[str, Any] = {"site": site or record["site_name"], "data-path": str(data.resolve())}
    if max_epsilon is not None:
        node_config["max-epsilon"] = max_epsilon
    if dp_required:
        node_config["dp-required"] = True
    settings = NodeSettings(superlink=superlink, ca_cert=ca_cert, private_key=site_dir / "site_key",
                            node_config=node_config, runtime_port=runtime_port,
                            log_file=site_dir / "supernode.log")  # fmt: skip
    try:
        check_client_app_imports()
        process = start_supernode(settings)
    except SangsaengError as exc:
        typer.echo(f"error: {exc}")
        raise typer.Exit(code=2) from None
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    typer.echo(f"site '{node_config['site']}' joining {superlink} (SuperNode log: {settings.log_file})")
    refused_since = None
    try:
        while True:
            serve_tasks(f"127.0.0.1:{runtime_port}", stop=functools.partial(_stopped, stopping, process))
            if stopping.is_set() or not _activation_refused(settings):
                break
            # A site whose machine died is still marked online until the SuperLink misses its heartbeats
            # (about a minute): until then it refuses to activate the same key again. Wait that out.
            refused_since = refused_since or time.monotonic()
            if time.monotonic() - refused_since > ACTIVATION_PATIENCE:
                break
            typer.echo(f"the SuperLink refused activation (a previous session of this site may still count as "
                       f"online); retrying in {ACTIVATION_RETRY:.0f} s")  # fmt: skip
            if stopping.wait(ACTIVATION_RETRY):
                break
            process = start_supernode(settings)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    if not stopping.is_set():
        typer.echo(f"error: the SuperNode stopped (exit code {process.returncode}); see {settings.log_file}")
        raise typer.Exit(code=3)
