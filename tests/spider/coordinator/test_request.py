"""One forwarded invocation: what ``parse_request`` accepts, and the CNI code of each fault it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spider.coordinator.request import parse_request
from spider.errors import DecodeFailure, IncompatibleVersion, InvalidEnvironment, InvalidNetConf

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/p"}],
    "ips": [{"interface": 0, "address": "10.6.0.20/24", "gateway": "10.6.0.1"}],
}
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/var/run/netns/p",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u1",
}


def stdin(**conf: Any) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "coordinator", **conf}).encode()


def test_an_add_request_carries_the_pod_and_prev_results_addresses_for_its_interface() -> None:
    other = {"interface": 1, "address": "10.9.0.5/24"}
    prev = {**PREV, "interfaces": [*PREV["interfaces"], {"name": "net1", "sandbox": "/x"}]}
    prev["ips"] = [*PREV["ips"], other]
    request = parse_request(ENV, stdin(prevResult=prev))
    assert (request.pod_namespace, request.pod_name, request.pod_uid) == ("ns", "web", "u1")
    assert [(ip.address, ip.gateway) for ip in request.prev_ips()] == [("10.6.0.20/24", "10.6.0.1")]


def test_add_without_prev_result_says_the_coordinator_must_be_chained() -> None:
    with pytest.raises(InvalidNetConf, match="chained after the main CNI"):
        parse_request(ENV, stdin())


@pytest.mark.parametrize(
    ("env", "data", "error", "code"),
    [
        ({**ENV, "CNI_COMMAND": "FROB"}, stdin(prevResult=PREV), InvalidEnvironment, 4),
        ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, stdin(prevResult=PREV), InvalidEnvironment, 4),
        ({**ENV, "CNI_CONTAINERID": "-bad"}, stdin(prevResult=PREV), InvalidEnvironment, 4),
        ({**ENV, "CNI_NETNS": "/var/run/netns/a\x00b"}, stdin(prevResult=PREV), InvalidEnvironment, 4),  # NB: once
        ({**ENV, "CNI_IFNAME": "net\udcff"}, stdin(prevResult=PREV), InvalidEnvironment, 4),  # stopped the agent
        ({**ENV, "CNI_IFNAME": "eth0:1"}, stdin(prevResult=PREV), InvalidEnvironment, 4),
        (ENV, b'{"cniVersion": "1.0.0", "name": "\\udcff"}', DecodeFailure, 6),
        (ENV, b'{"cniVersion": "1.0.0", "mtu": NaN}', DecodeFailure, 6),
        (ENV, b"{not json", DecodeFailure, 6),
        (ENV, json.dumps({"cniVersion": "9.9.9", "prevResult": PREV}).encode(), IncompatibleVersion, 1),
        ({**ENV, "CNI_COMMAND": "CHECK"}, json.dumps({"cniVersion": "0.3.1"}).encode(), IncompatibleVersion, 1),
        (ENV, stdin(prevResult="nope"), InvalidNetConf, 7),
        (ENV, stdin(prevResult={**PREV, "ips": 5}), InvalidNetConf, 7),
        *(
            (ENV, stdin(prevResult={**PREV, "ips": [{**PREV["ips"][0], "gateway": gateway}]}), InvalidNetConf, 7)
            for gateway in ("bogus", "fd77::1", "10.6.0.1/24")  # NB: each once a 500 with CNI 11 (try again)
        ),
    ],
)
def test_bad_invocations_get_the_cni_code_of_their_fault(
    env: dict[str, str], data: bytes, error: type[Exception], code: int
) -> None:
    with pytest.raises(error) as caught:
        parse_request(env, data)
    assert getattr(caught.value, "cni_code", None) == code


def test_ifacer_runs_before_the_main_cni_and_needs_no_prev_result() -> None:
    assert parse_request(ENV, stdin(), chained=False).prev_result is None
