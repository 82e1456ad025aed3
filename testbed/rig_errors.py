"""The rig's error (testbed/rig.py), in a module of its own so the bench framework can catch it
without importing the rig."""


class RigError(Exception):
    """Something the rig had to start did not start: one line, what and why."""
