"""The benchmark's peers (bench/peers.py) make the packed files ours makes: what lets
bench/bench_pipeline.py compare their speed at all."""

from pathlib import Path

import pytest

from bench.peers import (
    _LAID_OUT,
    _PackingCollate,
    fill_and_write_plain,
    image_patches,
    packed_batch,
)
from bench.peers import write_packed as write_peer_batch
from packer.config import PackingConfig
from packer.contract.packed_folder import batch_files, epoch_folder
from packer.fill.batch import fill_and_write
from packer.index.cache import load_index
from packer.plan.epoch import plan_epoch
from packer.plan.history import ConfigHistory
from packer.sample_data import write_sample_dataset


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    root = tmp_path_factory.mktemp("peers")
    write_sample_dataset(root, 40, seed=3)
    # Token drop on: the peers keep the planned tokens too.
    config = PackingConfig(
        seq_len=256, max_res=128, batch_size=4, token_drop="constant", drop_rate=0.25
    )
    history = ConfigHistory.start(config)
    return list(plan_epoch(load_index(str(root)), history, 0).planner.iter_plans())


def _same_files(a: Path, b: Path) -> None:
    ours, theirs = batch_files(epoch_folder(a, 0)), batch_files(epoch_folder(b, 0))
    assert [p.name for p in ours] == [p.name for p in theirs] and ours
    for mine, other in zip(ours, theirs, strict=True):
        assert mine.read_bytes() == other.read_bytes(), mine.name


def test_the_pool_and_ray_data_peers_fill_writes_our_batch_files_byte_for_byte(plans, tmp_path):
    for plan in plans:
        fill_and_write(plan, tmp_path / "ours")
        fill_and_write_plain(plan, tmp_path / "peer")
    _same_files(tmp_path / "ours", tmp_path / "peer")


def test_the_dataloader_peers_packing_collate_writes_our_batch_files_byte_for_byte(plans, tmp_path):
    collate = _PackingCollate(plans)
    for j, plan in enumerate(plans):
        fill_and_write(plan, tmp_path / "ours")
        samples = [(j, image_patches(plan, i)) for i in range(plan.num_images)]
        batch = collate(samples)
        arrays = {name: batch[name].numpy() for name in _LAID_OUT}
        write_peer_batch(
            plan, packed_batch(plan, arrays, batch["images_per_seq"]), tmp_path / "peer"
        )
    _same_files(tmp_path / "ours", tmp_path / "peer")
