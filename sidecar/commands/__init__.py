"""One module per subcommand: each builds its options and runs it (thin clients of the daemon where
one runs).
"""
