"""`testbed doctor`: try every kernel feature the testbed needs on throwaway objects; say the fix."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check this machine can run the testbed (exit 0 only if it can)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    from netns_setup.doctor import all_ok, run_checks

    from netns_setup.doctor import Check
    from testbed.linux_vm.qemu import doctor as linux_vm_doctor

    checks = run_checks()
    ok = all_ok(checks)
    # a real kernel as the client (--client linux): optional, so never part of ``ok``
    checks += [Check(n, k, d, f, required=False) for n, k, d, f in linux_vm_doctor()]
    if args.json:
        print(json.dumps({"ok": ok, "checks": [c.to_json() for c in checks]}, indent=2))
        return 0 if ok else 1
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        print(f"[{mark}] {c.name:<12} {c.detail}")
        if not c.ok and c.fix:
            print(f"       fix: {c.fix}")
    print("the testbed can run here" if ok else "the testbed cannot run here: fix the FAIL lines above")
    return 0 if ok else 1
