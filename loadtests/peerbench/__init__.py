"""The load benchmark behind ``python loadtests/bench.py``: warmslot against its peers at equal
CPU, same bot, same generators (what it measures: ``cli``'s docstring and loadtests/README.md).

- ``cli``: the command line and the run from start to report;
- ``systems``: the systems by name; ``launchers``: how each one starts;
- ``rounds``: one system's run in one round, and its open-loop sweep;
- ``drivers``: the load generators (wrk, oha), run and parsed;
- ``stats``: CPU time per request from /proc, low medians, per-round ratios;
- ``report`` and ``chart``: the table, the JSON report and the PNG;
- ``probes``: readiness and reply checks; ``processes``: process groups, ports, logs;
- ``tools``: finding and installing the tools, and their versions;
- ``context``: the run's context, a system's description, the plan; ``common``: paths and constants.

Import it with ``loadtests/`` on ``sys.path`` (it imports ``events`` from there).
"""
