"""Catalogue one finalized output object: check it, add it to its STAC item, update the run's collection,
and announce the item once it is complete.

Called by the ``catalogue_output`` function for every OBJECT_FINALIZE event and by the local backend after it
writes its files, so both paths build the same manifests.

A complete item whose file (or shard) is later replaced by a generation that fails its check becomes incomplete:
the item records the problem, the collection says ``partial`` with the errors and marks the item degraded, and the
run record mirrors that under ``degraded`` while keeping its state (a SUCCEEDED run stays SUCCEEDED with its one
run-finished message; ``leaf status`` shows the damage). Tile-ready stays once per item and request: a published
announcement is not repeated when a good generation completes the item again (consumers dedupe on
``tile_ready_id`` anyway, and follow content changes through the item), while a claim not yet published is
withdrawn so an incomplete item is never announced. Older generations are stale and never undo newer files.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .. import logs
from ..decoding import clip
from ..errors import NamingError, TransientError
from ..naming import OutputName, collection_key, item_key, run_record_key
from ..sinks import Sink
from . import tile_ready
from .check import check_object
from .concurrency import update_json
from .expectations import ExpectedItem, ExpectedObject
from .runs import (
    CANCELLED,
    CLAIMED,
    PROCESSING,
    QUEUED,
    SUCCEEDED,
    DegradedItem,
    RunRecord,
    run_expectations,
    run_for_object,
    set_state,
    update_run,
)
from .stac import href, item_grid_fields, item_links, new_collection, new_item, now_iso, product_asset, shard_entry

COMPLETE, PARTIAL, SKIPPED, PENDING = "complete", "partial", "skipped", "pending"


@dataclass(frozen=True)
class ObjectEvent:
    """What the catalogue needs from a finalize event (or from a stat of a local file)."""

    key: str
    event_id: str
    bucket: str | None = None
    generation: int | None = None
    size: int | None = None
    md5_hash: str | None = None


@dataclass(frozen=True)
class CatalogueResult:
    status: str
    """``ignored`` (not a LEAF output), ``no_run`` (no run expects it), ``stale`` (older generation), ``recorded``."""
    key: str
    request_id: str | None = None
    item_id: str | None = None
    complete: bool = False
    published: bool = False
    reason: str = ""


def _present_ok(item: dict[str, Any]) -> set[str]:
    """Objects listed in the item whose file check found no error."""
    return {
        s["leaf:object"]
        for a in item["assets"].values()
        for s in a.get("leaf:shards", [])
        if not s.get("leaf:check", {}).get("errors")
    }


def _item_errors(item: dict[str, Any]) -> dict[str, list[str]]:
    """Object key → check errors, for the objects of the item whose file failed its check."""
    return {k: list(p["errors"]) for k, p in item["properties"].get("leaf:problems", {}).items()
            if p.get("errors")}


def _existing_entry(item: dict[str, Any], product: str, key: str) -> dict[str, Any] | None:
    for s in item["assets"].get(product, {}).get("leaf:shards", []):
        if s["leaf:object"] == key:
            return s
    return None


def _claim_due(state: dict[str, Any] | None, token: str, now: float) -> bool:
    """May this handler (fencing ``token``, unique per handling, never the event id) claim the item's tile-ready
    message now? Only when nobody did, or a claim was abandoned: older than the lease and never published."""
    if state is None:
        return True
    if state.get("state") == "claimed":
        return now - float(state.get("claimed_at", 0)) > tile_ready.CLAIM_LEASE_S
    if state.get("state") == "publishing":  # died between the fence and the publish (a publish times out at 60 s)
        return now - float(state.get("publishing_at", 0)) > tile_ready.CLAIM_LEASE_S
    return False


def _awaited(state: dict[str, Any] | None) -> bool:
    """Another handler holds the tile-ready claim and has not published yet."""
    return state is not None and state.get("state") in ("claimed", "publishing")


class _ItemUpdate:
    """The mutation of one item for one event (a class so the retry loop can re-run it on a fresh read)."""

    def __init__(self, run: dict[str, Any], exp_item: ExpectedItem, exp_obj: ExpectedObject, entry: dict[str, Any],
                 event: ObjectEvent, links: list[dict[str, str]], can_publish: bool,
                 clock: Callable[[], float], fence: str = ""):
        self.run, self.exp_item, self.exp_obj, self.entry = run, exp_item, exp_obj, entry
        self.event, self.links = event, links
        self.can_publish, self.clock = can_publish, clock
        self.fence = fence or uuid.uuid4().hex
        self.item_objects: list[ExpectedObject] = []
        self.mask_rule: str | None = None
        """The file's own mask rule (its tag), which replaces the one from the sensor facts (see new_item)."""
        self.waiting = False
        """Set when the item is complete but another handler's tile-ready claim is still unpublished."""
        self.errors: dict[str, list[str]] = {}
        """The check errors of the item as this handler last saw (or wrote) it."""

    def _fresh(self) -> dict[str, Any]:
        item = new_item(self.exp_item, self.run["request_id"], self.run["collection_id"], self.run)
        item["links"] = [*self.links, *item["links"]]
        return item

    def __call__(self, doc: dict | None) -> tuple[dict | None, tuple[str, bool, bool]]:
        item = copy.deepcopy(doc) if doc is not None else None
        if item is None or item["properties"].get("leaf:request_id") != self.run["request_id"]:
            item = self._fresh()  # first object, or a newer request re-produces this item
        product, key = self.exp_obj.product, self.exp_obj.key
        old = _existing_entry(item, product, key)
        old_gen, new_gen = (old or {}).get("leaf:generation"), self.entry.get("leaf:generation")
        if old is not None and old_gen is not None and new_gen is not None and new_gen < old_gen:
            self.errors = _item_errors(item)
            return None, ("stale", key in _present_ok(item), False)
        changed = old != self.entry
        if changed:
            self._put_entry(item, product, key)
        if self.mask_rule and item["properties"].get("leaf:mask_rule") != self.mask_rule:
            item["properties"]["leaf:mask_rule"] = self.mask_rule
            changed = True
        complete = set(self.exp_item.objects) <= _present_ok(item)
        changed |= item["properties"]["leaf:complete"] != complete
        item["properties"]["leaf:complete"] = complete
        claimed = False
        now = self.clock()
        state = item["properties"]["leaf:tile_ready"]
        if not complete and state is not None and state.get("state") == "claimed":
            # Complete when claimed, not any more (a file was replaced by a bad one): withdraw the claim, so its
            # holder's fence fails and no incomplete item is announced; a later good file claims it anew.
            item["properties"]["leaf:tile_ready"] = None
            changed = True
        if complete and self.can_publish and _claim_due(item["properties"]["leaf:tile_ready"], self.fence, now):
            item["properties"]["leaf:tile_ready"] = {"state": "claimed", "by": self.fence,
                                                     "event_id": self.event.event_id, "claimed_at": now}
            claimed = changed = True
        self.waiting = complete and self.can_publish and not claimed and _awaited(
            item["properties"]["leaf:tile_ready"])
        self.errors = _item_errors(item)
        if not changed:
            return None, ("recorded", complete, False)
        item["properties"]["updated"] = now_iso()
        return item, ("recorded", complete, claimed)

    def _put_entry(self, item: dict[str, Any], product: str, key: str) -> None:
        asset = item["assets"].get(product)
        shards = [s for s in (asset or {}).get("leaf:shards", []) if s["leaf:object"] != key]
        shards.append(self.entry)
        whole = self._whole_file_grid()
        item["assets"][product] = product_asset(product, shards, self.exp_obj, *whole)
        item["properties"].update(item_grid_fields(item))
        problems = item["properties"]["leaf:problems"]
        problems.pop(key, None)
        if "leaf:check" in self.entry:
            problems[key] = self.entry["leaf:check"]

    def _whole_file_grid(self) -> tuple[list[int], list[float]]:
        """Shape and transform of the whole (unsplit) file: the union of its shards' expected grids."""
        siblings = [o for o in self.item_objects if o.product == self.exp_obj.product]
        first = min(siblings, key=lambda o: tuple(o.shard or [0, 0]))
        height = max((o.shard or [0, 0])[0] + o.height for o in siblings)
        width = max((o.shard or [0, 0])[1] + o.width for o in siblings)
        return [height, width], first.transform


def _fence_publish(sink: Sink, key: str, token: str, clock: Callable[[], float]) -> dict | None:
    """Just before publishing: move our claim to ``publishing`` under a generation precondition. False when a
    later handler took the claim over meanwhile (this one was slower than the lease): it must not publish.
    Returns the item as fenced, so nothing but the publish itself lies between the fence and the message."""
    def mutate(doc: dict | None) -> tuple[dict | None, dict | None]:
        state = (doc or {}).get("properties", {}).get("leaf:tile_ready")
        if doc is None or not state or state.get("by") != token or state.get("state") != "claimed":
            return None, None
        doc = copy.deepcopy(doc)
        doc["properties"]["leaf:tile_ready"] = {**state, "state": "publishing", "publishing_at": clock()}
        return doc, doc

    return update_json(sink, key, mutate)


def _cancelled(sink: Sink, run: dict[str, Any]) -> bool:
    got = sink.read_json(run_record_key(run["out_folder"], run["request_id"]))
    return got is not None and got[0].get("state") == CANCELLED


def _release_tile_claim(sink: Sink, key: str, token: str, phase: str = "publishing") -> None:
    def mutate(doc: dict | None) -> tuple[dict | None, None]:
        state = (doc or {}).get("properties", {}).get("leaf:tile_ready")
        if doc is None or not state or state.get("by") != token or state.get("state") != phase:
            return None, None
        doc = copy.deepcopy(doc)
        doc["properties"]["leaf:tile_ready"] = None
        return doc, None

    try:
        update_json(sink, key, mutate)
    except Exception as e:  # the claim then expires after its lease
        logs.warning(f"could not release the tile-ready claim: {type(e).__name__}: {e}", object=key)


def _mark_published(sink: Sink, key: str, token: str, message_id: str) -> None:
    def mutate(doc: dict | None) -> tuple[dict | None, None]:
        state = (doc or {}).get("properties", {}).get("leaf:tile_ready")
        if doc is None or not state or state.get("by") != token or state.get("state") != "publishing":
            return None, None
        doc = copy.deepcopy(doc)
        doc["properties"]["leaf:tile_ready"] = {**state, "state": "published", "message_id": message_id,
                                                "published_at": now_iso()}
        return doc, None

    update_json(sink, key, mutate)


@dataclass(frozen=True)
class _CollectionChange:
    status: str
    """The item's status in the collection after the update."""
    done: bool
    """Every item of the run is complete or skipped."""
    degraded: bool
    """The item is recorded as degraded (complete once, incomplete now)."""
    mirror: bool
    """This update changed what the run record's ``degraded`` mirrors: the handler must copy it there."""


def _update_collection(sink: Sink, run: dict[str, Any], item_id: str, view: tuple[str, dict[str, list[str]]],
                       ikey: str, item_href: str, items: dict[str, ExpectedItem],
                       objects: dict[str, ExpectedObject]) -> _CollectionChange:
    """Record the item's status (``leaf:items``), its check errors (``leaf:item_problems``) and whether it was
    complete and is not any more (``leaf:degraded``) in the run's collection.

    ``view`` is (status, errors) of the item as this handler wrote it. Events arrive in any order, so where it
    would change the collection, the item is read again and its current state is written instead: the last
    writer of the item always updates the collection after its item write, so the collection ends as the item is
    (a late event of a partial item cannot undo "complete", nor a late complete undo a newer bad file).
    """
    key = collection_key(run["out_folder"], run["request_id"])

    def current(coll_status: str | None, coll_errors: dict[str, list[str]]) -> tuple[str, dict[str, list[str]]]:
        if view == (coll_status, coll_errors):
            return view
        got = sink.read_json(ikey)
        if got is None or got[0]["properties"].get("leaf:request_id") != run["request_id"]:
            return view  # a newer request re-produces the item: this run's view is all there is
        props = got[0]["properties"]
        return (COMPLETE if props.get("leaf:complete") else PARTIAL), _item_errors(got[0])

    def mutate(doc: dict | None) -> tuple[dict | None, _CollectionChange]:
        coll = copy.deepcopy(doc) if doc is not None else new_collection(
            run["request_id"], items, f"LEAF products of request {run['request_id']}", run=run, sink=sink,
            objects=objects)
        statuses = coll.setdefault("leaf:items", {})
        reasons = coll.setdefault("leaf:item_problems", {})
        degraded = coll.setdefault("leaf:degraded", {})
        before, before_errors, was_degraded = statuses.get(item_id), reasons.get(item_id, {}), item_id in degraded
        status, errors = current(before, before_errors)
        if status == PARTIAL and before == SKIPPED:
            status, errors = SKIPPED, {}  # a skipped item is not this run's to produce
        if status == PARTIAL and before == COMPLETE:
            degraded[item_id] = now_iso()
        elif status != PARTIAL:
            degraded.pop(item_id, None)
        statuses[item_id] = status
        if errors and status == PARTIAL:
            reasons[item_id] = errors
        else:
            reasons.pop(item_id, None)
        changed = doc is None or before != status or before_errors != reasons.get(item_id, {}) \
            or was_degraded != (item_id in degraded)
        if not any(link.get("rel") == "item" and link.get("href") == item_href for link in coll["links"]):
            coll["links"].append({"rel": "item", "href": item_href, "type": "application/geo+json"})
            changed = True
        done = all(s in (COMPLETE, SKIPPED) for s in statuses.values())
        is_degraded = item_id in degraded
        mirror = was_degraded != is_degraded or (is_degraded and before_errors != reasons.get(item_id, {}))
        return (coll if changed else None), _CollectionChange(status, done, is_degraded, mirror)

    return update_json(sink, key, mutate)


def _mirror_degraded(sink: Sink, run: dict[str, Any], item_id: str) -> bool:
    """Copy the collection's degraded state of one item into the run record (``RunRecord.degraded``). The
    collection is read inside the run's read-modify-write, so the last mirror always writes the latest state,
    whatever order handlers run in. Returns whether the item is degraded."""
    ckey = collection_key(run["out_folder"], run["request_id"])

    def mutate(record: RunRecord | None) -> tuple[RunRecord | None, bool]:
        got = sink.read_json(ckey)
        coll = got[0] if got is not None else {}
        since = coll.get("leaf:degraded", {}).get(item_id)
        if record is None:
            return None, since is not None
        want = DegradedItem(since=since, problems=coll.get("leaf:item_problems", {}).get(item_id, {})) \
            if since is not None else None
        if record.degraded.get(item_id) == want:
            return None, want is not None
        if want is None:
            record.degraded.pop(item_id, None)
        else:
            record.degraded[item_id] = want
        record.touch()
        return record, want is not None

    return update_run(sink, run["out_folder"], run["request_id"], mutate)


def _trusted(sink: Sink, event: ObjectEvent) -> tuple[ObjectEvent | None, str]:
    """The event with a generation the catalogue may trust — the object's current one, from its metadata — or
    (None, why not) when the event is older than the object or the object is gone.

    An event's own generation is believed only when it matches: a forged one (9999999999999999999) would make
    every later real file "stale", and an old event arriving late describes an object that is no longer there.
    """
    current_of = getattr(sink, "generation", None)
    if event.generation is None or not callable(current_of):
        return event, ""
    current = current_of(event.key)
    if current is None:
        return None, "the object no longer exists"
    if current == event.generation:
        return event, ""
    if event.generation < current:
        return None, "the event is older than the object's current generation"
    logs.warning(f"event generation {clip(event.generation)} is not the object's current {current}: "
                 "cataloguing the current object", object=event.key, event_id=event.event_id)
    return replace(event, generation=current, size=None, md5_hash=None), ""  # size/md5 re-read for that object


def catalogue_object(sink: Sink, event: ObjectEvent, *, publisher: tile_ready.Publisher | None = None,
                     clock: Callable[[], float] = time.time) -> CatalogueResult:
    """Add one finalized object to its item and collection; publish tile-ready when the item is complete."""
    try:
        name = OutputName.parse(event.key)
    except NamingError:
        return CatalogueResult("ignored", event.key, reason="not a LEAF output name")
    run = run_for_object(sink, name.out_folder, event.key)
    if run is None:
        logs.warning("no run record expects this object; not catalogued", object=event.key)
        return CatalogueResult("no_run", event.key, reason="no run record expects it")
    expected = run_expectations(sink, run)
    exp_obj = expected.objects[event.key]
    exp_item = expected.items[exp_obj.item_id]
    ctx = {"request_id": run["request_id"], "region": exp_item.region, "period": exp_item.period,
           "item_id": exp_item.item_id, "object": event.key, "event_id": event.event_id}

    trusted, why_not = _trusted(sink, event)
    if trusted is None:
        return CatalogueResult("stale", event.key, run["request_id"], exp_item.item_id, reason=why_not)
    event = trusted
    check = check_object(sink, event.key, exp_obj)
    size, md5 = event.size, event.md5_hash
    if size is None:
        stat = sink.stat(event.key)
        size, md5 = (stat if stat else (None, None))
    ikey = item_key(run["out_folder"], exp_item.region, exp_item.year, exp_item.period)
    ckey = collection_key(run["out_folder"], run["request_id"])
    entry = shard_entry(href(sink, event.key, ikey), exp_obj, size, md5, event.generation, check.to_dict())
    item_href = sink.uri(ikey)
    update = _ItemUpdate(run, exp_item, exp_obj, entry, event, item_links(sink, ikey, run["out_folder"],
                         run["request_id"]), publisher is not None, clock)
    update.item_objects = expected.item_objects(exp_item.item_id)
    update.mask_rule = check.mask_rule
    status, complete, claimed = update_json(sink, ikey, update)
    if check.errors:
        logs.error("output file failed its check: " + "; ".join(check.errors), **ctx)
    if status == "stale":
        return CatalogueResult("stale", event.key, run["request_id"], exp_item.item_id, complete,
                               reason="a newer generation is already catalogued")
    published = False
    if claimed and _cancelled(sink, run):  # a cancelled run announces nothing more (its state read fresh)
        _release_tile_claim(sink, ikey, update.fence, "claimed")
        claimed = False
        update.waiting = False
        logs.info("run cancelled: no tile-ready", **ctx)
    fenced = _fence_publish(sink, ikey, update.fence, clock) if claimed and publisher is not None else None
    if fenced is not None and publisher is not None:
        data, attributes = tile_ready.message(fenced, item_href)
        try:
            message_id = publisher.publish(data, attributes)
        except BaseException:
            _release_tile_claim(sink, ikey, update.fence)  # the redelivery (or any later event) may publish
            raise
        _mark_published(sink, ikey, update.fence, message_id)
        published = True
        logs.info("tile ready published", message_id=message_id, **ctx)
    change = _update_collection(sink, run, exp_item.item_id, (COMPLETE if complete else PARTIAL, update.errors),
                                ikey, href(sink, ikey, ckey), expected.items, expected.objects)
    if change.mirror and _mirror_degraded(sink, run, exp_item.item_id):
        logs.error("item no longer complete: a file was replaced by one that fails its check; the run keeps its "
                   "state and records the item under degraded", **{**ctx, "state": run.get("state")})
    elif change.mirror:
        logs.info("degraded item complete again", **ctx)
    # Runs with Earth Engine tasks are ended by the reconciler, which also records their EECU.
    if change.status == COMPLETE and change.done and not run.get("tasks") and set_state(
            sink, run["out_folder"], run["request_id"], SUCCEEDED, only_from=(CLAIMED, QUEUED, PROCESSING)):
        logs.info("run succeeded: every item is complete", **{**ctx, "state": SUCCEEDED})
    logs.info("object catalogued", **ctx)
    if update.waiting:  # if that handler died, the redelivery of this event takes its claim over after the lease
        raise TransientError(f"item {exp_item.item_id} is complete and another handler is publishing its "
                             "tile-ready message; redeliver later to make sure it was published")
    return CatalogueResult("recorded", event.key, run["request_id"], exp_item.item_id, complete, published)
