"""Hosts and processes (floor 1: imports nothing of the project): topology model -> namespaces,
bridge, veths (topology.py, lifecycle.py, nsutil.py); run state records (state.py); processes
in hosts with readiness (process.py); the control channel (control.py); captures (capture.py);
``doctor`` checks (doctor.py).
"""
