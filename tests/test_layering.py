"""The reshape's seams (issue 13), checked on the code: mm/ imports no protocol; the pfmemalloc
refusal and its counter live in one function; dispatch is by table, not by if/elif chains on
protocol numbers; no Agent/control method is named after a protocol."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL_MODULES = ("protocols", "nas_server", "client_agent.fs", "client_agent.net",
                    "client_agent.wire")


def test_importing_mm_pulls_in_no_protocol_module():
    code = ("import sys, client_agent.mm, client_agent.mm.page_alloc, client_agent.mm.vmscan, "
            "client_agent.mm.anon, client_agent.mm.swapfile, client_agent.mm.filemap, "
            "client_agent.mm.page_io; "
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
    loaded = [m for m in out if m.startswith(PROTOCOL_MODULES)]
    assert "client_agent.mm.swapfile" in out and "client_agent.mm.filemap" in out
    assert loaded == []


def _functions_mentioning(text: str) -> list[str]:
    hits = []
    for path in (ROOT / "client_agent").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                src = ast.get_source_segment(path.read_text(), node) or ""
                body = "\n".join(l for l in src.splitlines() if not l.strip().startswith("#"))
                if text in body and not any(isinstance(n, (ast.FunctionDef,)) and n is not node
                                            and text in (ast.get_source_segment(path.read_text(), n) or "")
                                            for n in ast.walk(node)):
                    hits.append(f"{path.relative_to(ROOT)}:{node.name}")
    return hits


def test_pfmemalloc_drop_is_counted_in_exactly_one_function():
    assert _functions_mentioning('["PFMemallocDrop"] += 1') == ["client_agent/net/core/sock.py:sk_filter"]
    assert _functions_mentioning('"PFMEMALLOC"') == [
        "client_agent/net/core/dev.py:netif_receive_skb",    # skb_pfmemalloc_protocol's drop
        "client_agent/net/core/sock.py:sk_filter"]


def test_stack_dispatches_by_table():
    from client_agent.net.core.dev import NetCore
    from client_agent.net.ipv4 import ip_input
    for fn in (NetCore.netif_receive_skb, ip_input.ip_local_deliver):
        src = inspect.getsource(fn)
        assert "ETH_P_" not in src and "IPPROTO_" not in src, fn       # no protocol names
        assert "ptype_base" in src or "inet_protos" in src, fn          # a table lookup


def test_no_agent_or_host_method_is_named_after_a_protocol():
    from client_agent.agent import Agent
    names = [n for n, v in inspect.getmembers(Agent) if callable(v) and not n.startswith("__")]
    for proto in ("nfs", "udp", "tcp", "rpc", "nbd", "iscsi", "aoe"):
        assert not [n for n in names if proto in n.lower()], (proto, names)


def test_docs_tree_names_every_module_and_only_existing_ones():
    import re
    doc = (ROOT / "docs" / "agent-shape.md").read_text()
    tree = doc.split("```tree", 1)[1].split("```", 1)[0]
    named = set(re.findall(r"[\w/]*\w+\.py", tree))
    files = [p for d in ("client_agent", "protocols", "testbed/clients")
             for p in (ROOT / d).rglob("*.py") if p.name != "__init__.py"]
    missing = sorted(str(p.relative_to(ROOT)) for p in files if p.name not in {n.split("/")[-1] for n in named})
    assert missing == [], f"docs/agent-shape.md's tree does not name {missing}"
    existing = {p.name for p in ROOT.rglob("*.py") if ".venv" not in p.parts}
    assert sorted(n for n in named if n.split("/")[-1] not in existing) == []
    for d in re.findall(r"^\s*([\w]+)/", tree, re.M):
        assert any(p.is_dir() and p.name == d for p in (ROOT / "client_agent").rglob(d)) or \
            (ROOT / d).is_dir() or (ROOT / "testbed" / d).is_dir(), d
