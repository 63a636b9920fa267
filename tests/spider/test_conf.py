"""``spider.conf``: Spiderpool's conf.yml parsed into typed settings, each key's type checked and named when
wrong, unknown and not-implemented keys told apart."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from spider.conf import AGENT_KEYS, CONTROLLER_KEYS, KEYS, NOT_IMPLEMENTED, SpiderpoolConf, parse_conf
from spider.errors import InvalidSpec
from spider.podinject import DEFAULT_NAMESPACES_EXCLUDE


def nested(name: str, value: Any) -> dict[str, Any]:
    """The document that sets the dotted key ``name`` to ``value``."""
    section, _, key = name.rpartition(".")
    return {section: {key: value}} if section else {name: value}


@pytest.mark.parametrize(
    "text", ["", "\n", "# only a comment\n", "---\n", "null\n"], ids=["empty", "newline", "comment", "marker", "null"]
)
def test_an_empty_file_gives_spiderpools_defaults_and_no_key(text: str) -> None:
    conf = parse_conf(text)
    assert conf == SpiderpoolConf()
    assert (conf.given, conf.unknown, conf.ignored()) == (frozenset(), (), ())


def test_the_defaults_are_spiderpools() -> None:
    conf = SpiderpoolConf()
    assert conf.ipam_unix_socket_path == "/var/run/spidernet/spiderpool.sock"
    assert (conf.enable_ipv4, conf.enable_ipv6, conf.enable_statefulset, conf.enable_kubevirt_static_ip) == (
        True,
        True,
        True,
        True,
    )
    assert (conf.enable_spider_subnet, conf.enable_auto_pool, conf.auto_pool_default_redundant) == (True, True, 0)
    assert (conf.enable_clean_outdated_endpoint, conf.pod_resource_inject) == (False, False)
    assert conf.pod_inject_namespaces_exclude == DEFAULT_NAMESPACES_EXCLUDE  # the pod webhook's own default
    assert conf.pod_inject_namespaces_include == ()


OTHER_THAN_DEFAULT = {
    "ipamUnixSocketPath": "/run/other.sock",
    "enableIPv4": False,
    "enableIPv6": False,
    "enableStatefulSet": False,
    "enableKubevirtStaticIP": False,
    "enableSpiderSubnet": False,
    "enableAutoPoolForApplication": False,
    "clusterSubnetAutoPoolDefaultRedundantIPNumber": 3,
    "clusterSubnetDefaultFlexibleIPNumber": 7,
    "enableIPConflictDetection": True,
    "enableGatewayDetection": True,
    "enableCleanOutdatedEndpoint": True,
    "enableValidatingResourcesDeletedWebhook": True,
    "tuneSysctlConfig": False,
    "podResourceInject.enabled": True,
    "podResourceInject.namespacesExclude": ["only-this-one"],
    "podResourceInject.namespacesInclude": ["ai", "hpc"],
    "iaasNetworkProvider.serverUrl": "http://iaas.example:8080",
    "iaasNetworkProvider.httpRequestTimeout": "30s",
    "agent.networkResourcePlugin": {"enabled": True},
}


def test_the_table_covers_every_key_spiderpools_chart_writes() -> None:
    assert {key.name for key in KEYS} == set(OTHER_THAN_DEFAULT)


@pytest.mark.parametrize("name", sorted(OTHER_THAN_DEFAULT))
def test_every_key_is_read_into_its_setting_and_only_that_one(name: str) -> None:
    value = OTHER_THAN_DEFAULT[name]
    conf = parse_conf(yaml.safe_dump(nested(name, value)))
    expected = tuple(value) if isinstance(value, list) else value
    assert conf.value(name) == expected != SpiderpoolConf().value(name)
    assert conf.from_file(name) == expected
    assert conf.given == {name}
    untouched = [key.name for key in KEYS if key.name != name and conf.value(key.name) != key.default]
    assert untouched == []


def test_a_file_of_every_key_at_once_sets_each() -> None:
    document: dict[str, Any] = {}
    for name, value in OTHER_THAN_DEFAULT.items():
        section, _, key = name.rpartition(".")
        (document.setdefault(section, {}) if section else document)[key or name] = value
    conf = parse_conf(yaml.safe_dump(document))
    assert conf.given == set(OTHER_THAN_DEFAULT)
    assert conf.pod_inject_namespaces_include == ("ai", "hpc")
    assert conf.auto_pool_default_redundant == 3


def test_spiderpools_go_key_sets_the_spare_addresses_and_the_charts_key_does_not() -> None:
    assert parse_conf("clusterSubnetDefaultFlexibleIPNumber: 5\n").auto_pool_default_redundant == 0
    both = parse_conf("clusterSubnetDefaultFlexibleIPNumber: 5\nclusterSubnetAutoPoolDefaultRedundantIPNumber: 2\n")
    assert both.auto_pool_default_redundant == 2
    assert "clusterSubnetDefaultFlexibleIPNumber" in both.ignored()


@pytest.mark.parametrize(
    ("text", "key", "said"),
    [
        ("enableIPv4: 'yes please'\n", "enableIPv4", "true or false"),
        ("enableIPv6: 1\n", "enableIPv6", "true or false"),
        ("enableStatefulSet: null\n", "enableStatefulSet", "true or false"),
        ("enableSpiderSubnet: 'true'\n", "enableSpiderSubnet", "true or false"),
        (
            "clusterSubnetAutoPoolDefaultRedundantIPNumber: -1\n",
            "clusterSubnetAutoPoolDefaultRedundantIPNumber",
            "0 or",
        ),
        (
            "clusterSubnetAutoPoolDefaultRedundantIPNumber: '2'\n",
            "clusterSubnetAutoPoolDefaultRedundantIPNumber",
            "whole",
        ),
        (
            "clusterSubnetAutoPoolDefaultRedundantIPNumber: true\n",
            "clusterSubnetAutoPoolDefaultRedundantIPNumber",
            "whole",
        ),
        ("clusterSubnetDefaultFlexibleIPNumber: 1.5\n", "clusterSubnetDefaultFlexibleIPNumber", "whole"),
        ("ipamUnixSocketPath: 5\n", "ipamUnixSocketPath", "a string"),
        ("ipamUnixSocketPath: ''\n", "ipamUnixSocketPath", "a path"),
        ("podResourceInject: {enabled: on please}\n", "podResourceInject.enabled", "true or false"),
        ("podResourceInject: {namespacesExclude: kube-system}\n", "podResourceInject.namespacesExclude", "list"),
        ("podResourceInject: {namespacesInclude: [1, 2]}\n", "podResourceInject.namespacesInclude", "list"),
        ("podResourceInject: [enabled]\n", "podResourceInject", "a mapping"),
        ("iaasNetworkProvider: {httpRequestTimeout: 50}\n", "iaasNetworkProvider.httpRequestTimeout", "a string"),
        ("agent: {networkResourcePlugin: [x]}\n", "agent.networkResourcePlugin", "a mapping"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_key_and_the_file(text: str, key: str, said: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_conf(text, "/etc/spiderpool/conf.yml")
    message = str(caught.value)
    assert f"'{key}'" in message
    assert "/etc/spiderpool/conf.yml" in message
    assert said in message


@pytest.mark.parametrize(
    ("text", "said"),
    [("enableIPv4: [true\n", "not YAML"), ("- enableIPv4\n", "expected a mapping of keys, got list"), ("7\n", "int")],
)
def test_a_file_that_is_not_a_yaml_mapping_is_refused_naming_the_file(text: str, said: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_conf(text, "/etc/spiderpool/conf.yml")
    assert "settings file '/etc/spiderpool/conf.yml'" in str(caught.value)
    assert said in str(caught.value)


def test_unknown_keys_are_kept_in_file_order_nested_ones_dotted_and_change_nothing() -> None:
    conf = parse_conf("enableIPv5: true\npodResourceInject: {enabled: true, namespaces: [a]}\nenableIPv4: false\n")
    assert conf.unknown == ("enableIPv5", "podResourceInject.namespaces")
    assert conf.given == {"podResourceInject.enabled", "enableIPv4"}
    assert (conf.pod_resource_inject, conf.enable_ipv4) == (True, False)


def test_empty_sections_and_null_lists_read_as_spiderpool_reads_them() -> None:
    conf = parse_conf("podResourceInject:\niaasNetworkProvider: null\n")
    assert conf == SpiderpoolConf()
    assert parse_conf("podResourceInject: {namespacesExclude: null}\n").pod_inject_namespaces_exclude == ()


def test_only_keys_no_component_honours_are_ignored_then_unknown_ones() -> None:
    conf = parse_conf("tuneSysctlConfig: true\nenableCleanOutdatedEndpoint: true\nenableStatefulSet: true\nfoo: 1\n")
    assert conf.ignored() == ("tuneSysctlConfig", "foo")
    assert {"enableStatefulSet", "enableCleanOutdatedEndpoint"} <= AGENT_KEYS | CONTROLLER_KEYS
    assert not (AGENT_KEYS | CONTROLLER_KEYS) & NOT_IMPLEMENTED


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ("enableIPConflictDetection: false\ntuneSysctlConfig: true\n", ()),
        ("enableIPConflictDetection: true\nenableGatewayDetection: false\n", ("enableIPConflictDetection",)),
        ("iaasNetworkProvider: {serverUrl: 'http://x'}\n", ("iaasNetworkProvider.serverUrl",)),
        ("clusterSubnetDefaultFlexibleIPNumber: 9\n", ()),
    ],
)
def test_a_not_implemented_key_asks_for_missing_behaviour_only_when_it_is_not_spiderpools_default(
    text: str, missing: tuple[str, ...]
) -> None:
    assert parse_conf(text).asks_for_missing_behaviour() == missing
