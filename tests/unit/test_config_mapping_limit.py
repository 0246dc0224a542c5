"""The portMappings limit: parse_config refuses above it (DEL drops the list), and the
cold path's decode_fast defers instead of accepting (issue 12.7)."""
import json
import time

import pytest

from nlportmap.config import parse_config
from nlportmap.errors import InvalidConfig
from nlportmap.netconf import MAX_PORT_MAPPINGS, decode_fast


def conf(n):
    return {"cniVersion": "1.0.0", "name": "n", "type": "portmap", "runtimeConfig": {"portMappings": [
        {"hostPort": 1 + i % 65535, "containerPort": 80, "protocol": "tcp"} for i in range(n)]}}


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_above_the_limit_is_code_7(command):
    assert len(parse_config(json.dumps(conf(MAX_PORT_MAPPINGS)), command).runtimeConfig.portMappings) == MAX_PORT_MAPPINGS
    with pytest.raises(InvalidConfig, match=f"{MAX_PORT_MAPPINGS + 1} mappings, more than the {MAX_PORT_MAPPINGS}"):
        parse_config(json.dumps(conf(MAX_PORT_MAPPINGS + 1)), command)


def test_del_drops_the_list_with_a_warning():
    c = parse_config(json.dumps(conf(5000)), "DEL")
    assert c.runtimeConfig.portMappings == [] and "mappings ignored for DEL" in c.__dict__["_warnings"][0]


def test_decode_fast_defers_above_the_limit():
    assert decode_fast(conf(MAX_PORT_MAPPINGS), "ADD") is not None
    for command in ("ADD", "DEL", "CHECK"):
        assert decode_fast(conf(MAX_PORT_MAPPINGS + 1), command) is None


def test_huge_input_is_refused_fast():
    data = json.dumps(conf(70000))
    t = time.monotonic()
    with pytest.raises(InvalidConfig):
        parse_config(data, "ADD")
    assert time.monotonic() - t < 2
