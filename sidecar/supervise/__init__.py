"""Supervision: the one loop that owns every child process and the events it dispatches
(supervisor.py, events.py), the children it holds (children.py, each one a child.py), the
shutdown phases as a pure state machine (shutdown.py), the final sync (final_sync.py), and the
process primitives underneath: spawning, signalling, reaping, waiting (procs.py, wake.py).
It imports neither the daemon nor the start steps: run.py hands in what it needs."""
