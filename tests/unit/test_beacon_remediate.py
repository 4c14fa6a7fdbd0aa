"""The remediation runner's decisions (_runners/lvs_remediate.py): which events it refuses and why,
the rate limit, and that nothing from the event reaches what it publishes. The master plumbing
(accepted key, cache, pillar, publish, events) is replaced by small stand-ins here; the real
master runs it in tests/integration/test_remediation.py."""

import base64
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.loadmod import load

pytestmark = pytest.mark.unit

TAG = "salt/beacon/rs1/lvs_realserver/drift"
NONCE = "0123456789abcdef"


def make_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return key, pub


KEYS = {"rs1": make_key(), "rs2": make_key()}


def signed(minion="rs1", signer=None, event="drift", stamp=None, nonce=NONCE, **extra):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    stamp = time.time() if stamp is None else stamp
    msg = f"lvs_realserver|{event}|{minion}|{stamp:.6f}|{nonce}"
    key = KEYS[signer or minion][0]
    sig = base64.b64encode(key.sign(msg.encode(), padding.PKCS1v15(), hashes.SHA224())).decode()
    data = {"id": minion, "event": "drift", "findings": [{"message": "eth0 answers ARP"}],
            "auth": {"msg": msg, "sig": sig}}
    data.update(extra)
    return data


class Master:
    """Stand-ins for the master: accepted keys, a cache, pillars, a publisher, an event log."""

    def __init__(self, tmp_path, window=120, pillars=None):
        self.cache_data = {}
        self.published = []
        self.fired = []
        self.pillars = pillars if pillars is not None else {
            "rs1": {"lvs": {"services": {"web": {"realservers": {"rs1": {}}}}}},
            "rs2": {"lvs": {"services": {"web": {"realservers": {"rs2": {}}}}}},
        }
        mod = load("runners", "lvs_remediate",
                   opts={"cachedir": str(tmp_path), "lvs_remediate": {"window": window}})
        mod._accepted_key = self.accepted_key
        mod._cache = lambda: self
        mod._pillar_of = lambda minion: self.pillars.get(minion, {})
        mod._publish = self.publish
        mod._fire = lambda outcome, payload: self.fired.append((outcome, payload))
        self.mod = mod

    # salt.cache interface
    def fetch(self, bank, key):
        return self.cache_data.get((bank, key))

    def store(self, bank, key, value):
        self.cache_data[(bank, key)] = dict(value)

    def flush(self, bank, key):
        self.cache_data.pop((bank, key), None)

    def list(self, bank):
        return [k for b, k in self.cache_data if b == bank]

    def accepted_key(self, minion):
        if minion not in KEYS:
            raise self.mod.Refused(f"{minion!r} has no accepted key on this master")
        return KEYS[minion][1]

    def publish(self, minion, timeout):
        self.published.append(minion)
        return {"jid": f"jid{len(self.published)}", "minions": [minion]}


@pytest.fixture
def master(tmp_path):
    return Master(tmp_path)


def test_a_signed_drift_from_a_real_server_is_remediated_on_that_minion_only(master):
    out = master.mod.drift(tag=TAG, data=signed())
    assert out["outcome"] == "started" and out["jid"] == "jid1"
    assert master.published == ["rs1"]
    assert master.fired[-1][0] == "started"


def test_publish_gets_nothing_from_the_event(master, monkeypatch):
    """What is published is fixed: the runner's _publish takes the minion id and a timeout;
    the state, its arguments and the target type are constants of the module."""
    calls = []

    class Client:
        def __init__(self, mopts=None):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def run_job(self, *args, **kwargs):
            calls.append((args, kwargs))
            return {"jid": "1", "minions": ["rs1"]}

    mod = load("runners", "lvs_remediate", opts={})
    monkeypatch.setattr(mod.salt.client, "LocalClient", Client)
    mod._publish("rs1", 120)
    assert calls == [((["rs1"], "state.apply"), {"arg": ["lvs.realserver"], "tgt_type": "list",
                                                  "kwarg": {"queue": True}, "timeout": 120})]


@pytest.mark.parametrize("tag, data, reason", [
    ("salt/beacon/rs1/lvs_realserver/clear", None, "is not salt/beacon"),
    ("salt/beacon/rs1/x/lvs_realserver/drift", None, "is not salt/beacon"),
    ("salt/beacon/rs2/lvs_realserver/drift", None, "the tag names 'rs2' but the data names 'rs1'"),
    ("salt/beacon/rs*/lvs_realserver/drift", {"id": "rs*"}, "is not a plain minion id"),
    (TAG, "not a dict", "the data names None"),
])
def test_tag_and_id_must_agree(master, tag, data, reason):
    out = master.mod.drift(tag=tag, data=signed() if data is None else data)
    assert out["outcome"] == "refused" and reason in out["reason"], out
    assert master.published == []


def test_an_event_claiming_another_minion_signed_with_the_senders_key_is_refused(master):
    forged = signed("rs2", signer="rs1")  # rs1 has a valid key, but not rs2's
    out = master.mod.drift(tag="salt/beacon/rs2/lvs_realserver/drift", data=forged)
    assert out["outcome"] == "refused"
    assert "does not verify" in out["reason"]
    assert master.published == []


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["auth"].update(sig=None), "not signed"),
    (lambda d: d.pop("auth"), "no signed message"),
    (lambda d: d["auth"].update(sig="%%%"), "not base64"),
    (lambda d: d["auth"].update(sig=base64.b64encode(b"x" * 256).decode()), "does not verify"),
    (lambda d: d["auth"].update(msg=d["auth"]["msg"].replace("|drift|", "|clear|")),
     "is not an lvs_realserver drift"),
    (lambda d: d["auth"].update(msg=d["auth"]["msg"].replace("|rs1|", "|rs2|")),
     "signed message names 'rs2'"),
])
def test_signature_problems_are_refused(master, change, reason):
    data = signed()
    change(data)
    out = master.mod.drift(tag=TAG, data=data)
    assert out["outcome"] == "refused" and reason in out["reason"], out
    assert master.published == []


def test_unknown_minion_is_refused(master):
    out = master.mod.drift(tag="salt/beacon/rs9/lvs_realserver/drift",
                           data={"id": "rs9", "auth": {"msg": f"lvs_realserver|drift|rs9|"
                                                               f"{time.time():.6f}|{NONCE}",
                                                       "sig": None}})
    assert out["outcome"] == "refused" and "no accepted key" in out["reason"]


def test_stale_future_and_replayed_events_are_refused(master):
    old = master.mod.drift(tag=TAG, data=signed(stamp=time.time() - 3600))
    assert old["outcome"] == "refused" and "clock" in old["reason"]
    future = master.mod.drift(tag=TAG, data=signed(stamp=time.time() + 3600))
    assert future["outcome"] == "refused" and "clock" in future["reason"]
    event = signed()
    assert master.mod.drift(tag=TAG, data=event)["outcome"] == "started"
    replay = master.mod.drift(tag=TAG, data=event)
    assert replay["outcome"] == "refused" and "replay" in replay["reason"]
    assert master.published == ["rs1"]


def test_one_remediation_per_window_and_the_skips_are_fired(master):
    now = time.time()
    assert master.mod.drift(tag=TAG, data=signed(stamp=now - 10))["outcome"] == "started"
    for i in range(3):
        out = master.mod.drift(tag=TAG, data=signed(stamp=now - 9 + i))
        assert out["outcome"] == "skipped" and "rate limit" in out["reason"]
        assert out["skipped"] == i + 1
    assert master.published == ["rs1"]
    assert [o for o, _ in master.fired] == ["started", "skipped", "skipped", "skipped"]
    # a second minion has a window of its own
    assert master.mod.drift(tag="salt/beacon/rs2/lvs_realserver/drift",
                            data=signed("rs2"))["outcome"] == "started"
    # once the window has passed, the next (reminder) event is acted on
    entry = master.cache_data[("lvs_remediate", "rs1")]
    entry["last_remediation"] -= 121
    assert master.mod.drift(tag=TAG, data=signed(repeat=True))["outcome"] == "started"
    assert master.published == ["rs1", "rs2", "rs1"]


def test_a_minion_that_is_no_real_server_is_refused_and_keeps_its_window(tmp_path):
    master = Master(tmp_path, pillars={"rs1": {"lvs": {"directors": {"rs1": {}}}}})
    out = master.mod.drift(tag=TAG, data=signed())
    assert out["outcome"] == "refused" and "not a real server" in out["reason"]
    assert master.published == []
    assert master.cache_data[("lvs_remediate", "rs1")].get("last_remediation") is None
    master.pillars["rs1"] = {"lvs": {"services": {"web": {"realservers": {"rs1": {}}}}}}
    assert master.mod.drift(tag=TAG, data=signed())["outcome"] == "started"


def test_a_minion_that_does_not_take_the_job_is_a_failure(master):
    master.mod._publish = lambda minion, timeout: {"jid": "1", "minions": []}
    out = master.mod.drift(tag=TAG, data=signed())
    assert out["outcome"] == "failed" and "not connected" in out["reason"]


def test_status_and_reset(master):
    master.mod.drift(tag=TAG, data=signed())
    assert set(master.mod.status()) == {"rs1"}
    assert master.mod.status("rs1")["rs1"]["last_remediation"]
    master.mod.reset("rs1")
    assert master.mod.status() == {}


def test_pure_checks():
    mod = load("runners", "lvs_remediate", opts={})
    assert mod.rate_decision({}, 100.0, 60) == (True, 0.0)
    assert mod.rate_decision({"last_remediation": 90.0}, 100.0, 60) == (False, 50.0)
    assert mod.rate_decision({"last_remediation": 40.0}, 100.0, 60) == (True, 0.0)
    assert mod.is_realserver({"lvs": {"services": {"a": {"realservers": {"rs1": {}}}}}}, "rs1")
    assert not mod.is_realserver({"lvs": {"services": {"a": {"realservers": {}}}}}, "rs1")
    assert not mod.is_realserver({"lvs": "broken"}, "rs1")
    assert not mod.is_realserver(None, "rs1")
