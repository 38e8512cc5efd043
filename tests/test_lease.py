"""Contract of search/lease.py: one writer per collection; a lease of a process that is gone
(same host) or not renewed for EXPIRE_S (another host) is taken over; a live one is refused
with a message naming its holder; the lease is given back at the end, also after an error."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
from test_store import INFO

from vitsearch.search.errors import CollectionBusyError
from vitsearch.search.store import Store
from vitsearch.search.store.lease import EXPIRE_S, KEY, writer_lease


@pytest.fixture
def store(db_uri):
    with Store(db_uri, "images") as s:
        s.ensure(INFO)
        yield s


def plant(store, **holder):
    lease = {
        "token": "t",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.time(),
        "renewed": time.time(),
        **holder,
    }
    store.set_properties({KEY: json.dumps(lease)})


def test_a_live_lease_is_refused_and_given_back_after_use(store):
    with writer_lease(store):
        assert json.loads(store.properties()[KEY])["pid"] == os.getpid()
        with pytest.raises(CollectionBusyError, match=f"being indexed by another run \\(pid {os.getpid()} on"):
            with writer_lease(store):
                pass
    assert not store.properties().get(KEY)
    with pytest.raises(RuntimeError):
        with writer_lease(store):
            raise RuntimeError("a failing run")
    assert not store.properties().get(KEY)  # given back after an error too


def test_dead_and_expired_leases_are_taken_over(store):
    plant(store, pid=999_999_999)  # this host, no such process: a killed run
    with writer_lease(store):
        pass
    plant(store, host="elsewhere", renewed=time.time() - EXPIRE_S - 1)  # not renewed: a crashed run
    with writer_lease(store):
        pass
    plant(store, host="elsewhere")  # renewed just now on another machine: alive
    with pytest.raises(CollectionBusyError, match="on elsewhere"):
        with writer_lease(store):
            pass


def test_the_lease_is_renewed_while_held(store):
    with writer_lease(store, renew_s=0.2):
        first = json.loads(store.properties()[KEY])["renewed"]
        time.sleep(0.7)
        assert json.loads(store.properties()[KEY])["renewed"] > first
