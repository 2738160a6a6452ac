"""TPU resolution as a GKE TPU VM slice sets it up (pure function; no TPU is available here)."""

from __future__ import annotations

import pytest

from phalanx_trainer.errors import ContractError
from phalanx_trainer.tpu import resolve_tpu

pytestmark = pytest.mark.training


def test_single_host_uses_local() -> None:
    r = resolve_tpu({"TPU_ACCELERATOR_TYPE": "v5litepod-8", "TPU_TOPOLOGY": "2x4"})
    assert (r.tpu, r.worker_id, r.multi_host, r.is_coordinator) == ("local", 0, False, True)
    assert (r.accelerator_type, r.topology) == ("v5litepod-8", "2x4")


def test_single_host_with_its_own_hostname_is_still_local() -> None:
    r = resolve_tpu({"TPU_WORKER_HOSTNAMES": "j-tpu-0.j.ns.svc", "TPU_WORKER_ID": "0"})
    assert r.tpu == "local" and not r.multi_host


def test_multi_host_lists_grpc_endpoints_in_worker_order() -> None:
    hosts = "j-tpu-0.j.ns.svc,j-tpu-1.j.ns.svc,j-tpu-2.j.ns.svc,j-tpu-3.j.ns.svc"
    r = resolve_tpu({"TPU_WORKER_HOSTNAMES": hosts, "TPU_WORKER_ID": "2", "TPU_TOPOLOGY": "4x4"})
    assert r.tpu == ",".join(f"grpc://j-tpu-{i}.j.ns.svc:8470" for i in range(4))
    assert (r.worker_id, r.multi_host, r.is_coordinator) == (2, True, False)
    assert r.hostnames[2] == "j-tpu-2.j.ns.svc"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"TPU_WORKER_HOSTNAMES": "a,b"}, "TPU_WORKER_ID"),
        ({"TPU_WORKER_HOSTNAMES": "a,b", "TPU_WORKER_ID": "2"}, "TPU_WORKER_ID"),
        ({"TPU_WORKER_HOSTNAMES": "a,b", "TPU_WORKER_ID": "x"}, "TPU_WORKER_ID"),
        ({"TPU_WORKER_ID": "1"}, "TPU_WORKER_ID"),
        ({"TPU_WORKER_HOSTNAMES": "a,,b", "TPU_WORKER_ID": "0"}, "TPU_WORKER_HOSTNAMES"),
        ({"TPU_WORKER_HOSTNAMES": "a,a", "TPU_WORKER_ID": "0"}, "TPU_WORKER_HOSTNAMES"),
        ({"TPU_WORKER_HOSTNAMES": "grpc://a:8470,b", "TPU_WORKER_ID": "0"}, "TPU_WORKER_HOSTNAMES"),
    ],
)
def test_bad_tpu_env_names_the_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ContractError) as e:
        resolve_tpu(environ)
    assert e.value.variable == variable
