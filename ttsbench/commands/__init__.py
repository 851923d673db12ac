"""The command line's commands, one module per group, each imported only when one of its
commands runs: `ttsbench data prepare` then does not load the metrics, Whisper's and the
speaker encoder's dependencies, the report's plotting or the suite runner (~1.3 s of start-up
that every command paid). `ttsbench.cli` names each command's handler as "module:function".
"""
