"""``spider loadtest``: many pods on many simulated nodes against one store, timed and checked for correctness.

N nodes (one real ``spider agent`` process each), M pods, P concurrent callers, a pool of exactly M addresses
by default, through the installed CNI plugin or the agent API straight, optionally with churn and beside
another IPAM plugin (Debian's ``host-local``, or any plugin with a netconf template).  Load goes only to local
unix sockets and local processes; the addresses handed out are numbers in a pool, never used on any interface.

Modules, each importing only those above it:

- ``scenario``: what a test does and what it measured (scenario, address plan, pods, ops, checks, results);
- ``fleet``: the agent processes on the simulated nodes, the client that talks to them, the store, cleanup;
- ``drivers``: the targets (the CNI plugin exec'd per call, the agent API), their netconfs, the timed
  ADD (with churn) and DEL phases;
- ``checks``: the correctness checks, from the replies and from the store;
- ``subnet``: the SpiderSubnet scenario (N applications of R replicas, each from its own auto pool, with
  ``spider controller`` making and reclaiming the pools);
- ``run``: one run, in order: ours, then the comparison;
- ``report``: numbers, table, JSON, plot, progress bar, and ``run_command`` behind ``spider loadtest``.

This package imports none of its modules: import them by name.
"""
