"""Pure parsers for what comes out of the guest: the sampler's /proc stream (ttyS1) and the console
(ttyS0: kernel messages and the init script's ``@`` lines).

Shapes (keys are the /proc files' own names):
- ``parse_vmstat``   /proc/vmstat          -> {"pswpout": int, "nr_free_pages": int, ...}
- ``parse_zoneinfo`` /proc/zoneinfo        -> {"DMA32": {"free": int, "min": int, "low": int, "high": int,
                                               "managed": int, "nr_free_pages": int, ...}, ...}
                                               (node N > 0 as "N1/DMA32")
- ``parse_netstat``  /proc/net/netstat|snmp -> {"TcpExt": {"PFMemallocDrop": int, ...}, "Udp": {...}, ...}
- ``parse_sockstat`` /proc/net/sockstat    -> {"sockets": {"used": int}, "UDP": {"inuse": int, "mem": int}, ...}
- ``SamplerStream.feed(bytes)``           -> complete samples {"seq", "uptime_ms", "vmstat", "zoneinfo",
                                               "netstat", "snmp", "sockstat"}; partial input is kept
- ``ConsoleScanner.feed(bytes)``          -> events {"kind", "line", "t_kernel" (s, printk time or None), ...}
  kinds: page_allocation_failure (task, order, gfp), hung_task (task, pid, seconds), nfs_not_responding,
  nfs_ok, oom, panic, soft_lockup, rcu_stall, step / workload / mount / noise / sampler / fail / warn
  (the init script's and helper's ``@`` lines, with their key=value fields)
"""

from __future__ import annotations

import re

# ------------------------------------------------------------------------------ /proc files


def _int(v: str):
    try:
        return int(v)
    except ValueError:
        return v


def parse_vmstat(text: str) -> dict:
    out = {}
    for ln in text.splitlines():
        parts = ln.split()
        if len(parts) == 2:
            out[parts[0]] = _int(parts[1])
    return out


ZONE_RE = re.compile(r"^Node (\d+), zone\s+(\S+)")


def parse_zoneinfo(text: str) -> dict:
    zones: dict = {}
    cur = None
    in_pagesets = False
    for ln in text.splitlines():
        m = ZONE_RE.match(ln)
        if m:
            node, name = int(m.group(1)), m.group(2)
            cur = zones.setdefault(name if node == 0 else f"N{node}/{name}", {})
            in_pagesets = False
            continue
        if cur is None:
            continue
        s = ln.strip()
        if s.startswith("pagesets"):
            in_pagesets = True
            continue
        if s.startswith("per-node stats"):
            continue
        parts = s.split()
        if not parts:
            continue
        if parts[0] == "pages" and len(parts) == 3 and parts[1] == "free":
            cur["free"] = int(parts[2])
            in_pagesets = False
        elif len(parts) == 2 and not in_pagesets and not parts[0].endswith(":"):
            cur[parts[0]] = _int(parts[1])
        elif parts[0] == "protection:":
            cur["protection"] = [int(x) for x in re.findall(r"\d+", s)]
        elif parts[0] in ("node_unreclaimable:", "start_pfn:") and len(parts) == 2:
            cur[parts[0][:-1]] = _int(parts[1])
            in_pagesets = False
    return zones


def parse_netstat(text: str) -> dict:
    """/proc/net/netstat and /proc/net/snmp: pairs of 'Proto: names' / 'Proto: values' lines."""
    out: dict = {}
    lines = [ln for ln in text.splitlines() if ":" in ln]
    for i in range(0, len(lines) - 1, 2):
        k1, names = lines[i].split(":", 1)
        k2, vals = lines[i + 1].split(":", 1)
        if k1 != k2:
            continue
        nn, vv = names.split(), vals.split()
        if len(nn) != len(vv):
            continue
        out.setdefault(k1.strip(), {}).update({n: _int(v) for n, v in zip(nn, vv)})
    return out


def parse_sockstat(text: str) -> dict:
    out: dict = {}
    for ln in text.splitlines():
        if ":" not in ln:
            continue
        k, rest = ln.split(":", 1)
        t = rest.split()
        out[k.strip()] = {t[i]: _int(t[i + 1]) for i in range(0, len(t) - 1, 2)}
    return out


def parse_rpc_nfs(text: str) -> dict:
    """/proc/net/rpc/nfs: 'net N N N N', 'rpc calls retrans authrefresh', 'procN N c0 c1 ...'."""
    out: dict = {}
    for ln in text.splitlines():
        t = ln.split()
        if not t:
            continue
        if t[0] == "rpc" and len(t) >= 4:
            out["rpc"] = {"calls": int(t[1]), "retrans": int(t[2]), "authrefresh": int(t[3])}
        elif t[0] == "net" and len(t) >= 5:
            out["net"] = {"packets": int(t[1]), "udp": int(t[2]), "tcp": int(t[3]), "tcpconn": int(t[4])}
        elif t[0].startswith("proc") and len(t) > 2:
            out[t[0]] = [int(x) for x in t[2:]]
    return out


PARSERS = {"vmstat": parse_vmstat, "zoneinfo": parse_zoneinfo, "netstat": parse_netstat,
           "snmp": parse_netstat, "sockstat": parse_sockstat, "rpc_nfs": parse_rpc_nfs}
# the files every sample has; rpc_nfs appears once sunrpc is loaded
REQUIRED = ("vmstat", "zoneinfo", "netstat", "snmp", "sockstat")
HEAD_RE = re.compile(rb">>> (\d+) (\d+) (\w+)\r?\n")
END = b"<<<"


class SamplerStream:
    """The sampler's framing (``>>> SEQ UPTIME_MS NAME`` / contents / ``<<<``), incrementally.

    A sample is complete when every file of its sequence number has been seen and the next
    sequence number starts (or ``flush()``); a torn record (the guest died mid-write) is dropped
    and counted in ``torn``."""

    def __init__(self):
        self.buf = bytearray()
        self.cur: dict | None = None
        self.torn = 0
        self.bytes = 0

    def feed(self, data: bytes) -> list[dict]:
        self.bytes += len(data)
        self.buf += data
        out = []
        while True:
            m = HEAD_RE.search(self.buf)
            if not m:
                break
            end = self.buf.find(END, m.end())
            nxt = HEAD_RE.search(self.buf, m.end())
            if nxt is not None and (end < 0 or nxt.start() < end):
                self.torn += 1          # a header without its end marker before the next header
                del self.buf[:nxt.start()]
                continue
            if end < 0:
                break
            seq, ms, name = int(m.group(1)), int(m.group(2)), m.group(3).decode()
            body = bytes(self.buf[m.end():end]).decode(errors="replace")
            del self.buf[:end + len(END)]
            if self.cur is not None and self.cur["seq"] != seq:
                out.append(self.cur)
                self.cur = None
            if self.cur is None:
                self.cur = {"seq": seq, "uptime_ms": ms}
            parser = PARSERS.get(name)
            if parser is not None:
                self.cur[name] = parser(body)
        if self.cur is not None and all(k in self.cur for k in PARSERS):
            out.append(self.cur)
            self.cur = None
        return out


# ------------------------------------------------------------------------------ console
PRINTK_T = re.compile(r"^\[\s*(\d+\.\d+)\]\s?")
PATTERNS = [
    ("page_allocation_failure",
     re.compile(r"(?P<task>\S+): page allocation failure: order:(?P<order>\d+), mode:(?P<mode>0x[0-9a-f]+)\((?P<gfp>[^)]*)\)")),
    ("hung_task", re.compile(r"INFO: task (?P<task>.+?):(?P<pid>\d+) blocked for more than (?P<seconds>\d+) seconds")),
    ("nfs_not_responding", re.compile(r"nfs: server (?P<server>\S+) not responding, (?P<how>still trying|timed out)")),
    ("nfs_ok", re.compile(r"nfs: server (?P<server>\S+) OK")),
    ("oom", re.compile(r"Out of memory|invoked oom-killer")),
    ("panic", re.compile(r"Kernel panic - not syncing: (?P<why>.*)")),
    ("soft_lockup", re.compile(r"watchdog: BUG: soft lockup")),
    ("rcu_stall", re.compile(r"rcu: INFO: rcu_\w+ (self-)?detected stall")),
]
AT_LINE = re.compile(r"^@(?P<kind>[a-z-]+)\s?(?P<rest>.*)$")
KV = re.compile(r"(\w+)=(\"[^\"]*\"|\S*)")


def parse_at_line(line: str) -> dict | None:
    """'@workload done pages=10 verified=10' -> {"kind": "workload", "words": ["done"], "pages": 10, ...}."""
    m = AT_LINE.match(line)
    if not m:
        return None
    rest = m.group("rest")
    ev = {"kind": m.group("kind")}
    words = []
    for tok in rest.split():
        if "=" in tok:
            break
        words.append(tok)
    ev["words"] = words
    for k, v in KV.findall(rest):
        ev[k] = _int(v.strip('"'))
    return ev


class ConsoleScanner:
    """Console bytes -> events; every line is kept (``lines``) for the report."""

    def __init__(self, keep_lines: int = 20000):
        self.part = b""
        self.lines: list[str] = []
        self.keep = keep_lines
        self.counts: dict[str, int] = {}

    def feed(self, data: bytes) -> list[dict]:
        data = self.part + data
        *whole, self.part = data.split(b"\n")
        events = []
        for raw in whole:
            line = raw.decode(errors="replace").rstrip("\r")
            if len(self.lines) < self.keep:
                self.lines.append(line)
            ev = scan_line(line)
            if ev is not None:
                self.counts[ev["kind"]] = self.counts.get(ev["kind"], 0) + 1
                events.append(ev)
        return events


def scan_line(line: str) -> dict | None:
    t = None
    m = PRINTK_T.match(line)
    body = line
    if m:
        t = float(m.group(1))
        body = line[m.end():]
    at = parse_at_line(body)
    if at is not None:
        at["line"] = line
        at["t_kernel"] = t
        return at
    for kind, rx in PATTERNS:
        mm = rx.search(body)
        if mm:
            ev = {"kind": kind, "line": line, "t_kernel": t}
            ev.update({k: _int(v) for k, v in mm.groupdict().items() if v is not None})
            return ev
    return None
