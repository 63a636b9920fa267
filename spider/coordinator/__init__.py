"""The ``coordinator`` meta-plugin's logic, without I/O: configuration, mode, and the plan of netlink changes.

Owns what Spiderpool's ``cmd/coordinator`` decides (reference §5, §1.6, §4.3), one subject per module:

- ``config``: the merge NAD conf -> SpiderCoordinator (+ the pod's ``default-route-nic`` annotation) ->
  default into one ``CoordinatorConf`` (§5.1, §4.3), validated field by field with Spiderpool's names;
- ``request``: one forwarded invocation (``CNI_*`` environment, stdin with ``prevResult``);
- ``observed``: what the NodeActor reports of a namespace (links, addresses, routes, rules, neighbours);
- ``mode``: auto/underlay/overlay/disable, first invoke, and the policy table of this NIC (§5.2);
- ``ops``: the vocabulary of netlink changes (``Op``) the NodeActor executes as one transaction;
- ``plan``: from the observed namespaces, the ordered ``Op`` list of ADD and DEL and CHECK's findings
  (§5.3, §5.4), plus the names and MACs they give;
- ``errors``: the coordinator's own failures and their CNI codes.

Nothing here touches a socket.  The modules stack up: ``errors`` and ``observed`` at the bottom; ``config``,
``request`` and ``ops`` on them; ``mode`` on ``config``; ``plan`` on top.  Callers import from the module that
owns a name (``spider.coordinator.plan.plan_setup``); this file re-exports nothing.
May import ``spider.cni`` and ``spider.errors``; never trio, netlink or anything of ``actors``.
"""
