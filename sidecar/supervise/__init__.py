"""Supervision: the one loop that owns every child process (supervisor.py), each child as an
object (child.py), the shutdown phases as a pure state machine (shutdown.py), and the
process primitives underneath: spawning, signalling, reaping, waiting (procs.py, wake.py)."""
