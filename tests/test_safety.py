"""Safety of the tool itself (no root): no shell strings anywhere, owner-only run/report/capture
directories, user-supplied names and paths validated against traversal."""

import ast
import os
import stat

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("client_agent", "nas_server", "netns_setup", "testbed", "scripts", "tests")
SUBPROCESS_FUNCS = {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}


def _py_files():
    for pkg in PACKAGES:
        for root, dirs, files in os.walk(os.path.join(REPO, pkg)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", ".venv")]
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(root, f)


def _shell_uses(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
        owner = fn.value.id if isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name) else ""
        where = f"{os.path.relpath(path, REPO)}:{node.lineno}"
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                bad.append(f"{where}: shell={ast.unparse(kw.value)}")
        if owner == "os" and name in ("system", "popen"):
            bad.append(f"{where}: os.{name}()")
        if name in ("create_subprocess_shell", "getoutput", "getstatusoutput"):
            bad.append(f"{where}: {name}() runs a shell")
        if owner == "subprocess" and name in SUBPROCESS_FUNCS and node.args:
            a = node.args[0]
            if isinstance(a, (ast.Constant, ast.JoinedStr, ast.BinOp)) and not isinstance(getattr(a, "value", None), (list, tuple)):
                bad.append(f"{where}: subprocess.{name} with a string command ({ast.unparse(a)[:40]})")
    return bad


def test_no_shell_strings_anywhere():
    files = list(_py_files())
    assert len(files) > 50
    bad = [b for f in files for b in _shell_uses(f)]
    assert bad == [], "shell strings: " + "; ".join(bad)


def test_the_checker_finds_what_it_looks_for(tmp_path):
    src = tmp_path / "x.py"
    # assembled so this file itself never contains the patterns
    src.write_text("import os, subprocess\n"
                   f"subprocess.run('ls', {'sh' + 'ell'}=True)\n"
                   f"os.{'sys' + 'tem'}('ls')\n"
                   "subprocess.check_output(f'ls {x}')\n")
    got = _shell_uses(str(src))
    assert len(got) == 4, got


def test_run_directories_are_owner_only(tmp_path, monkeypatch):
    from netns_setup import state
    monkeypatch.setenv(state.RUN_ROOT_ENV, str(tmp_path / "runs"))
    st = state.RunState.create("safety-t1", "abc", {"hosts": []})
    try:
        for d in (st.dir, *(os.path.join(st.dir, s) for s in ("logs", "ctl", "pcap"))):
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    finally:
        st.remove_record()


def test_report_directories_are_owner_only_and_refuse_traversal(tmp_path):
    from testbed import report
    from testbed.cli import UserError
    out = report.prepare(str(tmp_path / "rep"))
    for d in (out, os.path.join(out, "pcap"), os.path.join(out, "logs")):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for bad in (str(tmp_path / ".." / "escape"), "../x", "a/../../b", "x\0y"):
        with pytest.raises(UserError, match=r"'\.\.'"):
            report.prepare(bad)


def test_run_names_refuse_traversal():
    from netns_setup.state import StateError, check_run_name
    for bad in ("../x", "a/b", "..", "", "-x", "A" * 30, "x y", "x;rm"):
        with pytest.raises(StateError):
            check_run_name(bad)
    assert check_run_name("r-1") == "r-1"


def test_scenario_names_refuse_traversal(tmp_path):
    from testbed import scenario as scn
    evil = tmp_path / "evil.toml"
    evil.write_text('[scenario]\nname = "evil"\n')
    # a built-in NAME that walks out of scenarios/ to a .toml elsewhere is not a built-in
    rel = os.path.relpath(str(tmp_path / "evil"), scn.SCENARIO_DIR)
    assert rel.startswith("..") and os.path.exists(os.path.join(scn.SCENARIO_DIR, rel + ".toml"))
    for bad in (rel, "a/b", "../nonexistent-zz/evil"):
        with pytest.raises(scn.ScenarioError, match="no such scenario"):
            scn.load(bad)
    assert scn.load(str(evil)).name == "evil"                  # an explicit FILE is still a file
    with pytest.raises(scn.ScenarioError, match="not a safe name"):
        scn.from_dict({"name": "../../x"}, "t.toml")
    with pytest.raises(scn.ScenarioError, match="not a safe name"):
        scn.from_dict({"name": "a/b"}, "t.toml")
    assert scn.from_dict({"name": "ok-name_1.2"}, "t.toml").name == "ok-name_1.2"


def test_capture_refuses_an_interface_name_that_could_be_an_option():
    from netns_setup.capture import IFNAME_RE
    assert IFNAME_RE.match("tabc_client") and IFNAME_RE.match("eth0")
    for bad in ("-w/etc/x", "a b", "x" * 16, "", "../x/y"):
        assert not IFNAME_RE.match(bad), bad
