"""A rolling update on loopback: a headless Service's DNS name, pods that kubelet terminates, client load.

- `Budget`: the shutdown arithmetic (k8s/README.md "Shutdown"), in Kubernetes' seconds; `scaled()`
  gives the simulation's. One source for the Deployment test and the simulation.
- `HeadlessDns`: a DNS server on 127.0.0.1 (dnslib) answering one name with the Ready pods'
  addresses, like CoreDNS for a headless Service.
- `Cluster`: pods are local servers on 127.0.0.N, all on one port (Linux routes 127.0.0.0/8 to lo);
  `terminate()` does what kubelet and the endpoint controller do: the pod leaves DNS after endpoint
  propagation + TTL, preStop runs, SIGTERM, SIGKILL at the grace period.
- `Load`: one client calling in a loop, counting failures.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import yaml
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from model_builder.serve import process
from retrieval_client import _base, _channel
from support import ENV, REPO

# gRPC's own default for grpc.dns_min_time_between_resolutions_ms: what a raw caller gets.
GRPC_DEFAULT_MIN_RESOLUTION_S = 30.0
# The image's monitoring config: request counters on the REST port, read to see when a pod last served.
MONITORING_FLAGS = ("--monitoring_config_file", str(REPO / "k8s" / "base" / "config" / "monitoring_config.txt"))
_REQUEST_COUNT = re.compile(r"^:tensorflow:serving:request_count\{.*\} (\d+)$", re.M)


@dataclass(frozen=True)
class Budget:
    """When the last call can reach a terminating pod, and the grace period that must outlast it.

    A terminating pod leaves DNS after endpoint_removal_s + dns_ttl_s. A client learns of it only
    when it re-resolves, which gRPC does when a connection ends (the server's GOAWAY at
    connection_age_s, jittered by +-10%) and at most once per client_min_resolution_s: so every
    client has re-resolved by removal + max(1.1 x age, min resolution), then drops the pod's
    subchannel, and its calls there end within call_deadline_s.
    """

    connection_age_s: float  # grpc.max_connection_age_ms (the Deployment's args = the image's CMD)
    connection_age_grace_s: float  # grpc.max_connection_age_grace_ms
    grace_period_s: float  # terminationGracePeriodSeconds
    endpoint_removal_s: float = 2.0  # EndpointSlice update reaching CoreDNS
    dns_ttl_s: float = 5.0  # CoreDNS kubernetes plugin's default TTL
    # grpc.dns_min_time_between_resolutions_ms and the deadline: retrieval_client's defaults.
    client_min_resolution_s: float = _channel.DEFAULT_DNS_MIN_RESOLUTION_INTERVAL_MS / 1000
    call_deadline_s: float = _base.DEFAULT_TIMEOUT_S
    pre_stop_s: float = 0.0  # a preStop sleep (none: SIGTERM does nothing in TF Serving 2.11's image)

    @classmethod
    def product(cls, deployment: Path = REPO / "k8s" / "base" / "deployment.yaml") -> Budget:
        """The shipped settings, read from the base Deployment."""
        pod = yaml.safe_load(deployment.read_text())["spec"]["template"]["spec"]
        args = " ".join(pod["containers"][0]["args"])
        age_ms = int(re.search(r"grpc\.max_connection_age_ms=(\d+)", args).group(1))
        grace_ms = int(re.search(r"grpc\.max_connection_age_grace_ms=(\d+)", args).group(1))
        return cls(age_ms / 1000, grace_ms / 1000, float(pod["terminationGracePeriodSeconds"]))

    def last_call_s(self) -> float:
        """Seconds after termination began by which no call of the client reaches the pod."""
        resolved = max(1.1 * self.connection_age_s, self.client_min_resolution_s)
        return self.endpoint_removal_s + self.dns_ttl_s + resolved + self.call_deadline_s

    def scaled(self, factor: float) -> Budget:
        """Every duration times factor: the same ratios on a shorter clock."""
        return Budget(**{name: value * factor for name, value in self.__dict__.items()})

    def with_grace(self, grace_period_s: float) -> Budget:
        """The same budget with another terminationGracePeriodSeconds."""
        return replace(self, grace_period_s=grace_period_s)

    def for_raw_caller(self) -> Budget:
        """A raw gRPC caller with gRPC's default re-resolution interval."""
        return replace(self, client_min_resolution_s=GRPC_DEFAULT_MIN_RESOLUTION_S)

    def server_flags(self) -> tuple[str, ...]:
        """The image's connection-age arguments at this budget's scale."""
        age_ms, grace_ms = round(self.connection_age_s * 1000), round(self.connection_age_grace_s * 1000)
        return (
            f"--grpc_channel_arguments=grpc.max_connection_age_ms={age_ms},grpc.max_connection_age_grace_ms={grace_ms}",
        )


class _Resolver(BaseResolver):
    def __init__(self, name: str) -> None:
        self.name = name.rstrip(".") + "."
        self.addresses: list[str] = []
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname)
        if qname.lower() != self.name:
            reply.header.rcode = 3  # NXDOMAIN: search-domain variants of the name
        elif request.q.qtype == QTYPE.A:
            with self.lock:
                for address in self.addresses:
                    reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=0))
        return reply  # AAAA and others: NOERROR, no records


class HeadlessDns:
    """`name` resolves to the current pod addresses (a UDP DNS server on 127.0.0.1)."""

    def __init__(self, name: str = "serving.rollout.test") -> None:
        self._resolver = _Resolver(name)
        self.name = name
        self._server = DNSServer(self._resolver, address="127.0.0.1", port=0, logger=DNSLogger("-request,-reply"))
        self.port = self._server.server.server_address[1]

    def target(self, port: int) -> str:
        """The gRPC target clients use: dns://127.0.0.1:PORT/name:port."""
        return f"dns://127.0.0.1:{self.port}/{self.name}:{port}"

    def add(self, address: str) -> None:
        with self._resolver.lock:
            self._resolver.addresses.append(address)

    def remove(self, address: str) -> None:
        with self._resolver.lock:
            self._resolver.addresses.remove(address)

    def __enter__(self) -> HeadlessDns:
        self._server.start_thread()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()
        self._server.server.server_close()


@dataclass
class Cluster:
    """Pods of one Deployment: local servers on 127.0.0.N:port behind a HeadlessDns."""

    dns: HeadlessDns
    base_path: Path
    model: str
    logs: Path
    port: int = field(default_factory=process.free_port)
    pods: list[process.ServerProcess] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    # Seconds from a pod's deletion to the last request it answered, by pod address.
    last_served_s: dict[str, float] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, host: str, *flags: str) -> process.ServerProcess:
        """Starts a pod (not Ready, not in DNS until `ready`)."""
        pod = process.start(
            self.base_path,
            self.model,
            self.logs / f"pod-{host}.log",
            *MONITORING_FLAGS,
            *flags,
            port=self.port,
            rest_port=process.free_port(),
            host=host,
            env=ENV,
            cwd=REPO,
        )
        self.pods.append(pod)
        return pod

    def ready(self, pod: process.ServerProcess) -> None:
        """Readiness passed (model AVAILABLE): the endpoint controller adds it to the Service."""
        pod.wait_available(timeout=600)
        self.dns.add(pod.host)
        self._log(f"{pod.host} ready, in DNS")

    def terminate(self, pod: process.ServerProcess, budget: Budget) -> None:
        """Kubelet and the endpoint controller, from the pod's deletion on (returns at once)."""
        begun = time.monotonic()

        def leave_dns() -> None:
            time.sleep(budget.endpoint_removal_s + budget.dns_ttl_s)
            self.dns.remove(pod.host)
            self._log(f"{pod.host} out of DNS")

        def kubelet() -> None:
            time.sleep(budget.pre_stop_s)
            self._log(f"{pod.host} SIGTERM")
            code = pod.terminate(max(0.0, budget.grace_period_s - (time.monotonic() - begun)))
            self._log(f"{pod.host} exited {code}")

        def watch() -> None:
            count, last = None, begun
            while pod.proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{pod.rest}/monitoring/prometheus/metrics", timeout=1) as resp:
                        now = sum(int(n) for n in _REQUEST_COUNT.findall(resp.read().decode()))
                except OSError:
                    break
                if count is not None and now > count:
                    last = time.monotonic()
                count = now
                time.sleep(0.05)
            self.last_served_s[pod.host] = round(last - begun, 2)

        self._log(f"{pod.host} terminating")
        for target in (leave_dns, kubelet, watch):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float) -> None:
        """Waits for every termination to finish."""
        for thread in self._threads:
            thread.join(timeout)

    def stop_all(self) -> None:
        """Cleanup: every pod still running ends (SIGKILL after SIGINT)."""
        for pod in self.pods:
            pod.stop(timeout=10)

    def _log(self, what: str) -> None:
        self.events.append((time.monotonic(), what))


@dataclass
class Load:
    """Calls `call()` in a loop on its own thread until stopped; failures are (time, error) pairs."""

    name: str
    call: Callable[[], object]
    pause_s: float = 0.002
    ok: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name=f"load-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.call()
                self.ok += 1
            except Exception as err:  # what the caller sees is what counts
                code = err.code().name if isinstance(err, grpc.RpcError) else type(err).__name__
                self.failures.append((time.monotonic(), code))
            self._stop.wait(self.pause_s)
