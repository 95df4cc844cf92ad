"""Catalogue one finalized output object: check it, add it to its STAC item, update the run's collection,
and announce the item once it is complete.

Called by the ``catalogue_output`` function for every OBJECT_FINALIZE event and by the local backend after it
writes its files, so both paths build the same manifests.
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
from .runs import CANCELLED, CLAIMED, PROCESSING, QUEUED, SUCCEEDED, run_expectations, run_for_object, set_state
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
        if complete and self.can_publish and _claim_due(item["properties"]["leaf:tile_ready"], self.fence, now):
            item["properties"]["leaf:tile_ready"] = {"state": "claimed", "by": self.fence,
                                                     "event_id": self.event.event_id, "claimed_at": now}
            claimed = changed = True
        self.waiting = complete and self.can_publish and not claimed and _awaited(
            item["properties"]["leaf:tile_ready"])
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


def _update_collection(sink: Sink, run: dict[str, Any], item_id: str, status: str, item_href: str,
                       items: dict[str, ExpectedItem], objects: dict[str, ExpectedObject]) -> bool:
    """Record the item's status in the run's collection. Returns True when every item is complete or skipped."""
    key = collection_key(run["out_folder"], run["request_id"])

    def mutate(doc: dict | None) -> tuple[dict | None, bool]:
        coll = copy.deepcopy(doc) if doc is not None else new_collection(
            run["request_id"], items, f"LEAF products of request {run['request_id']}", run=run, sink=sink,
            objects=objects)
        statuses = coll.setdefault("leaf:items", {})
        # Events arrive in any order: a late event of a partial item must not undo "complete".
        new_status = statuses.get(item_id) if status == PARTIAL and statuses.get(item_id) in (COMPLETE, SKIPPED) \
            else status
        changed = doc is None or statuses.get(item_id) != new_status
        statuses[item_id] = new_status
        if not any(link.get("rel") == "item" and link.get("href") == item_href for link in coll["links"]):
            coll["links"].append({"rel": "item", "href": item_href, "type": "application/geo+json"})
            changed = True
        done = all(s in (COMPLETE, SKIPPED) for s in statuses.values())
        return (coll if changed else None), done

    return update_json(sink, key, mutate)


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
    if complete:
        all_done = _update_collection(sink, run, exp_item.item_id, COMPLETE, href(sink, ikey, ckey), expected.items,
                                      expected.objects)
        # Runs with Earth Engine tasks are ended by the reconciler, which also records their EECU.
        if all_done and not run.get("tasks") and set_state(sink, run["out_folder"], run["request_id"], SUCCEEDED,
                                                           only_from=(CLAIMED, QUEUED, PROCESSING)):
            logs.info("run succeeded: every item is complete", **{**ctx, "state": SUCCEEDED})
    else:
        _update_collection(sink, run, exp_item.item_id, PARTIAL, href(sink, ikey, ckey), expected.items,
                           expected.objects)
    logs.info("object catalogued", **ctx)
    if update.waiting:  # if that handler died, the redelivery of this event takes its claim over after the lease
        raise TransientError(f"item {exp_item.item_id} is complete and another handler is publishing its "
                             "tile-ready message; redeliver later to make sure it was published")
    return CatalogueResult("recorded", event.key, run["request_id"], exp_item.item_id, complete, published)
