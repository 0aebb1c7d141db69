"""The reject ledger: fill-time rejects apply from the first epoch not yet planned."""

from __future__ import annotations

import pyarrow as pa

from packer.config import PackingConfig
from packer.index.cache import load_index
from packer.index.image_index import header_rejects
from packer.index.reject_ledger import RejectLedger
from packer.plan.history import ConfigHistory
from packer.plan.planner import EpochPlanner
from packer.synthetic import imagenet_like_index
from tests.packer import image_cases as cases

CONFIG = PackingConfig(seq_len=256, max_res=192, batch_size=4, pack_window=32)


def _ids(index: pa.Table, epoch: int) -> list[list[str]]:
    planner = EpochPlanner(index, ConfigHistory.start(CONFIG), epoch)
    return [plan.image_ids for plan in planner.iter_plans()]


def test_an_entry_changes_no_epoch_before_its_effective_one_and_leaves_the_image_out_after():
    index = imagenet_like_index(120, seed=2)
    before = {epoch: _ids(index, epoch) for epoch in range(3)}
    broken = before[0][0][0]
    ledger = RejectLedger()
    assert ledger.record([(broken, "truncated", "image file is truncated")], 1) == 1
    for epoch in range(3):
        applied = ledger.apply(index, epoch)
        planned = [i for batch in _ids(applied, epoch) for i in batch]
        if epoch < 1:
            assert applied is index and _ids(applied, epoch) == before[epoch]
        else:
            assert broken not in planned and len(planned) == 119
            assert header_rejects(applied) == [(broken, "truncated", "image file is truncated")]


def test_entries_known_before_a_job_apply_to_all_its_epochs():
    index = imagenet_like_index(40, seed=3)
    ledger = RejectLedger()
    ledger.record([("synthetic/00000001.jpg", "decode_error", "bad")], effective_epoch=5)
    assert ledger.apply(index, 0, job_start=0) is index  # the job that found it
    applied = ledger.apply(index, 0, job_start=len(ledger))  # a later job
    assert [r[0] for r in header_rejects(applied)] == ["synthetic/00000001.jpg"]


def test_a_reloaded_ledger_plans_every_epoch_byte_identically(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    for i in range(12):
        (tmp_path / "data" / "a" / f"{i:02d}.jpg").write_bytes(cases.photo_jpeg(seed=i))
    index = load_index(str(tmp_path / "data"), cache_dir=tmp_path / "cache")
    ledger = RejectLedger.for_index(index)
    assert ledger.path is not None and ledger.path.parent.parent == tmp_path / "cache"
    ledger.record([("a/03.jpg", "truncated", "cut")], effective_epoch=1)
    ledger.record([("a/03.jpg", "decode_error", "again"), ("a/05.jpg", "truncated", "x")], 2)
    reloaded = RejectLedger.for_index(
        load_index(str(tmp_path / "data"), cache_dir=tmp_path / "cache")
    )
    assert reloaded.entries == ledger.entries and len(reloaded) == 2
    for epoch in range(3):
        assert _ids(reloaded.apply(index, epoch), epoch) == _ids(ledger.apply(index, epoch), epoch)
    # A changed folder is a new index: the old entries are not its.
    (tmp_path / "data" / "a" / "new.jpg").write_bytes(cases.photo_jpeg(seed=99))
    changed = load_index(str(tmp_path / "data"), cache_dir=tmp_path / "cache")
    assert len(RejectLedger.for_index(changed)) == 0
