"""
Remediation of LVS real-server drift: what the reactor calls when the ``lvs_realserver`` beacon
reports drift. It verifies the event, limits the rate, and applies the fixed real-server state on
exactly the minion that sent it.

The reactor (``salt/reactor/lvs/remediate.sls``) hands over the event's tag and data and nothing
else happens there. Here, in order, each check refusing with a reason that goes to the master log
and to an event:

1. the tag is exactly ``salt/beacon/<id>/lvs_realserver/drift`` and ``data['id']`` is that id,
   a plain minion id (no glob, no path);
2. the minion's key is *accepted* on this master, and the event carries a signature
   (``auth.msg``/``auth.sig``, made by the beacon with the minion's private key) that this key
   verifies, over a message naming the same id and ``drift``. The master does not check the id
   inside beacon events (any minion can send ``salt/beacon/<another id>/...``); this does;
3. the signed time is fresh (``max_age``) and newer than the last one accepted from that minion
   (a replayed event is refused);
4. rate limit: at most one remediation per minion in ``window`` seconds. A skipped remediation is
   logged as a warning and fired as ``lvs/remediate/skipped``; the beacon resends a drift that
   persists (``remind``), so it is put right once the window has passed;
5. the minion is a real server in *its own* pillar, compiled here for it
   (``lvs:services:<name>:realservers:<id>``);
6. ``state.apply lvs.realserver`` (with ``queue=True``) is published to that one minion, as a
   list target. Nothing from the event reaches the state: no pillar, no arguments.

Every outcome is fired on the master bus as ``lvs/remediate/<outcome>`` (``started``, ``skipped``,
``refused``, ``failed``) with ``id``, ``reason`` and, when started, the ``jid``; the job's own
return event (``salt/job/<jid>/ret/<id>``) carries the state's result.

Master configuration (all optional; ``salt/reactor/lvs/master.d/lvs-remediation.conf`` is the
snippet that also enables the reactor):

.. code-block:: yaml

    lvs_remediate:
      window: 120            # seconds; at most one remediation per minion in this window
      max_age: 300           # seconds; refuse events whose signed time is older (or newer)
      timeout: 120           # seconds the published job may take before it is abandoned
      require_signature: true  # false only for minions that cannot sign (not recommended)

The rate limit and the last accepted event time per minion live in the master cache (bank
``lvs_remediate``), so they survive a master restart and, with a shared cache driver, are shared
by several masters.
"""

import base64
import binascii
import fcntl
import logging
import os
import re
import threading
import time
from contextlib import contextmanager

import salt.cache
import salt.client
import salt.crypt
import salt.pillar
import salt.utils.event
import salt.utils.minions
import salt.utils.verify

log = logging.getLogger(__name__)

__virtualname__ = "lvs_remediate"

TAG = re.compile(r"^salt/beacon/(?P<id>[^/]+)/lvs_realserver/drift$")
# Minion ids we act on: no glob characters, no path separators, no whitespace.
MINION_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,252}$")
NONCE = re.compile(r"^[0-9a-f]{8,64}$")
SIGN_ALGORITHM = "PKCS1v15-SHA224"  # what the beacon signs with
STATE = "lvs.realserver"  # fixed: the only thing a remediation ever applies
CACHE_BANK = "lvs_remediate"
DEFAULTS = {"window": 120, "max_age": 300, "timeout": 120, "require_signature": True}

_thread_lock = threading.Lock()


def __virtual__():
    return __virtualname__


def _settings():
    conf = dict(DEFAULTS)
    conf.update(__opts__.get("lvs_remediate") or {})  # pylint: disable=undefined-variable
    return conf


class Refused(Exception):
    """An event that must not lead to any action; the message says why."""


# --------------------------------------------------------------------------------------------
# Checks (each a function of its inputs; tests/unit/test_beacon_remediate.py runs them)
# --------------------------------------------------------------------------------------------


def sender(tag, data):
    """The minion id the event claims, if tag and data agree on it and it is a plain id."""
    match = TAG.match(tag) if isinstance(tag, str) else None
    if match is None:
        raise Refused(f"tag {tag!r} is not salt/beacon/<id>/lvs_realserver/drift")
    minion_id = match.group("id")
    if not isinstance(data, dict) or data.get("id") != minion_id:
        claimed = data.get("id") if isinstance(data, dict) else None
        raise Refused(f"the tag names {minion_id!r} but the data names {claimed!r}")
    if not MINION_ID.match(minion_id):
        raise Refused(f"{minion_id!r} is not a plain minion id")
    return minion_id


def parse_auth(data, minion_id):
    """``(message, signature bytes, stamp)`` from ``data['auth']``, checked against the id."""
    auth = data.get("auth")
    if not isinstance(auth, dict) or not isinstance(auth.get("msg"), str):
        raise Refused("the event carries no signed message (auth.msg)")
    msg = auth["msg"]
    parts = msg.split("|")
    if len(parts) != 5 or parts[0] != "lvs_realserver" or parts[1] != "drift":
        raise Refused(f"signed message {msg!r} is not an lvs_realserver drift")
    if parts[2] != minion_id:
        raise Refused(f"signed message names {parts[2]!r}, the event {minion_id!r}")
    try:
        stamp = float(parts[3])
    except ValueError as err:
        raise Refused(f"signed message has no time: {msg!r}") from err
    if not NONCE.match(parts[4]):
        raise Refused(f"signed message has no nonce: {msg!r}")
    sig = auth.get("sig")
    if not isinstance(sig, str):
        return msg, None, stamp
    try:
        return msg, base64.b64decode(sig, validate=True), stamp
    except (binascii.Error, ValueError) as err:
        raise Refused("the signature is not base64") from err


def verify_signature(pub_pem, msg, sig):
    """True when ``sig`` is ``msg`` signed with the private half of ``pub_pem``."""
    try:
        key = salt.crypt.PublicKeyString(pub_pem)
    except salt.crypt.InvalidKeyError as err:
        raise Refused(f"the minion's accepted key cannot be read: {err}") from err
    try:
        return bool(key.verify(msg, sig, SIGN_ALGORITHM))
    except Exception:  # pylint: disable=broad-except
        return False  # a malformed signature is a bad signature


def check_time(stamp, now, max_age, last_stamp):
    if abs(now - stamp) > max_age:
        raise Refused(f"the event is {now - stamp:+.0f} s from this master's clock "
                      f"(max_age {max_age}); check the clocks")
    if last_stamp is not None and stamp <= last_stamp:
        raise Refused("the event is not newer than the last one accepted from this minion "
                      "(a replay)")


def is_realserver(pillar, minion_id):
    """Is ``minion_id`` a real server of any service in this (its own) pillar?"""
    lvs = pillar.get("lvs") if isinstance(pillar, dict) else None
    services = lvs.get("services") if isinstance(lvs, dict) else None
    if not isinstance(services, dict):
        return False
    for svc in services.values():
        realservers = svc.get("realservers") if isinstance(svc, dict) else None
        if isinstance(realservers, dict) and minion_id in realservers:
            return True
    return False


def rate_decision(entry, now, window):
    """``(allowed, seconds until allowed)`` for a minion's cache entry."""
    last = (entry or {}).get("last_remediation")
    if last is None or now - last >= window:
        return True, 0.0
    return False, window - (now - last)


# --------------------------------------------------------------------------------------------
# Master-side plumbing: keys, cache, pillar, publish, events
# --------------------------------------------------------------------------------------------


def _accepted_key(minion_id):
    keys = salt.cache.Cache(__opts__, driver=__opts__.get("keys.cache_driver", "localfs_key"))  # pylint: disable=undefined-variable
    try:
        entry = keys.fetch("keys", minion_id)
    except Exception as err:  # pylint: disable=broad-except
        raise Refused(f"no key for {minion_id!r}: {err}") from err
    if not isinstance(entry, dict) or entry.get("state") != "accepted" or not entry.get("pub"):
        raise Refused(f"{minion_id!r} has no accepted key on this master")
    return entry["pub"]


@contextmanager
def _locked():
    """One thread and one process at a time in the check-and-reserve of the rate limit."""
    path = os.path.join(__opts__["cachedir"], "lvs_remediate.lock")  # pylint: disable=undefined-variable
    with _thread_lock:
        with open(path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _cache():
    return salt.cache.factory(__opts__)  # pylint: disable=undefined-variable


def _fetch(cache, minion_id):
    try:
        entry = cache.fetch(CACHE_BANK, minion_id)
    except Exception:  # pylint: disable=broad-except
        entry = None
    return dict(entry) if isinstance(entry, dict) else {}


def _pillar_of(minion_id):
    opts = __opts__  # pylint: disable=undefined-variable
    id_, grains, _ = salt.utils.minions.get_minion_data(minion_id, opts)
    grains = grains or {"fqdn": minion_id}
    return salt.pillar.Pillar(opts, grains, id_ or minion_id, "base").compile_pillar()


def _publish(minion_id, timeout):
    with salt.client.LocalClient(mopts=__opts__) as client:  # pylint: disable=undefined-variable
        return client.run_job([minion_id], "state.apply", arg=[STATE], tgt_type="list",
                              kwarg={"queue": True}, timeout=timeout)


def _fire(outcome, payload):
    opts = __opts__  # pylint: disable=undefined-variable
    try:
        with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False) as event:
            event.fire_event(payload, f"lvs/remediate/{outcome}")
    except Exception:  # pylint: disable=broad-except
        log.exception("lvs_remediate: could not fire lvs/remediate/%s", outcome)


def _outcome(outcome, minion_id, reason, **extra):
    payload = {"id": minion_id, "outcome": outcome, "reason": reason, **extra}
    level = logging.INFO if outcome == "started" else logging.WARNING
    log.log(level, "lvs_remediate: %s %s: %s", outcome, minion_id or "-", reason)
    _fire(outcome, payload)
    return payload


# --------------------------------------------------------------------------------------------
# Runner functions
# --------------------------------------------------------------------------------------------


def drift(tag=None, data=None):
    """
    Verify an ``lvs_realserver`` drift event and, if it holds and the rate limit allows, apply
    ``lvs.realserver`` on the minion that sent it. Called by ``salt/reactor/lvs/remediate.sls``.

    Returns ``{"id", "outcome", "reason", ...}``; ``outcome`` is ``started`` (with ``jid``),
    ``skipped`` (rate limit), ``refused`` (the event does not hold) or ``failed`` (publish).

    CLI Example (what the reactor does; by hand only for debugging):

    .. code-block:: bash

        salt-run lvs_remediate.drift tag=salt/beacon/rs1/lvs_realserver/drift data='{...}'
    """
    conf = _settings()
    now = time.time()
    minion_id = None
    try:
        minion_id = sender(tag, data)
        msg, sig, stamp = parse_auth(data, minion_id)
        pub = _accepted_key(minion_id)
        if sig is not None:
            if not verify_signature(pub, msg, sig):
                raise Refused("the signature does not verify with the minion's accepted key")
        elif conf["require_signature"]:
            raise Refused("the event is not signed (lvs_remediate:require_signature is true)")
        cache = _cache()
        with _locked():
            entry = _fetch(cache, minion_id)
            check_time(stamp, now, conf["max_age"], entry.get("last_stamp"))
            entry["last_stamp"] = stamp
            allowed, wait = rate_decision(entry, now, conf["window"])
            if not allowed:
                entry["skipped"] = entry.get("skipped", 0) + 1
                cache.store(CACHE_BANK, minion_id, entry)
                return _outcome(
                    "skipped", minion_id,
                    f"rate limit: at most one remediation per {conf['window']} s; the last was "
                    f"{now - entry['last_remediation']:.0f} s ago, the next may run in "
                    f"{wait:.0f} s (the beacon resends a drift that persists)",
                    skipped=entry["skipped"], retry_in=round(wait, 1))
            previous = entry.get("last_remediation")
            entry["last_remediation"] = now  # reserved before the slow part
            cache.store(CACHE_BANK, minion_id, entry)
        try:
            if not is_realserver(_pillar_of(minion_id), minion_id):
                raise Refused("not a real server of any service in its pillar "
                              "(lvs:services:<name>:realservers)")
        except Refused:
            with _locked():
                entry = _fetch(cache, minion_id)
                entry["last_remediation"] = previous
                cache.store(CACHE_BANK, minion_id, entry)
            raise
    except Refused as why:
        return _outcome("refused", minion_id, str(why))
    try:
        job = _publish(minion_id, conf["timeout"])
    except Exception as err:  # pylint: disable=broad-except
        return _outcome("failed", minion_id, f"could not publish state.apply {STATE}: {err}")
    if not job or not job.get("jid") or minion_id not in (job.get("minions") or []):
        return _outcome("failed", minion_id, f"{minion_id} did not take the job (not connected?)",
                        jid=(job or {}).get("jid"))
    findings = data.get("findings") if isinstance(data.get("findings"), list) else []
    return _outcome(
        "started", minion_id,
        f"state.apply {STATE} for {len(findings)} finding(s)"
        + (" (reminder)" if data.get("repeat") is True else ""),
        jid=job["jid"], findings=[str(f.get("message", ""))[:200]
                                  for f in findings[:10] if isinstance(f, dict)])


def status(minion=None):
    """
    The rate-limit record per minion: last remediation, remediations skipped, last event time.

    CLI Example:

    .. code-block:: bash

        salt-run lvs_remediate.status
        salt-run lvs_remediate.status minion=rs1
    """
    cache = _cache()
    names = [minion] if minion else cache.list(CACHE_BANK)
    return {name: _fetch(cache, name) for name in names}


def reset(minion):
    """
    Forget a minion's rate-limit record (the next drift event is acted on at once).

    CLI Example:

    .. code-block:: bash

        salt-run lvs_remediate.reset rs1
    """
    cache = _cache()
    with _locked():
        cache.flush(CACHE_BANK, minion)
    return True
