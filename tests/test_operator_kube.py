"""kube.py's own logic without a server: the child watch's resume, restart and retry rules, and the
API errors it hands to modules that import no client (the Lease's reads and writes)."""

import logging
import threading
import types

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tlt_operator import kube as kube_module
from tlt_operator.kube import ApiError, Conflict, Kube, NotFound


class NoWaitStop(threading.Event):
    """A stop event whose waits (the 1 s retry pause) return at once; the pauses are counted."""

    def __init__(self):
        super().__init__()
        self.pauses = []

    def wait(self, timeout=None):
        self.pauses.append(timeout)
        return self.is_set()


def pod(name, version, job="demo"):
    return client.V1Pod(metadata=client.V1ObjectMeta(name=name, namespace="ns", resource_version=version,
                                                     labels={"tlt.dev/job": job}))


def scripted_watch(rounds, requests, stop):
    """A stand-in for kubernetes.watch.Watch: each stream() plays the next round (events, then an
    exception or the end of the request); the last round sets `stop`."""

    class Watch:
        def __init__(self):
            self.stopped = False

        def stream(self, lister, namespace, **kwargs):
            requests.append((lister, namespace, kwargs))
            events, error = rounds[len(requests) - 1]
            if len(requests) == len(rounds):
                stop.set()
            yield from events
            if error is not None:
                raise error

        def stop(self):
            self.stopped = True

    return Watch


def test_the_child_watch_resumes_from_bookmarks_restarts_on_gone_and_retries_failures(monkeypatch, caplog):
    stop = NoWaitStop()
    requests, seen = [], []
    rounds = [
        # An event, then a bookmark (left undeserialized by the client): the next request resumes from it.
        ([{"type": "ADDED", "object": pod("demo-rollout-0", "5")},
          {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "7"}}}], None),
        ([], ApiException(status=410, reason="Gone")),  # too old: a fresh list, no pause
        ([], ApiException(status=500, reason="boom")),  # logged, 1 s pause
        ([{"type": "MODIFIED", "object": pod("demo-rollout-0", "9")}], None),  # the callback fails on it
        ([{"type": "DELETED", "object": pod("demo-rollout-0", "10")}], None),
    ]
    monkeypatch.setattr(kube_module, "watch", types.SimpleNamespace(Watch=scripted_watch(rounds, requests, stop)))
    kube = Kube(client.ApiClient())

    def on_event(event_type, obj):
        seen.append((event_type, obj))
        if event_type == "MODIFIED":
            raise RuntimeError("callback failed")

    with caplog.at_level(logging.WARNING, logger="tlt_operator.kube"):
        kube.watch_children("ns", "pods", on_event, stop)

    assert [r[0] for r in requests] == [kube.core.list_namespaced_pod] * 5
    assert {r[1] for r in requests} == {"ns"}
    assert all(r[2]["label_selector"] == "tlt.dev/job" and r[2]["timeout_seconds"] == 60 and r[2]["allow_watch_bookmarks"]
               for r in requests)
    # Resumed from the bookmark; after 410 from nothing; after the callback's failure from its event.
    assert [r[2].get("resource_version") for r in requests] == [None, "7", None, None, "9"]
    assert [t for t, _ in seen] == ["ADDED", "MODIFIED"]  # the last round's event came after stop was set
    assert seen[0][1]["metadata"] == {"name": "demo-rollout-0", "namespace": "ns", "resourceVersion": "5",
                                      "labels": {"tlt.dev/job": "demo"}}  # API form (camelCase), no nulls
    assert stop.pauses == [1.0, 1.0]  # the 500 and the callback's failure; none after 410
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["pods watch in ns: boom", "pods watch in ns: callback failed"]


def test_the_configmap_watch_lists_configmaps(monkeypatch):
    stop = NoWaitStop()
    requests = []
    monkeypatch.setattr(kube_module, "watch", types.SimpleNamespace(Watch=scripted_watch([([], None)], requests, stop)))
    kube = Kube(client.ApiClient())
    kube.watch_children("ns", "configmaps", lambda *_: None, stop)
    assert requests[0][0] == kube.core.list_namespaced_config_map


class Leases:
    """A CoordinationV1Api stand-in that fails every call with one ApiException."""

    def __init__(self, error):
        self.error = error

    def read_namespaced_lease(self, name, namespace):
        raise self.error

    def create_namespaced_lease(self, namespace, body):
        raise self.error

    def replace_namespaced_lease(self, name, namespace, body):
        raise self.error


LEASE = {"metadata": {"name": "tlt-operator", "namespace": "ns", "resourceVersion": "3"}, "spec": {}}


@pytest.mark.parametrize("status, kind", [(404, NotFound), (409, Conflict), (500, ApiError), (403, ApiError)])
def test_lease_errors_leave_kube_as_its_own(status, kind):
    error = ApiException(status=status, reason="why")
    kube = Kube(client.ApiClient())
    kube.coordination = Leases(error)
    for call, args in ((kube.read_lease, ("ns", "tlt-operator")), (kube.create_lease, (LEASE,)), (kube.replace_lease, (LEASE,))):
        with pytest.raises(ApiError) as raised:
            call(*args)
        assert type(raised.value) is kind
        assert (raised.value.status, raised.value.reason, str(raised.value)) == (status, "why", str(error))
