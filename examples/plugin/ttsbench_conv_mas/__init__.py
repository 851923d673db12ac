"""An example ttsbench plugin: one system, registered through the `ttsbench.models` entry point."""
