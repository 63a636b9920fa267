"""The observed namespace state: how rules compare when the kernel filled in what was not asked for."""

from __future__ import annotations

from spider.coordinator.observed import RuleEntry


def test_rules_are_the_same_whatever_priority_the_kernel_chose_when_none_was_asked() -> None:
    assert RuleEntry(4, 101, src="10.6.0.20/32").same(RuleEntry(4, 101, 32765, src="10.6.0.20/32"))
    assert not RuleEntry(4, 101, 1000).same(RuleEntry(4, 101, 999))
