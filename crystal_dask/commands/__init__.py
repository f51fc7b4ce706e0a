"""One CLI module per verb: HELP, add_arguments(parser), run(args) -> exit code."""
