"""Benchmark: encrypt+decrypt of 1 KiB through two real agents' sockets vs the in-process core, and start-up time.

    .venv/bin/python tests/bench/bench_socket.py [--n 600] [--size 1024]

Rows (messages per second; ratio against ``core`` measured in the same run):
* ``core``: Ratchet.encrypt then Ratchet.decrypt in this process, nothing persisted (the ceiling).
* ``manager``: SessionManager.encrypt -> decrypt in this process, durable (store + fsync), 1 thread; processed
  messages confirmed in batches of CONFIRM_BATCH (as an app does: ConfirmRequest takes a list). Called directly,
  every call waits for its own commit, a decrypt too (no event loop to commit it after the answer, rule 8).
* ``socket x1``: one client: agent A encrypts (one socket round trip), agent B decrypts (one round trip), the same
  batched confirms; both agents are real daemons with durable state (software backend). Measured in ``--rounds``
  rounds (x1, x8, x1, x8, ...) with a ``core`` measurement between any two: each round's ratio is against the core
  measured just before and after it (this shared VM's speed drifts by tens of percent within a minute, so one core
  measurement at the start could be taken in another phase than the row); the row prints the median round and the
  range of the ratios. ``core`` prints the median of all its measurements.
* ``socket x8``: eight clients doing the same concurrently (eight apps sharing A's identity, to one peer).
  Each socket row also gives each agent's CPU time per message (from /proc/PID/stat over the run): every agent
  serves its requests on one event-loop thread, so ``1 / (agent B's CPU per message)`` bounds the rate at any
  client count.
* ``loop status`` / ``loop identity`` / ``loop encrypt`` / ``loop decrypt``: the agent's own work per request, in
  µs of its event-loop thread, measured in process with no socket (:func:`loop_costs`); a decrypt's commit, on the
  commit thread, is not in it. ``loop encrypt own-cold`` / ``loop decrypt own-cold``: the same with this core's own
  caches (L1, L2) flushed before each request;
  ``loop encrypt cold`` / ``loop decrypt cold``: with every cache level flushed, the L3 too (:data:`COLD_BYTES`
  written first, untimed). The running agents' real cost lies between the warm and the cold rows; which of the
  two flushes it resembles says how much of their caches survives what runs between two requests.
* ``placement``: agent A alone with one client (encrypts only), the client and A pinned to the same CPU or to
  two different ones (:func:`placement_costs`): A's CPU per encrypt and the rate in each case, i.e. what crossing
  between CPUs costs a request here (the socket rows cross all the time, and have the other agent run too).
* ``floor x1``: the least one client could take per message whatever the agents did: two round trips as cheap as
  the bare echo server's (``echo x1``) and one core message; its ratio is the best ``socket x1`` could reach on
  this machine. No fsync: a decrypt's commit follows its answer (sessions.py rule 8), and an encrypt inside its
  durable reservation writes nothing; the commits that remain (a reservation mark every 64 messages, the batched
  confirm) are in the agents' CPU, not on the floor. ``fsync p50`` is printed beside it for scale.
* ``sign core`` / ``sign xN``: the socket's own overhead: an identity-key signature in process vs through the
  socket (1 and 8 clients), no durable state involved.
* ``echo xN`` / ``status xN`` / ``identity xN``: the floor of a trivial request. ``echo`` is a bare asyncio echo
  server on a Unix socket (its own process); ``status`` and ``identity`` are those requests to agent A. The same
  client harness drives all three: N client *processes* (so the clients' own GIL does not cap the rate), each a
  blocking socket sending one pre-encoded frame and reading the answer, in a loop. Ratio: against ``echo`` at the
  same client count, in the same run. Each row also gives its server's CPU per request (/proc): the echo server's
  is what any asyncio server on this machine pays per request for the socket and the event loop alone.
Targets (issue 7): socket x1 >= 25 % and socket x8 >= 50 % of core. Issue 16 on the way there: socket x1 >= 0.12,
socket x8 >= 0.20 of core; status and identity >= 0.6 of echo at 1 client and >= 0.25 at 8.

Start-to-ready: wall time of ``keyagent start`` until it printed the eval lines (the socket accepts by then),
with the passphrase given (includes the key file's KDF and opening the store) and without (starts locked).
Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import struct
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.client import AgentClient  # noqa: E402
from agent.core.ratchet import STATUS_GO, Ratchet  # noqa: E402
from agent.pb.keyagent import agent_pb2 as pb  # noqa: E402
from agent.daemon.sessions import SessionManager  # noqa: E402
from agent.daemon.store import Store  # noqa: E402
from backends.memory import MemoryKey  # noqa: E402
from agent.daemon.config import AgentConfig, Home  # noqa: E402
from agent.daemon.server import AgentServer  # noqa: E402
from agent.framing import encode_frame  # noqa: E402
from tests.daemon.agentproc import OWNER_SIGNS, PASSPHRASE, AgentFactory, AgentProc, make_software_home  # noqa: E402
from tests.proof.common import home_backend  # noqa: E402
from tests.sessions.harness import MemoryBackend  # noqa: E402


#: Apps confirm processed messages in batches (ConfirmRequest takes a list); one confirm per 32 messages.
CONFIRM_BATCH = 32


def core_rate(n: int, payload: bytes) -> float:
    bob_spk = MemoryKey.generate()
    sk = os.urandom(32)
    alice = Ratchet.initiator(STATUS_GO, sk, bob_spk.public_key())
    bob = Ratchet.responder(STATUS_GO, sk, bob_spk.public_key(), None)
    t0 = time.perf_counter()
    for _ in range(n):
        h, ct = alice.encrypt(payload)
        bob.decrypt(h, ct, spk=bob_spk)
        bob.delete_message_key(h.dh, h.n)
    return n / (time.perf_counter() - t0)


def manager_rate(n: int, payload: bytes, tmp: Path) -> float:
    def make(name: str) -> SessionManager:
        key = MemoryKey.generate()
        (tmp / name).mkdir()
        return SessionManager(MemoryBackend(key), Store(tmp / name / "state.db", key), clock=time.time_ns,
                              rng=os.urandom)

    alice, bob = make("alice"), make("bob")
    res = alice.encrypt(bob.identity, b"hello", bob.our_bundle())
    bob.confirm([bob.decrypt(alice.identity, res.message).confirm_ref])
    refs: list[bytes] = []
    t0 = time.perf_counter()
    for _ in range(n):
        res = alice.encrypt(bob.identity, payload)
        refs.append(bob.decrypt(alice.identity, res.message).confirm_ref)
        if len(refs) == CONFIRM_BATCH:
            bob.confirm(refs)
            refs = []
    bob.confirm(refs)
    return n / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat, clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def preemptions(pid: int) -> int:
    """Involuntary context switches of every thread of a process so far (/proc/PID/task/*/status): how often
    the scheduler took the CPU away from it while it could still run."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("nonvoluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total


def socket_rate(n: int, clients: int, payload: bytes, a: AgentProc, b: AgentProc,
                cpu: dict[str, float] | None = None) -> float:
    """Messages per second; ``cpu`` (if given) receives each agent's CPU seconds per message during the run."""
    with AgentClient(a.sock) as ca, AgentClient(b.sock) as cb:
        a_id, b_id = ca.identity().identity_public_key, cb.identity().identity_public_key
        first = ca.encrypt(b_id, b"hello", cb.bundle())
        cb.confirm([cb.decrypt(a_id, first.message).confirm_ref])
    per = n // clients
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with AgentClient(a.sock) as ca, AgentClient(b.sock) as cb:
                barrier.wait()
                refs: list[bytes] = []
                for _ in range(per):
                    m = ca.encrypt(b_id, payload).message
                    refs.append(cb.decrypt(a_id, m).confirm_ref)
                    if len(refs) == CONFIRM_BATCH:
                        cb.confirm(refs)
                        refs = []
                cb.confirm(refs)
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    own = os.times()  # this process: the client threads (and this waiting main thread)
    cpu0 = {"A": cpu_seconds(a.pid), "B": cpu_seconds(b.pid), "B preempted": float(preemptions(b.pid)),
            "clients": own.user + own.system}
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    if cpu is not None:
        cpu["A"] = (cpu_seconds(a.pid) - cpu0["A"]) / (per * clients)
        cpu["B"] = (cpu_seconds(b.pid) - cpu0["B"]) / (per * clients)
        cpu["B preempted"] = (preemptions(b.pid) - cpu0["B preempted"]) / (per * clients)
        own = os.times()
        cpu["clients"] = (own.user + own.system - cpu0["clients"]) / (per * clients)
    return per * clients / elapsed


def placement_costs(n: int, payload: bytes, a: AgentProc, peer: bytes,
                    rounds: int = 3) -> dict[str, tuple[float, float]]:
    """Agent A's CPU per encrypt (µs) and the encrypts per second with one client and nothing else running, the
    client thread and A's threads pinned to the same CPU (``same``) or to two different ones (``other``), in
    alternating rounds (medians); everything is unpinned afterwards. What a request pays for crossing between CPUs
    on this machine (on a VM: waking an idle vCPU). Needs 2 CPUs; sends A's encrypts to ``peer`` without their
    decrypts, so it runs after the socket rows."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {}
    tids = [int(t) for t in os.listdir(f"/proc/{a.pid}/task")]
    got: dict[str, list[tuple[float, float]]] = {"same": [], "other": []}
    try:
        with AgentClient(a.sock) as c:
            for _ in range(rounds):
                for where, agent_cpu in (("same", cpus[0]), ("other", cpus[1])):
                    os.sched_setaffinity(0, {cpus[0]})
                    for tid in tids:
                        os.sched_setaffinity(tid, {agent_cpu})
                    for _ in range(n // 10):  # settle where they now run
                        c.encrypt(peer, payload)
                    cpu0, t0 = cpu_seconds(a.pid), time.perf_counter()
                    for _ in range(n):
                        c.encrypt(peer, payload)
                    got[where].append(((cpu_seconds(a.pid) - cpu0) / n, n / (time.perf_counter() - t0)))
    finally:  # every thread A has now (one it started meanwhile inherited the pinning)
        os.sched_setaffinity(0, set(cpus))
        for tid in [int(t) for t in os.listdir(f"/proc/{a.pid}/task")]:
            try:
                os.sched_setaffinity(tid, set(cpus))
            except OSError:  # a thread that has ended
                pass
    return {k: (statistics.median(c for c, _ in v), statistics.median(r for _, r in v)) for k, v in got.items()}


def sign_inprocess_rate(n: int) -> float:
    key = MemoryKey.generate()
    digest = os.urandom(32)
    t0 = time.perf_counter()
    for _ in range(n):
        key.sign(digest)
    return n / (time.perf_counter() - t0)


def sign_socket_rate(n: int, clients: int, a: AgentProc) -> float:
    per = n // clients
    barrier = threading.Barrier(clients + 1)
    digest = os.urandom(32)

    def work() -> None:
        with AgentClient(a.sock) as c:
            barrier.wait()
            for _ in range(per):
                c.sign(digest)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return per * clients / (time.perf_counter() - t0)


def _echo_server(path: str, ready: "mp.synchronize.Event") -> None:
    """A bare asyncio echo server (Protocol, no framing logic: bytes back as they come): the socket floor."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Echo, path)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def _client_loop(path: str, frame: bytes, seconds: float, start: "mp.synchronize.Event", out: "mp.Queue[int]") -> None:
    """One client process: send the frame, read one framed answer, repeat until the time is up; report the count."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)

    def read_exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed")
            buf += chunk
        return buf

    s.sendall(frame)  # warm up (and connect-time admission) before the clock starts
    read_exact(struct.unpack(">I", read_exact(4))[0])
    start.wait()
    count = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        s.sendall(frame)
        read_exact(struct.unpack(">I", read_exact(4))[0])
        count += 1
    s.close()
    out.put(count)


def trivial_rate(path: str, frame: bytes, clients: int, seconds: float, server_pid: int) -> tuple[float, float]:
    """Requests per second of ``frame`` against ``path`` from ``clients`` client processes, and the server's CPU
    seconds per request over the run (``server_pid``: its process; kernel time included)."""
    ctx = mp.get_context("fork")
    start = ctx.Event()
    out: "mp.Queue[int]" = ctx.Queue()
    procs = [ctx.Process(target=_client_loop, args=(path, frame, seconds, start, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    time.sleep(0.3)  # every client connected and warmed up
    cpu0 = cpu_seconds(server_pid)
    t0 = time.perf_counter()
    start.set()
    total = sum(out.get(timeout=seconds + 30) for _ in procs)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(server_pid) - cpu0
    for p in procs:
        p.join()
    return total / elapsed, cpu / max(1, total)


def trivial_rows(agent: AgentProc, seconds: float) -> float:
    """echo / status / identity at 1 and 8 clients, interleaved per client count (same load on each side), each
    with its server's CPU per request; returns the echo rate at 1 client."""
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="kecho") as d:
        path = os.path.join(d, "echo.sock")
        ready = ctx.Event()
        server = ctx.Process(target=_echo_server, args=(path, ready), daemon=True)
        server.start()
        assert server.pid is not None
        try:
            ready.wait(10)
            frames = {name: (lambda b: struct.pack(">I", len(b)) + b)(req.SerializeToString())
                      for name, req in (("status", pb.Request(status=pb.StatusRequest())),
                                        ("identity", pb.Request(identity=pb.IdentityRequest())))}
            echo1 = 0.0
            for clients in (1, 8):
                echo, cpu = trivial_rate(path, frames["status"], clients, seconds, server.pid)
                echo1 = echo1 or echo
                print(f"{'echo x' + str(clients):<12} {echo:>10.0f} {1.0:>7.2f}   (req/s; bare asyncio echo server; "
                      f"its CPU {cpu * 1e6:.0f} us per request)")
                for name, frame in frames.items():
                    rate, cpu = trivial_rate(agent.sock, frame, clients, seconds, agent.pid)
                    print(f"{name + ' x' + str(clients):<12} {rate:>10.0f} {rate / echo:>7.2f}   (the agent's CPU "
                          f"{cpu * 1e6:.0f} us per request)")
        finally:
            server.terminate()
            server.join()
    return echo1


class _Sink(asyncio.Transport):
    """Stands in for a client's socket: keeps what the agent writes, so no system call or wake-up is measured."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


#: Bytes written before each request of the "cold" loop rows: as much as this machine's L3 (32 MiB; L2 is 1 MiB
#: per core), so nothing of the agent's code or data is left in any cache level (the bound for a request after
#: other processes ran on its CPU, or after its idle vCPU woke on another core).
COLD_BYTES = 32 << 20


def core_cache_bytes() -> int:
    """Twice this CPU's own (per-core) L2 as the kernel reports it, else 2 MiB: written before each request of the
    "own-cold" loop rows, it pushes out L1 and L2 but leaves most of the L3, which all cores share."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return 2 * int(size.rstrip("KM")) * scale
        except (OSError, ValueError):
            break
    return 2 << 20


def evict_caches(buf: bytearray) -> None:
    """Write one byte per 64-byte cache line of ``buf``: what was in the CPU's caches before is pushed out."""
    buf[::64] = b"\1" * (len(buf) // 64)


def loop_costs(n: int, payload: bytes, tmp: Path, *, flush: int = 0) -> dict[str, float]:
    """The agent's own work per request, in seconds of its event-loop thread's CPU (``time.thread_time``): a real
    AgentServer on a software home in this process, one admitted connection whose transport is a :class:`_Sink`;
    each request's frame is handed to the connection and only that callback is timed (decode, policy, run, audit
    line, answer; a decrypt's commit happens on the commit thread and is not counted). Peer: an in-process
    SessionManager. No socket, no second process: what is left of a socket row beyond these is wake-ups and
    system calls.

    ``flush``: that many bytes are written before each request (:func:`evict_caches`, untimed), pushing the agent's
    code and data out of the caches: :data:`COLD_BYTES` flushes every level, as when nothing of the agent is left
    anywhere; :func:`core_cache_bytes` only this core's own L1 and L2 (the shared L3 keeps a copy). The running
    agents' cost per request, compared with the two, tells how much of their caches the client and the other
    agent take between two requests."""
    tag = f"flush{flush}"
    flushed = bytearray(flush) if flush else None
    home = make_software_home(tmp / f"loop-home-{tag}")
    backend = home_backend(home, PASSPHRASE)
    backend.unlock(PASSPHRASE)
    rundir = Path(tempfile.mkdtemp(prefix="kloop"))  # short: sun_path is 108 bytes
    server = AgentServer(home=Home.at(home), config=AgentConfig(), backend=backend,
                         socket_path=str(rundir / "a.sock"))
    key = MemoryKey.generate()
    (tmp / f"loop-peer-{tag}").mkdir()
    peer = SessionManager(MemoryBackend(key), Store(tmp / f"loop-peer-{tag}" / "state.db", key), clock=time.time_ns,
                          rng=os.urandom)
    costs: dict[str, float] = {}

    async def main() -> None:
        served = asyncio.ensure_future(server.run(ready=lambda _: None))
        while not server.socket_path or not os.path.exists(server.socket_path):
            await asyncio.sleep(0.01)
        client = socket.socket(socket.AF_UNIX)
        client.connect(server.socket_path)
        while not server._conns or next(iter(server._conns)).transport is None:  # admitted, then made
            await asyncio.sleep(0.01)
        conn = next(iter(server._conns))
        sink = _Sink()
        conn.transport = sink

        async def call(req: pb.Request) -> tuple[pb.Response, float]:
            frame = encode_frame(req.SerializeToString())
            sink.out.clear()
            if flushed is not None:
                evict_caches(flushed)
            c0 = time.thread_time()
            conn.data_received(frame)
            spent = time.thread_time() - c0
            while not sink.out:  # a decrypt's answer comes back once its commit is durable
                await asyncio.sleep(0)
            return pb.Response.FromString(sink.out[0][4:]), spent

        try:
            me = (await call(pb.Request(identity=pb.IdentityRequest())))[0].identity.identity_public_key
            bundle = (await call(pb.Request(bundle=pb.BundleRequest())))[0].bundle.bundle
            first = peer.encrypt(me, b"hello", bundle)
            got = (await call(pb.Request(decrypt=pb.DecryptRequest(sender_identity=peer.identity,
                                                                   message=first.message))))[0]
            await call(pb.Request(confirm=pb.ConfirmRequest(refs=[got.decrypt.confirm_ref])))
            messages = [peer.encrypt(me, payload).message for _ in range(n)]
            total, refs = 0.0, []
            for m in messages:
                r, spent = await call(pb.Request(decrypt=pb.DecryptRequest(sender_identity=peer.identity, message=m)))
                total += spent
                refs.append(r.decrypt.confirm_ref)
                if len(refs) == CONFIRM_BATCH:
                    await call(pb.Request(confirm=pb.ConfirmRequest(refs=refs)))
                    refs = []
            costs["decrypt"] = total / n
            for name, req in (("encrypt", pb.Request(encrypt=pb.EncryptRequest(peer_identity=peer.identity,
                                                                                payload=payload))),
                              ("status", pb.Request(status=pb.StatusRequest())),
                              ("identity", pb.Request(identity=pb.IdentityRequest()))):
                rounds = n if name == "encrypt" else n * 4
                total = 0.0
                for _ in range(rounds):
                    total += (await call(req))[1]
                costs[name] = total / rounds
        finally:
            client.close()
            server.request_stop("benchmark done")
            await served

    try:
        asyncio.run(main())
    finally:
        peer.close()
        shutil.rmtree(rundir, ignore_errors=True)
    return costs


def fsync_ms(directory: Path, rounds: int = 50) -> float:
    """Median latency of one 4 KiB write + fsync in ``directory`` (where the agents keep their state): the floor
    of one durable commit, which an answer that owes one (an encrypt at its reservation mark, a confirm) waits for."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(rounds):
            os.write(fd, b"\0" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


def start_times(factory: AgentFactory, rounds: int) -> tuple[float, float]:
    with_secret: list[float] = []
    locked: list[float] = []
    for _ in range(rounds):
        for bucket, passphrase in ((with_secret, "correct horse battery staple"), (locked, None)):
            agent = factory.new()
            t0 = time.perf_counter()
            agent.start(passphrase=passphrase)
            bucket.append(time.perf_counter() - t0)
            with AgentClient(agent.sock) as c:
                c.status()
            agent.kill()
    return statistics.median(with_secret), statistics.median(locked)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--start-rounds", type=int, default=3)
    ap.add_argument("--trivial-seconds", type=float, default=2.0)
    ap.add_argument("--only-trivial", action="store_true", help="only the echo/status/identity rows")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each socket row, core measured between them")
    args = ap.parse_args()
    payload = os.urandom(args.size)
    factory = AgentFactory()
    try:
        with tempfile.TemporaryDirectory() as d:
            cores = [core_rate(args.n, payload)]
            mgr = manager_rate(args.n, payload, Path(d))
            loop = loop_costs(args.n, payload, Path(d))
            own_cold = loop_costs(args.n, payload, Path(d), flush=core_cache_bytes())
            cold = loop_costs(args.n, payload, Path(d), flush=COLD_BYTES)
        a, b = factory.new(config=OWNER_SIGNS), factory.new(config=OWNER_SIGNS)
        a.start()
        b.start()
        print(f"payload {args.size} B, n={args.n}")
        print(f"{'row':<12} {'msg/s':>10} {'ratio':>7}")
        for name in ("status", "identity", "encrypt", "decrypt"):
            print(f"{'loop ' + name:<12} {loop[name] * 1e6:>10.1f}   (us of the agent's event-loop thread per "
                  f"request, in process, no socket)")
        for name in ("encrypt", "decrypt"):
            print(f"{'loop ' + name + ' own-cold':<12} {own_cold[name] * 1e6:>10.1f}   (the same, this core's own "
                  f"caches flushed before each request ({core_cache_bytes() >> 20} MiB written: L1, L2; the L3 "
                  f"keeps its copy)")
        for name in ("encrypt", "decrypt"):
            print(f"{'loop ' + name + ' cold':<12} {cold[name] * 1e6:>10.1f}   (the same, every cache level "
                  f"flushed before each request ({COLD_BYTES >> 20} MiB, the L3 too): nothing of the agent left "
                  f"in any cache)")
        if args.only_trivial:
            trivial_rows(a, args.trivial_seconds)
            return
        # Rounds: x1, x8, x1, x8, ... with a core measurement between any two, so each socket round has a baseline
        # taken just before and just after it (this shared VM's speed drifts by tens of percent within a minute).
        rounds: dict[int, list[tuple[float, float, dict[str, float]]]] = {1: [], 8: []}
        for _ in range(max(1, args.rounds)):
            for clients in (1, 8):
                cpu: dict[str, float] = {}
                rate = socket_rate(args.n, clients, payload, a, b, cpu)
                cores.append(core_rate(args.n, payload))
                around = statistics.harmonic_mean(cores[-2:])  # the mean time per core message of the two
                rounds[clients].append((rate, rate / around, cpu))
        core = statistics.median(cores)
        print(f"{'core':<12} {core:>10.0f} {1.0:>7.2f}   (median of {len(cores)} measurements, one before and after "
              f"every socket round: {min(cores):.0f}-{max(cores):.0f})")
        print(f"{'manager':<12} {mgr:>10.0f} {mgr / core:>7.2f}")
        for clients, got in rounds.items():
            ratios = sorted(r for _, r, _ in got)
            rate = statistics.median(r for r, _, _ in got)
            mean = {k: statistics.fmean(c[k] for _, _, c in got) for k in got[0][2]}
            print(f"{'socket x' + str(clients):<12} {rate:>10.0f} {statistics.median(ratios):>7.2f}   (median of "
                  f"{len(got)} rounds, each against the core measured just before and after it: ratios "
                  f"{ratios[0]:.2f}-{ratios[-1]:.2f}; CPU per message: agent A {mean['A'] * 1e6:.0f} us, agent B "
                  f"{mean['B'] * 1e6:.0f} us, clients {mean['clients'] * 1e6:.0f} us; one event-loop thread each; "
                  f"agent B preempted {mean['B preempted']:.2f} times per message)")
        with AgentClient(b.sock) as cb:
            b_id = cb.identity().identity_public_key
        placed = placement_costs(args.n * 3, payload, a, b_id)
        if placed:
            (same_cpu, same_rate), (other_cpu, other_rate) = placed["same"], placed["other"]
            print(f"placement: one client, nothing else running: agent A on the client's CPU {same_cpu * 1e6:.0f} us "
                  f"of CPU per encrypt, {same_rate:.0f} encrypts/s; on the other CPU {other_cpu * 1e6:.0f} us, "
                  f"{other_rate:.0f} encrypts/s")
        fsync = fsync_ms(a.home)
        print(f"fsync p50: {fsync:.2f} ms (4 KiB write + fsync next to the agents' state)")
        sign_core = sign_inprocess_rate(args.n * 4)
        print(f"{'sign core':<12} {sign_core:>10.0f} {1.0:>7.2f}   (socket overhead alone: IK sign, no state)")
        for clients in (1, 8):
            rate = sign_socket_rate(args.n * 4, clients, a)
            print(f"{'sign x' + str(clients):<12} {rate:>10.0f} {rate / sign_core:>7.2f}")
        echo1 = trivial_rows(a, args.trivial_seconds)
        # The least one client could take per message, whatever the agents did: a round trip to each agent (as
        # cheap as the bare echo server's) and the ratchet work itself (one core message). No fsync on the way: a
        # decrypt is answered before its commit (sessions.py rule 8).
        floor = 1.0 / (2.0 / echo1 + 1.0 / core)
        print(f"{'floor x1':<12} {floor:>10.0f} {floor / core:>7.2f}   (2 echo round trips + 1 core message: no "
              f"agent work at all)")
        ready_unlocked, ready_locked = start_times(factory, args.start_rounds)
        print(f"start-to-ready (keyagent start, median of {args.start_rounds}): "
              f"{ready_unlocked * 1000:.0f} ms with passphrase, {ready_locked * 1000:.0f} ms locked")
    finally:
        factory.close()


if __name__ == "__main__":
    main()
