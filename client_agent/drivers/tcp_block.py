"""A block driver's TCP connection and request queue, shared by NBD (drivers/block/nbd.py) and the
iSCSI initiator (drivers/scsi/iscsi_tcp.py): what Linux's nbd keeps in ``struct nbd_sock`` + the
blk-mq tag set, and iscsi_tcp in ``iscsi_sw_tcp_conn`` + libiscsi's session. Sans-I/O like the
rest of the host: a worker task drives a protocol state machine (``protocols.nbd_client`` /
``protocols.iscsi_initiator``) over the agent's ``TcpSock``.

Invariants owned here:
- Memory (kernel-mechanism.md §9): with ``set_memalloc(True)`` every socket the device creates is
  SOCK_MEMALLOC before it connects, again on every reconnect, with the protocol's
  ``sk_allocation`` (``_mark_socket``); connect, every send and every receive run under
  PF_MEMALLOC (nbd's ``__sock_xmit`` / iscsi_tcp's PDU transmit). Linux marks these sockets
  unconditionally; ``memalloc`` off models a kernel without the cure (before 3.6).
- At most ``queue_depth`` requests are in flight (the tag set); a request waits for a tag.
- Every request ends exactly once: its reply, or an error the caller turns into a
  ``WriteError``. A request whose connection is lost (RST, FIN, TCP giving up, a protocol
  violation, no reply within ``timeout_s``) is sent again, whole, on the next connection --
  nbd's requeue after ``nbd_reconnect_socket``, libiscsi's requeue after session recovery.
- Reconnects: the first at once, then ``RECONNECT_INIT_S`` after the previous attempt, doubling
  to ``RECONNECT_MAX_S``; the delay is reset by a completed handshake.
- Counters: ``connect_count``, ``connect_fails``, ``reconnects``, ``handshake_fails``,
  ``requests_requeued``, ``request_timeouts``, ``protocol_errors`` plus each protocol's own.
"""

from __future__ import annotations

from ..mm.page_io import ActivateError
from ..net.ipv4.tcp import CLOSE as TCP_CLOSE
from ..tasks import TIMEOUT, Sleep, WaitEvent

RECONNECT_INIT_S = 0.5
RECONNECT_MAX_S = 8.0
CONNECT_TIMEOUT_S = 30.0
SEND_RETRY_S = 0.05
RESEND = object()                  # a waiter's wake value: the connection was lost, send again


class TcpBlockDevice:
    """Subclasses define ``kind``, ``_new_machine()``, ``_mark_socket(sk)``,
    ``_handshake_done(ev)`` (-> True/False/None: ready, failed, not yet), ``_reply(ev)`` (->
    (handle, value) or None), ``_idle(now)`` (keepalive, optional)."""

    kind = "tcp-block"

    def __init__(self, stack, sched, server: str, port: int, *, queue_depth: int = 16,
                 timeout_s: float = 30.0, log=None, on_tx=None, name: str = "") -> None:
        self.stack = stack
        self.sched = sched
        self.alloc = stack.alloc
        self.server, self.port = server, port
        self.queue_depth = queue_depth
        self.timeout_s = timeout_s
        self.log = log or (lambda line: None)
        self.on_tx = on_tx
        self.name = name
        self._memalloc = False
        self.closed = False
        self.sk = None
        self.m = None                      # the protocol machine of the current connection
        self.state = "down"                # down | connecting | handshake | ready
        self.gen = 0                       # connection generation (a new one per connect)
        self.fail_reason: str | None = None
        self.was_ready = False             # a handshake completed once (activation succeeded)
        self.reconnect_delay = 0.0
        self.connect_start: float | None = None
        self.waiters: dict = {}            # handle -> wait key, on the current generation
        self.in_flight = 0
        self.tag_waiters = 0
        self._txbuf = bytearray()
        self._ready_key = ("tcp-block-ready", id(self))
        self._tag_key = ("tcp-block-tag", id(self))
        self.counters: dict = {"connect_count": 0, "connect_fails": 0, "reconnects": 0,
                               "handshake_fails": 0, "requests_requeued": 0,
                               "request_timeouts": 0, "protocol_errors": 0}
        self.task = None

    # -- StorageBackend surface shared by both protocols ---------------------------------------
    @property
    def memalloc(self) -> bool:
        return self._memalloc

    def set_memalloc(self, on: bool) -> None:
        """sk_set_memalloc on the current socket (nbd_start_device / iscsi_sw_tcp_conn_bind);
        every later socket gets it before connect."""
        self._memalloc = bool(on)
        if self.sk is None:
            return
        if on:
            self.sk.sk_set_memalloc()
        else:
            self.sk.sk_clear_memalloc()

    def describe(self) -> str:
        return f"{self.server}:{self.port}/{self.name}"

    def snapshot(self) -> dict:
        out = dict(self.counters)
        out.update(state=self.state, in_flight=self.in_flight, generation=self.gen,
                   memalloc=self._memalloc,
                   socket=self.sk.snapshot() if self.sk is not None else None)
        return out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sk is not None:
            self._goodbye()
            self.sk.close(self.sched.now)
            self._tx_done()
        if self.task is not None and self.task.state not in ("done", "crashed", "killed"):
            self.sched.kill(self.task)

    def _goodbye(self) -> None:
        """NBD_CMD_DISC / Logout on a clean close (subclasses)."""

    # -- the connection -----------------------------------------------------------------------
    def start(self) -> None:
        if self.task is None:
            self.task = self.sched.spawn(f"{self.kind}-recv/{self.server}:{self.port}",
                                         self._worker())

    def wait_ready(self, timeout_s: float):
        """Generator: until the first handshake finished -> None; ActivateError on failure."""
        self.start()
        deadline = self.sched.now + timeout_s
        while self.state != "ready":
            if self.fail_reason is not None:
                raise ActivateError(f"{self.kind} {self.describe()}: {self.fail_reason}")
            got = yield WaitEvent(self._ready_key, until=deadline,
                                  reason=f"{self.kind} handshake with {self.describe()}")
            if got is TIMEOUT:
                raise ActivateError(f"{self.kind} {self.describe()}: no handshake within "
                                    f"{timeout_s:g} s (target down or unreachable?)")

    def _tx_done(self) -> None:
        if self.on_tx is not None:
            self.on_tx()

    def _pf(self):
        return self.alloc.memalloc_noreclaim_save() if self._memalloc else None

    def _unpf(self, old) -> None:
        if old is not None:
            self.alloc.memalloc_noreclaim_restore(old)

    def _connect(self):
        """Generator: one connect attempt (after the backoff when reconnecting)."""
        sched = self.sched
        if self.sk is not None:
            start = (self.connect_start or 0.0) + self.reconnect_delay
            self.reconnect_delay = min(max(self.reconnect_delay * 2, RECONNECT_INIT_S),
                                       RECONNECT_MAX_S)
            old, self.sk = self.sk, None
            old.close(sched.now)               # SOCK_MEMALLOC cleared with the socket
            self._tx_done()
            if start > sched.now:
                yield Sleep(start, reason=f"{self.kind} reconnect delay to {self.describe()}",
                            reconnect=True)
            if self.closed:
                return
        self.connect_start = sched.now
        sk = self.stack.tcp_socket()
        sk.nodelay = True
        self._mark_socket(sk)
        if self._memalloc:
            sk.sk_set_memalloc()
        self.sk = sk
        self.state = "connecting"
        old = self._pf()
        try:
            rc = sk.connect((self.server, self.port), sched.now)
        finally:
            self._unpf(old)
        self._tx_done()
        deadline = sched.now + CONNECT_TIMEOUT_S
        while rc == 0 and not sk.established and not sk.sk_err and sk.state != TCP_CLOSE and not self.closed:
            got = yield WaitEvent(sk.wait_key, until=deadline,
                                  reason=f"{self.kind} connect {self.describe()}")
            if got is TIMEOUT:
                break
        if not sk.established:
            self.counters["connect_fails"] += 1
            self.state = "down"
            if not self.was_ready:
                self.fail_reason = f"connect failed ({-rc if rc else sk.sk_err or 'timeout'})"
                sched.wake(self._ready_key)
            return
        self.gen += 1
        self.counters["connect_count"] += 1
        if self.gen > 1:
            self.counters["reconnects"] += 1
        self._txbuf.clear()
        self.m = self._new_machine()
        self.state = "handshake"
        self._flush()

    def _lost(self, why: str) -> None:
        """The connection is gone: every waiter is woken to send again on the next one."""
        if not self.was_ready and self.fail_reason is None:
            self.fail_reason = why
            self.sched.wake(self._ready_key)
        self.state = "down"
        self.log(f"{self.kind}: {self.describe()}: connection lost ({why}), reconnecting")
        waiters, self.waiters = self.waiters, {}
        for key in waiters.values():
            self.sched.wake(key, RESEND)

    def force_reconnect(self, why: str) -> None:
        if self.sk is not None and self.state in ("handshake", "ready"):
            self.sk.abort(self.sched.now)
            self._tx_done()
            self._lost(why)
            self.sched.wake(self.sk.wait_key)

    def _worker(self):
        sched = self.sched
        while not self.closed:
            if self.state == "down":
                if not self.was_ready and self.fail_reason is not None:
                    return                     # activation failed: nothing to reconnect
                yield from self._connect()
                continue
            sk = self.sk
            if self._txbuf:
                self._flush()
            old = self._pf()
            try:
                data = sk.recv(sched.now)
            finally:
                self._unpf(old)
            if data is None:
                until = sched.now + SEND_RETRY_S if self._txbuf else self._idle(sched.now)
                yield WaitEvent(sk.wait_key, until=until,
                                reason=f"{self.kind} recv {self.describe()}")
                continue
            if not isinstance(data, bytes) or not data:
                self._lost("peer closed" if data == b"" else f"errno {-data}")
                continue
            self._tx_done()                    # the read may have opened the window: ACK
            for ev in self.m.receive(data):
                self._event(ev)
                if self.state == "down":
                    break
            if self.state != "down":
                self._flush()

    def _event(self, ev) -> None:
        if self.state == "handshake":
            done = self._handshake_done(ev)
            if done is True:
                self.state = "ready"
                self.was_ready = True
                self.reconnect_delay = 0.0
                self.sched.wake(self._ready_key)
            elif done is False:
                self.counters["handshake_fails"] += 1
                reason = getattr(ev, "reason", "handshake failed")
                if not self.was_ready:
                    self.fail_reason = f"{reason}: {getattr(ev, 'detail', '')}".rstrip(": ")
                    self.sched.wake(self._ready_key)
                self.sk.abort(self.sched.now)
                self._tx_done()
                self._lost(reason)
            return
        got = self._reply(ev)
        if got is None:
            return
        if got is False:                       # a protocol violation: the connection pays
            self.counters["protocol_errors"] += 1
            self.force_reconnect(getattr(ev, "reason", "protocol error"))
            return
        handle, value = got
        key = self.waiters.pop(handle, None)
        if key is not None:
            self.sched.wake(key, value)

    def _idle(self, now: float):
        return None

    def _flush(self) -> None:
        """Hand the socket what the machine queued (under PF_MEMALLOC when marked)."""
        if self.m is not None:
            self._txbuf += self.m.data_to_send()
        buf = self._txbuf
        if not buf or self.sk is None:
            return
        old = self._pf()
        try:
            while buf:
                n = self.sk.send(memoryview(buf), self.sched.now)
                if n <= 0:
                    break
                del buf[:n]
        finally:
            self._unpf(old)
        self._tx_done()
        if buf:
            self.sched.wake(self.sk.wait_key)   # the worker keeps pushing

    # -- requests -----------------------------------------------------------------------------
    def request(self, submit, what: str):
        """Generator: ``submit(machine)`` queues one request on the current connection and
        returns its handle; the request is sent again on every new connection until its reply
        comes. Returns the reply value (``_reply``'s), or ``None`` if the device was closed."""
        sched = self.sched
        while self.in_flight >= self.queue_depth:
            self.tag_waiters += 1
            yield WaitEvent(self._tag_key, reason=f"{self.kind} tag ({self.queue_depth} in flight)")
            self.tag_waiters -= 1
            if self.closed:
                return None
        self.in_flight += 1
        try:
            key = None
            while not self.closed:
                if self.state != "ready":
                    yield WaitEvent(self._ready_key, until=sched.now + 1.0,
                                    reason=f"{self.kind} {what}: waiting for the connection")
                    continue
                handle = submit(self.m)
                key = (f"{self.kind}-req", id(self), self.gen, handle)
                self.waiters[handle] = key
                self._flush()
                got = yield WaitEvent(key, until=sched.now + self.timeout_s,
                                      reason=f"{self.kind} {what} reply")
                if got is RESEND:
                    self.counters["requests_requeued"] += 1
                    continue
                if got is TIMEOUT:
                    self.counters["request_timeouts"] += 1
                    self.waiters.pop(handle, None)
                    self.force_reconnect(f"{what} timed out after {self.timeout_s:g} s")
                    self.counters["requests_requeued"] += 1
                    continue
                return got
            return None
        finally:
            self.in_flight -= 1
            if self.tag_waiters:
                sched.wake_one(self._tag_key)
