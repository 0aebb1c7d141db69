"""run_dir/pretrain.png: drawn from the step records and the /stats samples."""

from __future__ import annotations

from pathlib import Path

from deploy.pretrain.plot import write_plot


def test_plot_is_a_png_of_loss_accuracy_and_efficiency(tmp_path: Path) -> None:
    records = {
        s: {
            "step": s,
            "loss": 2.0 / s,
            "accuracy": 0.05 * s,
            "pad_fraction": 0.02 * (s % 3),
            "config_version": 1 + s // 6,
        }
        for s in range(1, 11)
    }
    samples = [
        {"step": s, "packing_efficiency": 0.97, "delivered_efficiency": 0.96} for s in (2, 6, 10)
    ]
    evals = {s: {"step": s, "eval_loss": 1.0 / s, "eval_accuracy": 0.1 * s} for s in (5, 10)}
    path = write_plot(tmp_path, records, samples, restart_steps=[5], evals=evals)
    assert path == tmp_path / "pretrain.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_plot(tmp_path / "none", {}, []) is None
    # Without validation records (--val-fraction 0) it draws the rest.
    assert write_plot(tmp_path, records, samples) == path
