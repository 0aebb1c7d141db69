"""The GPU side in one go: `bench/gpu_check.sh OUT_DIR` (or `make gpu-check`).

    .venv/bin/python bench/gpu_check.py --out runs/gpu-check            # CUDA host
    .venv/bin/python bench/gpu_check.py --out /tmp/g --device cpu --dry  # exercise it

Five parts, each recorded even when another fails:
1. trainer_tests: pytest tests/trainer with NAVIT_TEST_DEVICE set to the device
   (tests/trainer/test_model_on_device.py follows it; the other trainer tests pin cpu);
2. flex_vs_sdpa: flex attention (trainer.flex_mask.flex_attend, compiled on CUDA) against SDPA
   with the dense block-diagonal mask, on masks of real packed sequences: relative error
   against float32 SDPA, forward and forward+backward time, the block mask's sparsity;
3. train_steps: bf16 training steps of the s16 and b16 models on packed batches:
   steps/s, useful tokens/s, peak memory;
4. layouts: bench/bench_train.py --device (packed vs one image per row vs vit-pytorch's
   NaViT, useful tokens/s), its JSON kept whole;
5. data_wait: `navit serve` on a sample set and `navit train` reading it over Flight on
   the device: the share of step time spent waiting for the next batch.

Writes OUT/gpu_check.json and OUT/gpu_check.md. Exits 2 with one line when the device is
cuda and no CUDA device is present, 1 when any part failed. `--dry` shrinks every part
(tiny model, few steps, short sequences) so that the script runs on a CPU in minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train, run as a script

import bench_train  # noqa: E402

from trainer.flex_mask import flex_attend, flex_image_block_mask  # noqa: E402
from trainer.model import (  # noqa: E402
    MODEL_SIZES,
    NaViT,
    NaViTConfig,
    dense_image_mask,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry", action="store_true", help="small sizes, for a CPU run")
    parser.add_argument(
        "--parts",
        default="trainer_tests,flex_vs_sdpa,train_steps,layouts,data_wait",
        help="comma-separated subset of the parts",
    )
    return parser.parse_args()


# ---------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall milliseconds of fn() after warmup calls, synchronised on CUDA."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        begin = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - begin)
    return round(1e3 * statistics.median(times), 3)


def _steps_args(seq_len: int, sequences: int, warmup: int, steps: int) -> argparse.Namespace:
    """The namespace bench_train.packed_steps reads."""
    return argparse.Namespace(
        patch_size=16, seq_len=seq_len, seed=0, warmup=warmup, steps=steps, sequences=sequences
    )


# ---------------------------------------------------------------------------------------
# The parts


def trainer_tests(device: torch.device, dry: bool, out: Path) -> dict[str, Any]:
    files = ["tests/trainer/test_model_on_device.py"] if dry else ["tests/trainer"]
    env = {**os.environ, "NAVIT_TEST_DEVICE": str(device), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    begin = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    (out / "trainer_tests.log").write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {
        "command": f"NAVIT_TEST_DEVICE={device} " + " ".join(command[1:]),
        "passed": done.returncode == 0,
        "summary": lines[-1] if lines else "",
        "seconds": round(time.perf_counter() - begin, 1),
        "log": "trainer_tests.log",
    }


def flex_vs_sdpa(device: torch.device, dry: bool) -> dict[str, Any]:
    """Flex attention against SDPA with the dense mask, on segment ids of packed batches."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    heads, head_dim = (2, 16) if dry else (12, 64)
    cases = [(1024, 1)] if dry else [(1024, 32), (4096, 8), (8192, 4)]
    rows = []
    for seq_len, sequences in cases:
        (batch,) = bench_train.packed_steps(_steps_args(seq_len, sequences, 0, 1))
        seg = torch.from_numpy(batch.segment_ids).to(device)
        block_mask = flex_image_block_mask(seg)
        dense = dense_image_mask(seg)
        generator = torch.Generator().manual_seed(0)
        shape = (sequences, heads, seq_len, head_dim)
        q32, k32, v32 = (torch.randn(shape, generator=generator).to(device) for _ in range(3))
        reference = F.scaled_dot_product_attention(q32, k32, v32, attn_mask=dense)
        q, k, v = (t.to(dtype).requires_grad_(cuda) for t in (q32, k32, v32))

        def run_flex(q=q, k=k, v=v, block_mask=block_mask) -> torch.Tensor:
            return flex_attend(q, k, v, block_mask)

        def run_sdpa(q=q, k=k, v=v, dense=dense) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=dense)

        def relative(out: torch.Tensor, reference=reference) -> float:
            out = out.detach().float()
            return float((out - reference).norm() / reference.norm())

        row: dict[str, Any] = {
            "seq_len": seq_len,
            "sequences": sequences,
            "heads": heads,
            "head_dim": head_dim,
            "dtype": str(dtype).removeprefix("torch."),
            "images": batch.num_images,
            "block_sparsity_percent": round(float(block_mask.sparsity()), 1),
            "flex_rel_error_vs_fp32_sdpa": relative(run_flex()),
            "sdpa_rel_error_vs_fp32_sdpa": relative(run_sdpa()),
        }
        warmup, iters = (1, 3) if dry else (5, 20)
        row["flex_forward_ms"] = _median_ms(run_flex, device, warmup, iters)
        row["sdpa_forward_ms"] = _median_ms(run_sdpa, device, warmup, iters)
        row["forward_speedup"] = round(row["sdpa_forward_ms"] / row["flex_forward_ms"], 2)
        if cuda:  # torch has no CPU backward for flex attention
            grad = torch.randn_like(q)
            row["flex_fwd_bwd_ms"] = _median_ms(
                lambda grad=grad: run_flex().backward(grad), device, warmup, iters
            )
            row["sdpa_fwd_bwd_ms"] = _median_ms(
                lambda grad=grad: run_sdpa().backward(grad), device, warmup, iters
            )
            row["fwd_bwd_speedup"] = round(row["sdpa_fwd_bwd_ms"] / row["flex_fwd_bwd_ms"], 2)
        rows.append(row)
    # bf16 against fp32 differs by rounding; flex must not differ from SDPA by more.
    worst = max(r["flex_rel_error_vs_fp32_sdpa"] for r in rows)
    bound = max(2 * max(r["sdpa_rel_error_vs_fp32_sdpa"] for r in rows), 1e-4)
    return {"cases": rows, "passed": worst <= bound, "rel_error_bound": bound}


def train_steps(device: torch.device, dry: bool) -> dict[str, Any]:
    """bf16 (on CUDA) AdamW steps of s16 and b16 on packed batches, one model at a time."""
    cuda = device.type == "cuda"
    models = {"tiny": MODEL_SIZES["tiny"]} if dry else {m: MODEL_SIZES[m] for m in ("s16", "b16")}
    seq_len, sequences, warmup, steps = (1024, 1, 1, 2) if dry else (1024, 32, 5, 20)
    batches = bench_train.packed_steps(_steps_args(seq_len, sequences, warmup, steps))
    rows = {}
    for name, sizes in models.items():
        torch.manual_seed(0)
        model = NaViT(NaViTConfig(num_classes=bench_train.NUM_CLASSES, **sizes)).to(device)
        step = bench_train.train_step_for(model, device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for batch in batches[:warmup]:  # compiles flex attention on CUDA
            step(batch)
        _sync(device)
        begin = time.perf_counter()
        for batch in batches[warmup:]:
            step(batch)
        _sync(device)
        seconds = time.perf_counter() - begin
        useful = sum(b.real_tokens for b in batches[warmup:])
        rows[name] = {
            "parameters_m": round(model.num_parameters() / 1e6, 1),
            "steps_per_s": round(steps / seconds, 3),
            "useful_tokens_per_s": round(useful / seconds, 1),
            "images_per_s": round(sum(b.num_images for b in batches[warmup:]) / seconds, 1),
            "peak_memory_gib": (
                round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None
            ),
        }
        del model, step
        if cuda:
            torch.cuda.empty_cache()
    return {
        "seq_len": seq_len,
        "sequences_per_step": sequences,
        "timed_steps": steps,
        "autocast": "bf16" if cuda else "off (fp32 on CPU)",
        "models": rows,
        "passed": True,
    }


def layouts(device: torch.device, dry: bool, out: Path) -> dict[str, Any]:
    """bench_train.py on the device; vit-pytorch's NaViT only where it is installed."""
    command = [sys.executable, "bench/bench_train.py", "--device", str(device)]
    if dry:
        command += ["--sequences", "1", "--warmup", "1", "--steps", "1"]
        command += ["--width", "64", "--depth", "1", "--heads", "2"]
    else:
        command += ["--model", "b16", "--sequences", "16", "--warmup", "3", "--steps", "20"]
    try:
        bench_train.load_vit_pytorch_navit()
    except ImportError:
        command.append("--skip-vit-pytorch")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    (out / "layouts.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return {"command": " ".join(command[1:]), "passed": False, "log": "layouts.log"}
    report = json.loads(done.stdout[done.stdout.index("\n{") + 1 :])
    return {
        "command": " ".join(command[1:]),
        "passed": True,
        "useful_tokens_per_s": {k: v["useful_tokens_per_s"] for k, v in report["results"].items()},
        "vs_padded": report["useful_tokens_per_s_vs_padded"],
        "vit_pytorch": "--skip-vit-pytorch" not in command,
        "report": report,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _navit() -> list[str]:
    """The `navit` command of this environment (its console script), run from the repo."""
    script = Path(sys.executable).parent / "navit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "deploy.cli"]


def _wait_ready(url: str, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"navit serve exited with {server.returncode} before ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {seconds:.0f} s")


def data_wait(device: torch.device, dry: bool, out: Path) -> dict[str, Any]:
    """navit serve + navit train over Flight on the device: the data-wait share of a step."""
    model, steps, skip = ("tiny", 12, 2) if dry else ("b16", 200, 20)
    config = ["--set", "seq_len=256", "--set", "max_res=128"] if dry else []
    config += ["--set", f"batch_size={4 if dry else 32}"]
    api_port, flight_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        images = "200" if dry else "2000"
        subprocess.run(
            [*_navit(), "sample-data", str(work / "data"), "--images", images, "--seed", "0"],
            cwd=ROOT, env=env, check=True, capture_output=True,
        )  # fmt: skip
        serve_log = (out / "data_wait_serve.log").open("w")
        server = subprocess.Popen(
            [*_navit(), "serve", str(work / "data"), "--host", "127.0.0.1",
             "--api-port", str(api_port), "--flight-port", str(flight_port),
             "--state-dir", str(work / "state"), *config],
            cwd=ROOT, env=env, stdout=serve_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_ready(f"http://127.0.0.1:{api_port}/readyz", server, 300)
            train = subprocess.run(
                [*_navit(), "train", "--source", f"grpc://127.0.0.1:{flight_port}",
                 "--model", model, "--steps", str(steps), "--device", str(device),
                 "--ckpt", str(work / "train"), "--ckpt-every", "0", "--no-progress",
                 "--num-classes", "1000"],
                cwd=ROOT, env=env, capture_output=True, text=True,
            )  # fmt: skip
            (out / "data_wait_train.log").write_text(train.stdout + train.stderr)
            if train.returncode != 0:
                return {"passed": False, "log": "data_wait_train.log"}
            records = [
                json.loads(line)
                for line in (work / "train" / "metrics.jsonl").read_text().splitlines()
                if line.strip()
            ]
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
            serve_log.close()
    timed = [r for r in records if "data_wait_s" in r][skip:]
    wait = sum(r["data_wait_s"] for r in timed)
    total = sum(r["step_s"] for r in timed)
    return {
        "model": model,
        "timed_steps": len(timed),
        "data_wait_share": round(wait / total, 4),
        "images_per_s": round(sum(r["images_per_s"] * r["step_s"] for r in timed) / total, 1),
        "step_s_median": round(statistics.median(r["step_s"] for r in timed), 4),
        "service_config": " ".join(config),
        "passed": True,
    }


# ---------------------------------------------------------------------------------------


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check on {report['device_name']} ({report['device']})", ""]
    for name, part in report["parts"].items():
        state = "passed" if part.get("passed") else "FAILED"
        lines.append(f"## {name}: {state}")
        lines.append("")
        body = {k: v for k, v in part.items() if k not in ("report", "traceback")}
        lines += ["```json", json.dumps(body, indent=2), "```", ""]
        if "traceback" in part:
            lines += ["```", part["traceback"], "```", ""]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
        ),
        "torch": torch.__version__,
        "dry": args.dry,
        "parts": {},
    }
    parts = {
        "trainer_tests": lambda: trainer_tests(device, args.dry, args.out),
        "flex_vs_sdpa": lambda: flex_vs_sdpa(device, args.dry),
        "train_steps": lambda: train_steps(device, args.dry),
        "layouts": lambda: layouts(device, args.dry, args.out),
        "data_wait": lambda: data_wait(device, args.dry, args.out),
    }
    for name in args.parts.split(","):
        print(f"gpu_check: {name} ...", flush=True)
        begin = time.perf_counter()
        try:
            result = parts[name]()
        except Exception as error:  # one part failing must not lose the others' figures
            result = {"passed": False, "error": repr(error), "traceback": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - begin, 1)
        report["parts"][name] = result
        print(f"gpu_check: {name} {'passed' if result['passed'] else 'FAILED'}", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        (args.out / "gpu_check.md").write_text(_markdown(report))
    failed = [n for n, p in report["parts"].items() if not p["passed"]]
    print(f"gpu_check: results in {args.out}/gpu_check.json and gpu_check.md")
    if failed:
        print(f"gpu_check: failed parts: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
