"""Session records, the prompt journal and checkpoints, on both storage backends (a directory and a real
S3 server, SeaweedFS, through the parametrized `storage_config` fixture of tests/fixtures/s3.py).

Races are forced with barriers (never sleeps): two mutators read the same ETag before either writes;
appenders on separate SessionJournal instances start together. A store that lands a conditional write and
then reports PreconditionFailed stands in for an S3 retry after a lost response.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from types import SimpleNamespace

import pytest

from serve_app.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from serve_app.sessions.checkpoints import CheckpointStore, checkpoint_data_key, checkpoint_header_key
from serve_app.sessions.journal import JournalEntry, SessionJournal, since_reset
from serve_app.sessions.records import (
    ActorRef,
    SessionOptions,
    SessionRecord,
    SessionSource,
    SessionStore,
    VideoInfo,
    new_session_id,
    session_index_key,
    session_record_key,
)
from serve_app.storage import ArtifactStore, keys, open_store

pytestmark = pytest.mark.integration

TENANT = "acme"
VIDEO = VideoInfo(num_frames=12, fps=6.0, source_fps=30.0, width=64, height=48, duration_s=2.0)


@pytest.fixture
def store(storage_config) -> ArtifactStore:
    return open_store(storage_config)


@pytest.fixture
def sessions(store) -> SessionStore:
    return SessionStore(store, TENANT)


def all_keys(store: ArtifactStore, prefix: str) -> list[str]:
    return [info.key for info in store.list(prefix, limit=100_000)]


class LostResponseStore(ArtifactStore):
    """Delegates to a real store, except that the next `lose` conditional puts land and then raise
    PreconditionFailed, as S3 does when botocore retries a conditional PUT whose first response was lost."""

    def __init__(self, inner: ArtifactStore, lose: int = 1):
        self.inner = inner
        self.lose = lose

    def put(self, key, data, content_type="application/octet-stream", **conditions):
        etag = self.inner.put(key, data, content_type, **conditions)
        if self.lose and (conditions.get("if_none_match") or conditions.get("if_match")):
            self.lose -= 1
            raise PreconditionFailed(f"conditional put of {key} lost: the object changed")
        return etag

    def get(self, key):
        return self.inner.get(key)

    def head(self, key):
        return self.inner.head(key)

    def delete(self, key):
        self.inner.delete(key)

    def list(self, prefix, **kwargs):
        return self.inner.list(prefix, **kwargs)

    def presign_get(self, key, expires_s):
        return self.inner.presign_get(key, expires_s)

    def presign_put(self, key, content_type, expires_s, content_length=None):
        return self.inner.presign_put(key, content_type, expires_s, content_length)


# -- records ---------------------------------------------------------------------------------------


def test_record_create_get_round_trip(sessions, store):
    created = sessions.create(
        "sess-1", source=SessionSource(upload_id="up-1"), options=SessionOptions(max_frames=100, fps=6.0)
    )
    assert created.state == "ingesting" and created.tenant == TENANT and created.revision == 1
    assert created.actor.generation == 0 and created.removed_obj_ids == []
    got = sessions.get("sess-1")
    assert got == created
    assert got.source.upload_id == "up-1" and got.options.max_frames == 100 and got.options.fps == 6.0
    stored = json.loads(store.get(f"t/{TENANT}/sessions/sess-1/record.json").data)
    assert stored["session_id"] == "sess-1" and stored["state"] == "ingesting"
    assert store.head(session_index_key(TENANT, "sess-1")).size == 0

    with pytest.raises(Conflict) as exc:
        sessions.create("sess-1")
    assert exc.value.code == "session_exists"
    assert sessions.get("sess-1") == created  # untouched by the losing create

    fresh = sessions.create()
    keys.validate_id(fresh.session_id)
    assert sessions.get(fresh.session_id).session_id == fresh.session_id


def test_unknown_session_is_not_found(sessions):
    for call in (lambda: sessions.get("nope"), lambda: sessions.mutate("nope", lambda r: r)):
        with pytest.raises(NotFound) as exc:
            call()
        assert exc.value.code == "session_not_found"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 65, "sp ace", "dot.ted"])
def test_invalid_session_ids_are_rejected(sessions, store, bad):
    for call in (
        lambda: sessions.get(bad), lambda: sessions.create(bad), lambda: sessions.delete_all(bad),
        lambda: sessions.mutate(bad, lambda r: r),
        lambda: SessionJournal(store, TENANT, bad), lambda: CheckpointStore(store, TENANT, bad),
    ):
        with pytest.raises(InvalidInput) as exc:
            call()
        assert exc.value.code == "invalid_session_id"
    with pytest.raises(InvalidInput):
        SessionStore(store, "../other")


def test_mutate_applies_and_protects_identity(sessions, store):
    sessions.create("m1")

    def ready(r: SessionRecord) -> SessionRecord:
        r.state = "ready"
        r.video = VIDEO
        r.progress.done = r.progress.total = 12
        r.actor = ActorRef(name="sam3-session-m1", namespace="sam3", generation=r.actor.generation + 1)
        r.session_id = "hijack"  # identity fields are restored by mutate
        return r

    updated = sessions.mutate("m1", ready)
    assert updated.session_id == "m1" and updated.state == "ready" and updated.revision == 2
    assert updated.video == VIDEO and updated.actor.generation == 1 and updated.progress.done == 12
    assert updated.updated_at >= updated.created_at
    assert sessions.get("m1") == updated

    etag = store.head(session_record_key(TENANT, "m1")).etag
    assert sessions.mutate("m1", lambda r: None) == updated  # no-op: nothing written
    assert sessions.mutate("m1", lambda r: r) == updated
    assert store.head(session_record_key(TENANT, "m1")).etag == etag

    def refuse(r: SessionRecord) -> SessionRecord:
        raise Conflict("not allowed in this state", "session_not_ready")

    with pytest.raises(Conflict) as exc:
        sessions.mutate("m1", refuse)
    assert exc.value.code == "session_not_ready" and sessions.get("m1") == updated


def test_racing_mutates_both_apply(sessions):
    """Two mutators read the same ETag (a barrier holds both inside fn): one write loses, re-reads, reapplies."""
    sessions.create("race")
    barrier = threading.Barrier(2)
    calls: list[str] = []
    calls_lock = threading.Lock()

    def mutator(name: str):
        def fn(r: SessionRecord) -> SessionRecord:
            with calls_lock:
                calls.append(name)
                first_call = calls.count(name) == 1
            if first_call:  # both have read the same ETag before either writes
                barrier.wait(timeout=30)
            r.progress.done += 1
            r.actor.generation += 1
            return r

        return sessions.mutate("race", fn)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(mutator, ["a", "b"]))
    final = sessions.get("race")
    assert final.progress.done == 2 and final.actor.generation == 2 and final.revision == 3
    assert sorted(calls) == ["a", "a", "b"] or sorted(calls) == ["a", "b", "b"]  # exactly one retry
    assert max(results, key=lambda r: r.revision) == final


def test_many_concurrent_mutates_none_lost(sessions):
    sessions.create("crowd")
    threads, each = 6, 3

    def bump(_):
        for _ in range(each):
            sessions.mutate("crowd", lambda r: r.model_copy(update={"removed_obj_ids": [*r.removed_obj_ids, 0]}))

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(bump, range(threads)))
    final = sessions.get("crowd")
    assert len(final.removed_obj_ids) == threads * each and final.revision == 1 + threads * each


def test_lost_response_is_recognised_not_reapplied(store):
    sessions = SessionStore(LostResponseStore(store, lose=0), TENANT)
    sessions.create("lost")
    sessions.store.lose = 1
    calls = []

    def bump(r: SessionRecord) -> SessionRecord:
        calls.append(1)
        r.actor.generation += 1
        return r

    assert sessions.mutate("lost", bump).actor.generation == 1
    assert len(calls) == 1 and sessions.get("lost").actor.generation == 1

    sessions.store.lose = 1
    created = sessions.create("lost-create")  # landed, then "PreconditionFailed": still ours
    assert sessions.get("lost-create") == created


def test_list_pages_filters_and_orders(sessions, monkeypatch):
    for sid in ("s-c", "s-a", "s-b"):
        sessions.create(sid)
    sessions.mutate("s-b", lambda r: r.model_copy(update={"state": "ready"}))
    page, cursor = sessions.list(limit=2)
    assert [r.session_id for r in page] == ["s-a", "s-b"] and cursor == "s-b"
    page, cursor = sessions.list(limit=2, cursor=cursor)
    assert [r.session_id for r in page] == ["s-c"] and cursor is None
    page, _ = sessions.list(state="ready")
    assert [r.session_id for r in page] == ["s-b"]
    with pytest.raises(InvalidInput):
        sessions.list(limit=0)
    assert SessionStore(sessions.store, "othertenant").list() == ([], None)

    # generated ids sort newest first
    now = [1_700_000_000.0]
    monkeypatch.setattr(keys, "time", SimpleNamespace(time=lambda: now[0]))  # only the id clock
    older = sessions.create(new_session_id()).session_id
    now[0] += 1
    newer = sessions.create(new_session_id()).session_id
    monkeypatch.undo()
    ids = [r.session_id for r in sessions.list(limit=100)[0]]
    assert ids.index(newer) < ids.index(older)


def test_delete_all_removes_everything_and_is_idempotent(sessions, store):
    sessions.create("doomed")
    sessions.create("kept")
    for sid in ("doomed", "kept"):
        journal = SessionJournal(store, TENANT, sid)
        journal.append("add_text", {"text": "car"})
        journal.append("propagate", {"start_frame_index": 0, "direction": "forward", "max_frames": 4})
        CheckpointStore(store, TENANT, sid).save(1, b"state", {"model_id": "tiny"})
        store.put(keys.session_masks_key(TENANT, sid, 3), b"{}")
        for i in range(12):
            store.put(keys.session_frame_key(TENANT, sid, i), b"jpg%d" % i, "image/jpeg")
    prefix = keys.session_prefix(TENANT, "doomed")
    before = all_keys(store, prefix)
    assert len(before) == 1 + 2 + 2 + 1 + 12

    assert sessions.delete_all("doomed") == len(before)
    assert all_keys(store, prefix) == []
    with pytest.raises(NotFound):
        store.head(session_index_key(TENANT, "doomed"))
    with pytest.raises(NotFound) as exc:
        sessions.get("doomed")
    assert exc.value.code == "session_not_found"
    assert [r.session_id for r in sessions.list()[0]] == ["kept"]
    assert SessionJournal(store, TENANT, "doomed").entries() == []

    assert sessions.delete_all("doomed") == 0  # idempotent
    assert sessions.delete_all("never-existed") == 0
    assert len(all_keys(store, keys.session_prefix(TENANT, "kept"))) == len(before)  # the neighbour is intact
    assert len(SessionJournal(store, TENANT, "kept").entries()) == 2


# -- journal ---------------------------------------------------------------------------------------


def test_journal_appends_in_order(store):
    journal = SessionJournal(store, TENANT, "j1")
    assert journal.last_seq() == -1 and journal.entries() == []
    ops = [
        ("add_text", {"text": "person in red", "frame_index": 0}),
        ("add_clicks", {"frame_index": 3, "obj_id": 1, "points": [[10.5, 20.0]], "labels": [1], "box": None}),
        ("add_mask", {"frame_index": 4, "obj_id": 2, "mask": {"size": [48, 64], "counts": "PPYo0"}}),
        ("propagate", {"start_frame_index": 0, "direction": "forward", "max_frames": 8}),
        ("remove_object", {"obj_id": 2}),
    ]
    written = [journal.append(op, args, request_id=f"req-{i}") for i, (op, args) in enumerate(ops)]
    assert [e.seq for e in written] == [0, 1, 2, 3, 4]
    entries = SessionJournal(store, TENANT, "j1").entries()  # a fresh instance sees the same
    assert [(e.seq, e.op, e.args, e.request_id) for e in entries] == [
        (i, op, args, f"req-{i}") for i, (op, args) in enumerate(ops)
    ]
    assert SessionJournal(store, TENANT, "j1").last_seq() == 4
    raw = json.loads(store.get(keys.session_journal_key(TENANT, "j1", 1)).data)
    assert raw["op"] == "add_clicks" and raw["args"]["points"] == [[10.5, 20.0]]
    assert [e.seq for e in journal.entries(after_seq=2)] == [3, 4]
    assert [e.op for e in journal.tail(3)] == ["remove_object"]
    assert journal.entries(after_seq=4) == []


def test_concurrent_appends_are_gap_free_and_lossless(store):
    """Writers on separate instances (as separate processes would be) race for every seq."""
    writers, each = 6, 5
    barrier = threading.Barrier(writers)

    def writer(w: int) -> list[int]:
        journal = SessionJournal(store, TENANT, "crowd")
        barrier.wait(timeout=30)
        return [journal.append("add_clicks", {"writer": w, "i": i}, request_id=f"{w}-{i}").seq for i in range(each)]

    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        got = list(pool.map(writer, range(writers)))
    entries = SessionJournal(store, TENANT, "crowd").entries()
    assert [e.seq for e in entries] == list(range(writers * each))
    assert sorted((e.args["writer"], e.args["i"]) for e in entries) == [
        (w, i) for w in range(writers) for i in range(each)
    ]
    assert sorted(s for seqs in got for s in seqs) == list(range(writers * each))
    for w, seqs in enumerate(got):  # each writer's own entries are in its own order
        assert seqs == sorted(seqs)
        assert [entries[s].args["i"] for s in seqs] == list(range(each))
        assert {entries[s].args["writer"] for s in seqs} == {w}


def test_shared_instance_concurrent_appends(store):
    journal = SessionJournal(store, TENANT, "shared")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        seqs = list(pool.map(lambda i: journal.append("add_text", {"text": f"t{i}"}).seq, range(12)))
    assert sorted(seqs) == list(range(12))
    assert sorted(e.args["text"] for e in journal.entries()) == sorted(f"t{i}" for i in range(12))


def test_expected_seq_clash_and_gap_are_conflicts(store):
    owner = SessionJournal(store, TENANT, "exp")
    zombie = SessionJournal(store, TENANT, "exp")
    assert owner.append("add_text", {"text": "a"}, expected_seq=0).seq == 0
    assert zombie.append("add_text", {"text": "b"}, expected_seq=1).seq == 1
    with pytest.raises(Conflict) as exc:
        owner.append("add_text", {"text": "c"}, expected_seq=1)
    assert exc.value.code == "journal_conflict"
    with pytest.raises(Conflict) as exc:
        owner.append("add_text", {"text": "gap"}, expected_seq=5)
    assert exc.value.code == "journal_conflict"
    assert owner.append("add_text", {"text": "c"}, expected_seq=2).seq == 2
    assert [e.args["text"] for e in owner.entries()] == ["a", "b", "c"]
    assert owner.append("reset").seq == 3  # without expected_seq: the next free one


def test_journal_lost_response_is_recognised(store):
    flaky = LostResponseStore(store, lose=1)
    journal = SessionJournal(flaky, TENANT, "lostj")
    entry = journal.append("add_text", {"text": "once"})
    assert entry.seq == 0
    assert journal.append("add_text", {"text": "twice"}).seq == 1
    assert [e.args["text"] for e in SessionJournal(store, TENANT, "lostj").entries()] == ["once", "twice"]
    flaky.lose = 1
    assert journal.append("reset", expected_seq=2).seq == 2  # not a journal_conflict with itself


def test_since_reset_and_rebuild_plan(store):
    journal = SessionJournal(store, TENANT, "replay")
    assert journal.rebuild_plan(None).entries == [] and journal.rebuild_plan(None).last_seq == -1
    for op, args in [
        ("add_text", {"text": "car"}),                                         # 0
        ("propagate", {"start_frame_index": 0, "direction": "forward"}),       # 1
        ("reset", {}),                                                         # 2
        ("add_clicks", {"frame_index": 1, "obj_id": 1, "points": [[1, 2]], "labels": [1]}),  # 3
        ("propagate", {"start_frame_index": 1, "direction": "both"}),          # 4
        ("remove_object", {"obj_id": 1}),                                      # 5
    ]:
        journal.append(op, args)
    entries = journal.entries()
    assert [e.seq for e in since_reset(entries)] == [3, 4, 5]
    assert [e.seq for e in SessionJournal.since_reset(list(reversed(entries)))] == [3, 4, 5]
    assert [e.seq for e in since_reset(entries[:2])] == [0, 1]
    assert since_reset(entries[:3]) == []

    plan = journal.rebuild_plan(None)
    assert plan.checkpoint_seq is None and [e.seq for e in plan.entries] == [3, 4, 5] and plan.last_seq == 5
    plan = journal.rebuild_plan(3)  # checkpoint after the reset: load it, replay the tail
    assert plan.checkpoint_seq == 3 and [e.seq for e in plan.entries] == [4, 5]
    plan = journal.rebuild_plan(1)  # a reset after the checkpoint: the checkpoint is useless
    assert plan.checkpoint_seq is None and [e.seq for e in plan.entries] == [3, 4, 5]
    plan = journal.rebuild_plan(5)
    assert plan.checkpoint_seq == 5 and plan.entries == [] and plan.last_seq == 5


def test_journal_rejects_bad_entries(store):
    journal = SessionJournal(store, TENANT, "bad")
    with pytest.raises(InvalidInput) as exc:
        journal.append("add_mask", {"mask": {"counts": "x" * (300 * 1024)}})
    assert exc.value.code == "journal_entry_too_large"
    with pytest.raises(InvalidInput) as exc:
        journal.append("explode", {})
    assert exc.value.code == "invalid_journal_op"
    for args in ({"x": float("nan")}, {"x": object()}, {"x": b"bytes"}):
        with pytest.raises(InvalidInput) as exc:
            journal.append("add_text", args)
        assert exc.value.code == "invalid_journal_entry"
    assert journal.last_seq() == -1 and all_keys(store, keys.session_prefix(TENANT, "bad")) == []
    small = journal.append("add_mask", {"mask": {"counts": "x" * (200 * 1024)}})  # under the limit
    assert small.seq == 0 and isinstance(JournalEntry.from_bytes(small.to_bytes()), JournalEntry)


# -- checkpoints -----------------------------------------------------------------------------------


HEADER = {"transformers": "5.0.0", "model_id": "tiny", "dtype": "float32"}


def test_checkpoint_save_latest_prune(store):
    ckpts = CheckpointStore(store, TENANT, "ck")
    assert ckpts.latest() is None and ckpts.seqs() == []
    for seq in (4, 9, 15):
        header = ckpts.save(seq, b"pickle-%d" % seq * 100, HEADER)
        assert header["seq"] == seq and header["size"] == len(b"pickle-%d" % seq * 100)
        assert header["format"] == 1 and header["model_id"] == "tiny" and len(header["sha256"]) == 64
    assert ckpts.seqs() == [15, 9, 4]
    assert ckpts.latest() == (15, b"pickle-15" * 100)
    stored = json.loads(store.get(checkpoint_header_key(TENANT, "ck", 15)).data)
    assert stored == ckpts.header(15)
    assert store.get(checkpoint_data_key(TENANT, "ck", 15)).data == b"pickle-15" * 100
    assert checkpoint_data_key(TENANT, "ck", 15).endswith("/sessions/ck/checkpoints/0000000015.pt")

    assert ckpts.prune(keep=2) == [4]
    assert ckpts.seqs() == [15, 9]
    assert all_keys(store, keys.session_prefix(TENANT, "ck") + "checkpoints/") == [
        checkpoint_header_key(TENANT, "ck", 9), checkpoint_data_key(TENANT, "ck", 9),
        checkpoint_header_key(TENANT, "ck", 15), checkpoint_data_key(TENANT, "ck", 15),
    ]
    assert ckpts.prune(keep=2) == []
    with pytest.raises(NotFound) as exc:
        ckpts.header(4)
    assert exc.value.code == "checkpoint_not_found"
    with pytest.raises(InvalidInput) as exc:
        ckpts.save(20, b"x", {"sha256": "forged"})
    assert exc.value.code == "invalid_checkpoint_header"
    with pytest.raises(InvalidInput):
        ckpts.save(-1, b"x", {})


def test_corrupted_checkpoint_falls_back_to_older(store, caplog):
    ckpts = CheckpointStore(store, TENANT, "corrupt")
    ckpts.save(3, b"good-3", HEADER)
    ckpts.save(7, b"good-7", HEADER)
    store.put(checkpoint_data_key(TENANT, "corrupt", 7), b"evil-7")  # same size, other bytes
    with caplog.at_level("WARNING", logger="serve_app.sessions"):
        assert ckpts.latest() == (3, b"good-3")
    assert "checkpoint 7" in caplog.text and "sha256" in caplog.text

    store.delete(checkpoint_data_key(TENANT, "corrupt", 3))  # data gone too: nothing usable
    assert ckpts.latest() is None
    store.put(checkpoint_header_key(TENANT, "corrupt", 3), b"{not json")
    assert ckpts.latest() is None


def test_checkpoint_header_not_accepted_is_skipped(store):
    ckpts = CheckpointStore(store, TENANT, "versions")
    ckpts.save(2, b"old-model", {**HEADER, "transformers": "4.99.0"})
    ckpts.save(5, b"current", HEADER)
    ckpts.save(8, b"other-model", {**HEADER, "model_id": "facebook/sam3"})
    same_runtime = lambda h: h.get("transformers") == "5.0.0" and h.get("model_id") == "tiny"  # noqa: E731
    assert ckpts.latest(same_runtime) == (5, b"current")
    assert ckpts.latest(lambda h: h["transformers"] == "4.99.0") == (2, b"old-model")
    assert ckpts.latest(lambda h: h["missing_field"]) is None  # a raising accept() rejects
    assert ckpts.latest(lambda h: False) is None


def test_uncommitted_checkpoint_is_invisible_and_pruned_only_when_old(store):
    ckpts = CheckpointStore(store, TENANT, "partial")
    store.put(checkpoint_data_key(TENANT, "partial", 1), b"crashed before its header")
    ckpts.save(5, b"five", HEADER)
    ckpts.save(6, b"six", HEADER)
    store.put(checkpoint_data_key(TENANT, "partial", 9), b"save in progress")
    assert ckpts.latest() == (6, b"six") and ckpts.seqs() == [6, 5]
    assert ckpts.prune(keep=1) == [1, 5]
    assert all_keys(store, keys.session_prefix(TENANT, "partial") + "checkpoints/") == [
        checkpoint_header_key(TENANT, "partial", 6), checkpoint_data_key(TENANT, "partial", 6),
        checkpoint_data_key(TENANT, "partial", 9),
    ]
