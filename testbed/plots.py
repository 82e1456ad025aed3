"""PNG timelines of a run from its sampled timeline (matplotlib, Agg: no display needed).

One figure per scenario, four panels on one time axis: free pages against the watermarks and the
GFP_ATOMIC floor; the emergency reserve in use; writeback progress (pswpout, pages the NAS
acknowledged, pages in flight); receive drops by reason. Events (stall, watchdog decision,
recovery) are vertical lines across every panel. Plus one overview: the four free-pages panels
side by side on each on its own y scale. Pure apart from writing the PNG files it is asked to write.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUTCOME_COLOR = {"deadlock": "#c0392b", "recovered": "#27ae60", "completed": "#2980b9",
                 "invalid": "#7f8c8d", "unfinished": "#e67e22", "testbed_bug": "#000000"}
REASON_COLOR = {"NOMEM": "#c0392b", "PFMEMALLOC": "#8e44ad", "SOCKET_RCVBUFF": "#e67e22"}


def _series(tl: list[dict], key: str) -> list:
    return [s.get(key) if s.get(key) is not None else float("nan") for s in tl]


def beyond(entry: dict) -> str:
    """" (beyond Linux)" for a file consumer under the extended policy (its transport SOCK_MEMALLOC)."""
    return " (beyond Linux)" if entry.get("beyond_linux") else ""


def events(entry: dict) -> list[tuple[float, str, str]]:
    """(t, label, colour) of the run's events, from the report entry."""
    ev = []
    stall, rec, dec = entry.get("time_to_stall_s"), entry.get("time_to_recover_s"), entry.get("decided_at_s")
    if stall is not None:
        ev.append((stall, "stall", "#c0392b"))
    if stall is not None and rec is not None:
        ev.append((stall + rec, "recovered", "#27ae60"))
    if dec is not None and entry.get("outcome") != "recovered":
        ev.append((dec, f"watchdog: {entry.get('outcome')}", "#34495e"))
    return ev


def _mark(ax, ev, label: bool) -> None:
    for t, text, color in ev:
        ax.axvline(t, color=color, ls="--", lw=1.2)
        if label:  # along the line, on the side with room, so it never runs past the axes
            lo, hi = ax.get_xlim()
            right = (t - lo) / ((hi - lo) or 1) < 0.15
            ax.annotate(f"{text} {t:.1f} s", (t, 0.97), xycoords=("data", "axes fraction"), xytext=(3 if right else -3, 0),
                        textcoords="offset points", color=color, fontsize=8, fontweight="bold",
                        rotation=90, ha="left" if right else "right", va="top")


def _free_panel(ax, tl: list[dict], ev, title: str | None = None, legend: bool = True) -> None:
    t = _series(tl, "t")
    ax.plot(t, _series(tl, "free"), color="black", lw=2, marker=".", label="free")
    ax.plot(t, _series(tl, "nr_free_lowwater"), color="gray", lw=1, ls=":", label="free low point (between samples)")
    top = max([v for v in _series(tl, "free") if v == v] + [1])
    for key, color in (("high", "#27ae60"), ("low", "#f39c12"), ("min", "#c0392b"), ("atomic_floor", "#8e44ad")):
        v = next((s.get(key) for s in tl if s.get(key) is not None), None)
        if v is not None:
            top = max(top, v)
            name = "atomic floor" if key == "atomic_floor" else key
            ax.axhline(v, color=color, lw=1, ls="-" if key != "atomic_floor" else "-.", label=f"{name} {v}")
            if not legend:  # no legend: name each line where it starts
                ax.annotate(f"{name} {v}", (0.01, v), xycoords=("axes fraction", "data"), xytext=(0, 1),
                            textcoords="offset points", color=color, fontsize=7, va="bottom")
    ax.set_ylabel("pages")
    ax.set_ylim(0, top * 1.45)
    if title:
        ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(loc="upper center", fontsize=7, ncol=3)
    _mark(ax, ev, True)


def scenario_png(entry: dict, timeline: list[dict], path: str) -> str:
    """Four-panel timeline of one scenario; returns ``path``."""
    ev = events(entry)
    fig, axs = plt.subplots(4, 1, figsize=(10, 10), sharex=True,
                            gridspec_kw={"height_ratios": [3, 1.5, 2, 2]})
    color = OUTCOME_COLOR.get(entry.get("outcome"), "black")
    fig.suptitle(f"{entry.get('name')}: {entry.get('outcome')}{beyond(entry)} (expect {entry.get('expect')}), seed {entry.get('seed')}",
                 color=color, fontsize=13, fontweight="bold")
    _free_panel(axs[0], timeline, ev, "free pages against the watermarks (min/low/high) and the GFP_ATOMIC floor")
    t = _series(timeline, "t")
    ax = axs[1]
    ax.plot(t, _series(timeline, "reserve_in_use"), color="#8e44ad", lw=1.5, marker=".", label="reserve in use")
    ax.set_ylabel("pages")
    ax.set_title("emergency reserve in use (min − free: pages allocated below the min watermark)", fontsize=10)
    ax.legend(loc="upper right", fontsize=7)
    _mark(ax, ev, False)
    ax = axs[2]
    if any("nr_written" in x for x in timeline):   # a file consumer: its progress is nr_written
        ax.plot(t, _series(timeline, "nr_written"), color="#2980b9", lw=2, label="nr_written (file pages acked)")
        ax.plot(t, _series(timeline, "nr_dirty"), color="#8e44ad", lw=1.5, ls="--", label="nr_dirty (file)")
        ax.plot(t, _series(timeline, "file_writeback"), color="#e67e22", lw=1, label="file pages under writeback")
    else:
        ax.plot(t, _series(timeline, "pswpout"), color="#2980b9", lw=2, label="pswpout (pages written)")
        ax.plot(t, _series(timeline, "swap_acked"), color="#27ae60", lw=1.5, ls="--", label="acked by the NAS")
        ax.plot(t, _series(timeline, "nr_writeback"), color="#e67e22", lw=1, label="nr_writeback (in flight)")
    ax.plot(t, _series(timeline, "rpc_retrans"), color="#c0392b", lw=1, ls=":", label="RPC retransmissions")
    ax.set_ylabel("pages / calls")
    ax.set_title("writeback progress", fontsize=10)
    ax.legend(loc="upper left", fontsize=7)
    _mark(ax, ev, False)
    ax = axs[3]
    reasons = sorted({r for s in timeline for r in (s.get("drop_reasons") or {})})
    for r in reasons:
        ax.plot(t, [(s.get("drop_reasons") or {}).get(r, 0) for s in timeline], lw=1.5,
                color=REASON_COLOR.get(r), label=f"{r}{' (rx_nobuf, at the NIC)' if r == 'NOMEM' else ' (at the demux)' if r == 'PFMEMALLOC' else ' (at the socket)' if r == 'SOCKET_RCVBUFF' else ''}")
    if not reasons:
        ax.text(0.5, 0.5, "no receive drops", transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.set_ylabel("frames (cumulative)")
    ax.set_xlabel("time since the workload started (s)")
    ax.set_title("receive drops by reason", fontsize=10)
    if reasons:
        ax.legend(loc="upper left", fontsize=7)
    _mark(ax, ev, False)
    for a in axs:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def overview_png(items: list[tuple[dict, list[dict]]], path: str) -> str:
    """The free-pages panels of every scenario side by side; returns ``path``. Each panel has its own
    y scale: memalloc-undersized's watermarks are 30x smaller, on a shared scale they would vanish."""
    n = max(1, len(items))
    fig, axs = plt.subplots(1, n, figsize=(4.0 * n, 4.6), squeeze=False)
    for i, (entry, tl) in enumerate(items):
        ax = axs[0][i]
        _free_panel(ax, tl, events(entry), legend=False)
        ok = entry.get("outcome") == entry.get("expect")
        ax.set_title(f"{entry.get('name')}\n{entry.get('outcome')}{beyond(entry)} (expect {entry.get('expect')}) {'OK' if ok else 'MISMATCH'}",
                     fontsize=10, color=OUTCOME_COLOR.get(entry.get("outcome"), "black"), fontweight="bold")
        ax.set_xlabel("s")
        ax.grid(alpha=0.3)
    fig.suptitle("free pages against the watermarks and the GFP_ATOMIC floor (each panel its own scale)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
