"""Config control: versions that apply from the next unplanned window, refusals naming the
field, a history that outlives a restart, and what-if runs that touch nothing."""

from __future__ import annotations

import numpy as np
import pytest

from packer.config import ConfigError
from packer.contract.cursor import Cursor
from service.job import ConfigConflict, VersionMismatch
from service.job.config_control import ConfigControl
from service.settings import ServiceSettings
from service.state import StateStore
from tests.service.service_testkit import SMALL_CONFIG


def _control(index, state: StateStore | None = None, config=SMALL_CONFIG) -> ConfigControl:
    return ConfigControl(
        index, config, state or StateStore(None), dataset="sample", settings=ServiceSettings()
    )


def test_a_change_applies_from_the_first_unplanned_window(sample_index):
    control = _control(sample_index)
    control.planners.plan(Cursor(0, 1, 0, 0))
    point = control.change_point()
    entry, changed = control.update_config({"max_images_per_seq": 2, "pack_window": 8})
    assert changed == ["max_images_per_seq", "pack_window"]
    assert (entry.version, entry.epoch, entry.window) == (2, *point)
    assert control.current is entry and control.history.latest is entry


def test_an_unchanged_config_keeps_its_version(sample_index):
    control = _control(sample_index)
    entry, changed = control.update_config({"seq_len": SMALL_CONFIG.seq_len})
    assert (entry.version, changed) == (1, [])


@pytest.mark.parametrize(("field", "value"), [("patch_size", 8), ("seq_len", 256)])
def test_schema_fields_cannot_change_while_running(sample_index, field, value):
    control = _control(sample_index)
    with pytest.raises(ConfigConflict) as caught:
        control.update_config({field: value, "pack_window": 8})
    assert caught.value.field == field and "Arrow schema" in caught.value.message
    assert control.current.version == 1


def test_a_stale_expected_version_is_refused(sample_index):
    control = _control(sample_index)
    control.update_config({"pack_window": 8}, expected_version=1)
    with pytest.raises(VersionMismatch) as caught:
        control.update_config({"pack_window": 4}, expected_version=1)
    assert caught.value.current == 2


def test_a_batch_too_large_for_the_service_is_refused_naming_batch_size(sample_index):
    control = _control(sample_index)
    with pytest.raises(ConfigError) as caught:
        control.update_config({"batch_size": 100_000})
    assert caught.value.field == "batch_size" and "use at most" in caught.value.message


def test_the_history_outlives_a_restart_and_the_command_line_cannot_rewrite_it(
    sample_index, tmp_path
):
    first = _control(sample_index, StateStore(tmp_path))
    first.planners.plan(Cursor(0, 1, 0, 0))  # version 1 planned a window: it stays
    first.update_config({"max_images_per_seq": 3})
    restarted = _control(
        sample_index, StateStore(tmp_path), config=SMALL_CONFIG.replace(pack_window=4)
    )
    assert restarted.current.version == 2
    assert restarted.current.config.max_images_per_seq == 3
    assert restarted.history.entries[0].config == SMALL_CONFIG
    assert restarted.change_point() == first.change_point()


def test_a_change_before_anything_was_planned_replaces_the_unused_version(sample_index):
    control = _control(sample_index)
    entry, _ = control.update_config({"max_images_per_seq": 3})
    assert [e.version for e in control.history.entries] == [entry.version] == [2]


def test_a_state_dir_of_another_dataset_is_refused(sample_index, tmp_path):
    _control(sample_index, StateStore(tmp_path))
    other = sample_index.view(np.arange(sample_index.num_rows - 1))
    with pytest.raises(ValueError, match="another dataset"):
        _control(other, StateStore(tmp_path))


def test_simulate_compares_with_the_current_config_and_changes_nothing(sample_index):
    control = _control(sample_index)
    report = control.simulate({"max_images_per_seq": 1}, sample_size=20)
    assert report["sample_size"] == 20 and report["baseline_config_version"] == 1
    assert report["stats"]["images_per_sequence_hist"] == {"1": 20}
    assert control.current.version == 1 and control.change_point() == (0, 0)
    with pytest.raises(ConfigError) as caught:
        control.simulate({}, sample_size=0)
    assert caught.value.field == "sample_size"
