"""One module per subcommand, cmd_<name>.py: each builds its options and runs it (thin clients
of the daemon where one runs).
"""
