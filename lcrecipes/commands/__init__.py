"""One module per ``lcr`` verb: ``add_arguments(parser)`` and ``main(args) -> exit code``."""
