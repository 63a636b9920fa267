"""The actor runtime: bounded mailboxes, one-shot replies and the supervisor (DESIGN §4).

Owns how actors talk and stay alive; knows nothing of pools, nodes or stores.  Imports only trio, attrs,
outcome and ``spider.errors`` (to tell transient failures from bugs).
"""
