"""WebDataset sources: members grouped by key, .cls labels, byte ranges inside shards."""

from __future__ import annotations

from packer.sample_data import write_webdataset_shards
from packer.sources import open_source
from tests.packer import image_cases as cases
from tests.packer.sources.source_cases import bytes_by_id, write_tar


def test_webdataset_groups_members_by_key_and_reads_cls_labels(tmp_path):
    jpg, png = cases.photo_jpeg(40, 30), cases.strip_png(5, 7)
    write_tar(
        tmp_path / "shard-a.tar",
        {
            "0001.jpg": jpg,
            "0001.cls": b"3\n",
            "sub/0002.png": png,
            "sub/0002.cls": b"1",
            "0003.jpg": jpg,  # no .cls: label -1
            "0003.json": b"{}",
            "0004.seg.png": png,  # "seg.png" is not an image extension
            "0005.png": png,  # jpg preferred over png for the same key
            "0005.jpg": jpg,
        },
    )
    source = open_source(str(tmp_path))
    assert source.kind == "webdataset"
    records = {r.image_id: r for r in source.records()}
    assert sorted(records) == [
        "shard-a.tar/0001",
        "shard-a.tar/0003",
        "shard-a.tar/0005",
        "shard-a.tar/sub/0002",
    ]
    assert records["shard-a.tar/0001"].label == 3
    assert records["shard-a.tar/sub/0002"].label == 1
    assert records["shard-a.tar/0003"].label == -1
    assert source.class_names == ["0", "1", "2", "3"]
    data = bytes_by_id(source)
    assert data["shard-a.tar/0001"] == jpg
    assert data["shard-a.tar/sub/0002"] == png
    assert data["shard-a.tar/0005"] == jpg
    assert records["shard-a.tar/0001"].length == len(jpg)


def test_webdataset_from_converted_folder_has_the_same_images_and_labels(folder, tmp_path):
    shards = write_webdataset_shards(folder, tmp_path / "wds", images_per_shard=5)
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    source = open_source(str(tmp_path / "wds"))
    folder_source = open_source(str(folder))
    by_content = {data: image_id for image_id, data in bytes_by_id(folder_source).items()}
    labels = {r.image_id: r.label for r in folder_source.records()}
    records = {r.image_id: r for r in source.records()}
    for image_id, data in bytes_by_id(source).items():
        original = by_content[data]
        assert records[image_id].label == labels[original]
    # A single shard file is a source too.
    assert len(open_source(str(shards[0])).records()) == 5
