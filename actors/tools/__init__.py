"""The tools for people: the ``spider`` command line and what it runs besides the two daemons.

- ``cli``: argument parsing, output formats and exit codes; each command is a thin call;
- ``manifests``: reading YAML documents and applying them to a store (shared by cli, demo, load test);
- ``tables``: kubectl-like tables; ``launcher``: installing the CNI shims (``spider install-cni``);
- ``demo``: the whole product on one machine; ``subnet_demo``: its SpiderSubnet scene (an application's pool
  appears, scales and goes); ``loadtest``: the load-test harness (a package: fleet, drivers, checks, run,
  report).
May import every other room; nothing imports it.  The tools share helpers from modules here, never from
``cli``.
"""
