"""Option values that both the command line and the suite files accept, kept apart from the
modules that act on them so that parsing a command line imports none of those."""

EXECUTOR_TYPES = ("local", "ray")  # the keys of executors.EXECUTORS (that module checks it)
