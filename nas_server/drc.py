"""Duplicate request cache (DRC), keyed as Linux nfsd keys it (fs/nfsd/nfscache.c).

Invariant owned here: a call whose key -- (xid, client address, client port, prog, vers, proc,
checksum of the call) -- matches a finished entry gets that entry's reply bytes back and is not
executed again; one that matches an entry still in progress is dropped (the client will
retransmit, and by then the reply is cached). The cache holds at most ``max_entries`` entries and
none older than ``max_age_s``; the oldest goes first. Time comes in as ``now``.

Like nfsd, only non-idempotent procedures are cached (``RC_REPLBUFF`` in nfsd's proc tables):
re-executing READ or GETATTR is harmless, re-executing WRITE or CREATE is not.

Per-peer bound (beyond Linux, whose cache is one LRU sized by memory, ``nfsd_cache_size_limit``):
one client address holds at most ``max_entries_per_peer`` entries; its own oldest entry goes
first (``evictions_peer``), so one busy or hostile peer cannot flush every other peer's replies.
The key's second element is the client address.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict

IN_PROGRESS = None  # value of an entry whose reply is not yet known

DEFAULT_MAX_ENTRIES = 8192  # nfsd sizes by memory; 8192 replies of <= 1 KiB bounds us near 8 MiB
DEFAULT_MAX_AGE_S = 120.0  # nfsd's RC_EXPIRE (120 s): longer than any client's retransmit horizon
DEFAULT_MAX_ENTRIES_PER_PEER = 1024  # one client address's share of the cache


def call_checksum(msg: bytes | memoryview) -> int:
    """crc32 of the whole call: a reused xid with different arguments is a different request."""
    return zlib.crc32(msg)


class DuplicateRequestCache:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_age_s: float = DEFAULT_MAX_AGE_S,
                 max_entries_per_peer: int = DEFAULT_MAX_ENTRIES_PER_PEER):
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.max_entries_per_peer = max_entries_per_peer
        self._entries: OrderedDict[tuple, tuple[float, bytes | None]] = OrderedDict()
        self._by_peer: dict[object, OrderedDict[tuple, None]] = {}  # address -> its keys, oldest first
        self.evictions_peer = 0
        self.hits = 0
        self.inprogress_drops = 0
        self.misses = 0
        self.evictions_size = 0
        self.evictions_age = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _expire(self, now: float) -> None:
        e = self._entries
        while e:
            key, (t, _) = next(iter(e.items()))
            if now - t <= self.max_age_s:
                break
            e.popitem(last=False)
            self._unlink(key)
            self.evictions_age += 1

    @staticmethod
    def _peer(key: tuple):
        return key[1] if len(key) > 1 else None

    def _unlink(self, key: tuple) -> None:
        peer = self._peer(key)
        keys = self._by_peer.get(peer)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._by_peer[peer]

    def lookup(self, key: tuple, now: float) -> tuple[str, bytes | None]:
        """('hit', reply) | ('inprogress', None) | ('miss', None). A miss inserts an in-progress entry."""
        self._expire(now)
        ent = self._entries.get(key)
        if ent is not None or key in self._entries:
            if ent[1] is IN_PROGRESS:
                self.inprogress_drops += 1
                return "inprogress", None
            self.hits += 1
            return "hit", ent[1]
        self.misses += 1
        self._entries[key] = (now, IN_PROGRESS)
        mine = self._by_peer.setdefault(self._peer(key), OrderedDict())
        mine[key] = None
        while len(mine) > self.max_entries_per_peer:
            old, _ = mine.popitem(last=False)
            del self._entries[old]
            self.evictions_peer += 1
        while len(self._entries) > self.max_entries:
            old, _ = self._entries.popitem(last=False)
            self._unlink(old)
            self.evictions_size += 1
        return "miss", None

    def finish(self, key: tuple, reply: bytes | None, now: float) -> None:
        """Store the reply (or forget the entry when ``reply`` is None: nothing was sent)."""
        if reply is None:
            self._entries.pop(key, None)
            self._unlink(key)
            return
        if key in self._entries:
            self._entries[key] = (self._entries[key][0], reply)

    def snapshot(self) -> dict:
        return {
            "entries": len(self._entries), "max_entries": self.max_entries, "max_age_s": self.max_age_s,
            "max_entries_per_peer": self.max_entries_per_peer, "peers": len(self._by_peer),
            "evictions_peer": self.evictions_peer,
            "hits": self.hits, "misses": self.misses, "inprogress_drops": self.inprogress_drops,
            "evictions_size": self.evictions_size, "evictions_age": self.evictions_age,
        }
