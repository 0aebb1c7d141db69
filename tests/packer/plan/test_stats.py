"""PackingStats: the notes and skipped files travel with the counts."""

from __future__ import annotations

from packer.plan.stats import PackingStats


def test_notes_and_skipped_files_merge_and_show_in_to_dict():
    first, second = PackingStats(), PackingStats()
    first.notes.update(["corrupt_metadata", "corrupt_metadata"])
    second.notes.update(["truncated_read"])
    first.add_skipped({".txt": 3})
    second.add_skipped({".tar": 1, ".txt": 1})
    first.merge(second)
    stats = first.to_dict()
    assert stats["notes"] == {"corrupt_metadata": 2, "truncated_read": 1}
    assert stats["skipped_by_extension"] == {".tar": 1, ".txt": 4}
