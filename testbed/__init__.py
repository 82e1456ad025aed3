"""The ``testbed`` command and what it orchestrates (floor 4: imports every other package).

    cli.py, commands/   one module per subcommand (doctor, up/status/down/clean, run, demo,
                        bench, chaos, soak, stat, capture)
    scenario.py         scenarios (TOML), their checks and preflight figures
    rig.py              the one rig of every real-packet run: topology, NAS, clients, flood,
                        captures, placement (runner and bench share it)
    clients/            the client interface (base.py) and its kinds: agent.py (linux_vm next)
    runner.py           one scenario on real packets -> report entry
    watchdog.py         the outcome rules on /proc-shaped snapshots; the hung-task report
    sim.py              the same scenario in memory (client_agent.host.Host + NasCore), seeded
    sim_report.py       `testbed run NAME --sim`: the sim into a report directory
    report.py, plots.py, explain.py, views.py   report.json, PNGs, drop explanations, stat views
    demo.py, chaos.py, hostile.py, soak.py, flood.py   the composite runs and the noise source
    bench/              `testbed bench` sections and their framework
"""
