"""Multi-process training and evaluation on the CPU over gloo.

The slow tests start ``torchrun`` with two processes on a free port and
compare against one process with the same global batch and seed. They train
in float32: bfloat16 rounding depends on the micro-batch's padded shape, so
the two runs would drift apart by more than floating-point noise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner
from safetensors.torch import load_file

from mdskit import distributed
from mdskit.cli import main
from mdskit.distributed import ParallelSettings, micro_batch_size
from mdskit.errors import ConfigError
from mdskit.training import MicroBatches, batch_indices

PROJECT_ROOT = Path(__file__).resolve().parents[1]

requires_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed; pip install -r requirements/deepspeed.txt")

REGISTRY = """
    schema: 1
    methods:
      tiny-sim4seg:
        backbone: {type: llava, hidden_size: 32, num_layers: 1, num_heads: 2,
                   intermediate_size: 64, vocab_size: 400, token_grid: 4, max_new_tokens: 24}
        prompt: {type: rvls2m, grid: 4, top_n: 4}
        decoder: {type: litemedsam}
        cot: {type: template}
        training: {steps: 4, batch_size: 4, lr: 3.0e-3, checkpoint_every: 2}
      tiny-odd-batch:
        backbone: {type: llava, hidden_size: 32, num_layers: 1, num_heads: 2,
                   intermediate_size: 64, vocab_size: 400, token_grid: 4, max_new_tokens: 24}
        prompt: {type: rvls2m, grid: 4, top_n: 4}
        decoder: {type: litemedsam}
        cot: {type: template}
        training: {steps: 2, batch_size: 3}
"""

# Per-step losses of the plain PyTorch loop that mmengine's runner replaced
# (tiny-sim4seg above, phantom data, --max-samples 6, seed 0, bfloat16, one thread).
PLAIN_LOOP_LOSSES = [8.291996955871582, 8.37066650390625, 7.584017753601074, 7.054090976715088]


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("registry") / "registry.yaml"
    path.write_text(textwrap.dedent(REGISTRY), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        return server.getsockname()[1]


def environment() -> dict[str, str]:
    paths = [str(PROJECT_ROOT), str(PROJECT_ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def torchrun(processes: int, registry: Path, *arguments) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "mdskit.cli",
               "--registry", str(registry), *map(str, arguments)]
    return subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=600)


def cli(registry: Path, *arguments):
    return CliRunner().invoke(main, ["--registry", str(registry), *map(str, arguments)])


# ------------------------------------------------------------------ batch split


def test_micro_batch_size_splits_evenly():
    assert micro_batch_size(8, 2, 2) == 2
    assert micro_batch_size(4, 1, 1) == 4


def test_micro_batch_size_rejects_remainder():
    with pytest.raises(ConfigError, match="global batch of 3 samples does not split into 2 processes"):
        micro_batch_size(3, 2, 1)


def test_micro_batches_cover_the_global_batch():
    """Every rank's micro-batches of one step together are the step's batch, each sample once."""
    for step in range(5):
        expected = batch_indices(step, 10, 4, seed=3)
        parts = []
        for rank in range(2):
            batches = MicroBatches(10, 4, 3, steps=5, processes=2, rank=rank, accumulation=2)
            parts += [batches[step * 2 + micro]["indices"] for micro in range(2)]
        assert sorted(index for part in parts for index in part) == sorted(expected)
        assert all(len(part) == 1 for part in parts)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ConfigError, match="strategy 'zero' is unknown"):
        ParallelSettings(strategy="zero")


def test_fsdp_on_cpu_is_accepted():
    distributed.check_strategy(ParallelSettings(strategy="fsdp"), 2, torch.device("cpu"))


def test_fsdp_float16_on_cpu_is_rejected():
    with pytest.raises(ConfigError, match="float16 training needs CUDA"):
        distributed.check_strategy(ParallelSettings(strategy="fsdp", precision="float16"), 2, torch.device("cpu"))


def test_fsdp_config_on_cpu():
    config = distributed.strategy_config(ParallelSettings(strategy="fsdp"), 2, torch.device("cpu"), 2, 1.0,
                                         unsharded=["model.decoder.image_encoder"])
    wrapper = config["model_wrapper"]
    assert config["type"] == "FSDPStrategy"
    assert wrapper["device_id"] == "cpu"
    assert wrapper["ignored_modules"] == ["model.decoder.image_encoder"]
    assert wrapper["use_orig_params"] is True


def test_fsdp_config_on_gpu_keeps_device():
    config = distributed.strategy_config(ParallelSettings(strategy="fsdp"), 2, torch.device("cuda", 0), 2, 1.0)
    assert "device_id" not in config["model_wrapper"]
    assert "ignored_modules" not in config["model_wrapper"]


def test_deepspeed_missing_names_pip_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "deepspeed" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match="needs the deepspeed package; install it with 'bash scripts/setup.sh --with deepspeed'"):
        distributed.check_strategy(ParallelSettings(strategy="deepspeed"), 2, torch.device("cpu"))


def test_deepspeed_one_process_needs_no_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    distributed.check_strategy(ParallelSettings(strategy="deepspeed"), 1, torch.device("cpu"))


@requires_deepspeed
@pytest.mark.skipif(torch.cuda.is_available(), reason="DeepSpeed picks its CUDA accelerator on a GPU machine")
def test_deepspeed_cpu_accelerator_is_accepted():
    distributed.check_strategy(ParallelSettings(strategy="deepspeed"), 2, torch.device("cpu"))


class _FakeAccelerator:
    def __init__(self, name: str) -> None:
        self.name = name

    def device_name(self) -> str:
        return self.name


@requires_deepspeed
def test_deepspeed_accelerator_mismatch_is_rejected(monkeypatch):
    import deepspeed.accelerator

    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: _FakeAccelerator("cuda"))
    with pytest.raises(ConfigError, match="accelerator is 'cuda' but training runs on 'cpu'; set DS_ACCELERATOR=cpu"):
        distributed.check_strategy(ParallelSettings(strategy="deepspeed"), 2, torch.device("cpu"))
    monkeypatch.setattr(deepspeed.accelerator, "get_accelerator", lambda: _FakeAccelerator("cpu"))
    with pytest.raises(ConfigError, match="accelerator is 'cpu' but training runs on 'cuda'; set DS_ACCELERATOR=cuda"):
        distributed.check_strategy(ParallelSettings(strategy="deepspeed"), 2, torch.device("cuda", 0))


@requires_deepspeed
def test_deepspeed_without_onebit_is_rejected(monkeypatch):
    """A DeepSpeed without the 1-bit optimizers (0.19.7 and later) fails with the version to install."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None
                        if name == "deepspeed.runtime.fp16.onebit" else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match="lacks deepspeed.runtime.fp16.onebit.*install 'deepspeed==0.19.6'"):
        distributed.check_strategy(ParallelSettings(strategy="deepspeed"), 2, torch.device("cpu"))


def test_deepspeed_config_splits_batch():
    settings = ParallelSettings(strategy="deepspeed", accumulation=2)
    config = distributed.strategy_config(settings, 2, torch.device("cpu"), 3, 1.0)
    assert config["type"] == "DeepSpeedStrategy"
    assert config["config"]["train_micro_batch_size_per_gpu"] == 3
    assert config["config"]["gradient_accumulation_steps"] == 2
    assert config["config"]["gradient_clipping"] == 1.0
    assert config["config"]["zero_optimization"] == {"stage": 2}
    wrapper = distributed.optim_wrapper_config(settings, 2, "float32", dict(type="AdamW"), 1.0)
    assert wrapper["type"] == "DeepSpeedOptimWrapper"
    assert "clip_grad" not in wrapper


def test_float16_on_cpu_is_rejected(registry, tmp_path):
    result = cli(registry, "train", "tiny-sim4seg", "--precision", "float16", "--max-samples", "2",
                 "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "float16 training needs CUDA" in result.output
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_pytorch_launcher_outside_torchrun(registry, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = cli(registry, "train", "tiny-sim4seg", "--launcher", "pytorch", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "torchrun" in result.output


# ------------------------------------------------------- gathering predictions


def _evaluate_worker(rank: int, processes: int, port: int, folder: str, count: int) -> None:
    """Run the evaluation loop of one rank with a stub prediction."""
    from mdskit import runs
    from mdskit.runs import RunSettings
    from mdskit.testing import synthetic_samples

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=processes)

    def stub_record(model, sample, strategy, settings):
        return {"id": sample.uid, "rank": rank, "predicted_diagnosis": sample.label, "intersection": 1,
                "union": 2, "predicted_area": 1, "true_area": 2}

    runs._predict_record = stub_record
    samples = synthetic_samples(count)
    results = runs._evaluate(None, samples, None, RunSettings(method="stub", out=Path(folder)), None)
    with open(Path(folder) / f"results-{rank}.json", "w", encoding="utf-8") as handle:
        json.dump([result.uid for result in results], handle)
    dist.destroy_process_group()


def test_gathered_predictions_lose_and_repeat_nothing(tmp_path):
    """Five samples over two ranks: each is predicted once and written once, in sample order."""
    count = 5
    # Forked workers inherit the imported modules, which spawned ones would import again for many seconds.
    mp.start_processes(_evaluate_worker, args=(2, free_port(), str(tmp_path), count), nprocs=2, join=True,
                       start_method="fork")
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    from mdskit.testing import synthetic_samples

    expected = [sample.uid for sample in synthetic_samples(count)]
    assert [record["id"] for record in records] == expected
    assert [record["rank"] for record in records] == [0, 1, 0, 1, 0]
    for rank in range(2):
        assert json.loads((tmp_path / f"results-{rank}.json").read_text()) == expected


# ------------------------------------------------------------ slow: real runs


@pytest.mark.slow
def test_one_process_matches_plain_loop(tmp_path, registry):
    """The runner reproduces the replaced loop's per-step losses (bfloat16, seed 0)."""
    from mdskit.runs import RunSettings, Workspace, train_only

    # The reference losses were recorded with one thread; more threads sum in another order.
    with one_thread():
        result = train_only(RunSettings(method="tiny-sim4seg", out=tmp_path, max_samples=6), Workspace.load(registry))
    losses = [step["loss"] for step in result.history]
    assert np.allclose(losses, PLAIN_LOOP_LOSSES, rtol=1e-5), losses


@contextmanager
def one_thread():
    """Run the block with one torch thread, as each torchrun process of these tests does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_and_two_processes(registry, tmp_path_factory):
    """The same run (train 4 steps, evaluate 5 test samples) with one and with two processes."""
    folder = tmp_path_factory.mktemp("parallel")
    common = ["run", "tiny-sim4seg", "--max-samples", "5", "--precision", "float32"]
    single = cli(registry, *common, "--out", folder / "one")
    assert single.exit_code == 0, single.output
    double = torchrun(2, registry, *common, "--out", folder / "two")
    assert double.returncode == 0, double.stderr[-3000:]
    return folder / "one", folder / "two", double


@pytest.mark.slow
def test_two_processes_give_same_metrics(one_and_two_processes):
    one, two, _ = one_and_two_processes
    first = json.loads((one / "metrics.json").read_text())
    second = json.loads((two / "metrics.json").read_text())
    for key in ("giou", "ciou", "dice", "accuracy", "macro_f1", "n"):
        assert second["pooled"][key] == pytest.approx(first["pooled"][key], abs=1e-6), key


def step_losses(folder: Path) -> dict[int, dict[str, float]]:
    """Return the last logged losses of each step of a run folder."""
    lines = (folder / "train-losses.jsonl").read_text().splitlines()
    return {record["step"]: record for record in map(json.loads, lines)}


@pytest.mark.slow
def test_two_processes_give_same_losses(one_and_two_processes):
    # The two runs sum gradients in another order. AdamW turns that float
    # noise in near-zero gradients into steps of about the learning rate.
    # Measured drift: about 3e-7 (relative) at step 2, 2e-4 at step 4.
    one, two, _ = one_and_two_processes
    first, second = step_losses(one), step_losses(two)
    assert sorted(second) == [1, 2, 3, 4]
    for step in first:
        for term in ("loss", "ce", "bce", "dice"):
            assert second[step][term] == pytest.approx(first[step][term], rel=1e-3), (step, term)


@pytest.mark.slow
def test_accumulation_matches_two_processes(one_and_two_processes, registry, tmp_path):
    """One process with 2 accumulation steps trains on the same micro-batches as two processes, bit for bit.

    Two processes sum their two micro-batch gradients in one all-reduce, and
    one process adds the same two in the same order, so the runs agree
    exactly: losses, weights, predictions and metrics.
    """
    _, two, _ = one_and_two_processes
    # Each torchrun process computes with one thread; more threads sum in another order.
    with one_thread():
        result = cli(registry, "run", "tiny-sim4seg", "--max-samples", "5", "--precision", "float32",
                     "--accumulate", "2", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert step_losses(tmp_path) == step_losses(two)
    weights = load_file(tmp_path / "checkpoint" / "model.safetensors")
    expected = load_file(two / "checkpoint" / "model.safetensors")
    assert sorted(weights) == sorted(expected)
    assert all(torch.equal(weights[name], expected[name]) for name in expected)
    first = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (two / "predictions.jsonl").read_text().splitlines()]
    assert [(record["text"], record["intersection"], record["union"]) for record in first] == \
        [(record["text"], record["intersection"], record["union"]) for record in second]
    assert json.loads((tmp_path / "metrics.json").read_text())["pooled"] == \
        json.loads((two / "metrics.json").read_text())["pooled"]


@pytest.mark.slow
def test_two_processes_write_each_prediction_once(one_and_two_processes):
    one, two, _ = one_and_two_processes
    first = [json.loads(line) for line in (one / "predictions.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (two / "predictions.jsonl").read_text().splitlines()]
    assert len(second) == 5
    assert [record["id"] for record in second] == [record["id"] for record in first]
    assert [record["predicted_diagnosis"] for record in second] == [record["predicted_diagnosis"] for record in first]
    # The tiny model's masks are mostly empty after 4 steps, so the
    # generated texts are the sharper check that both runs predict alike.
    assert [record["text"] for record in second] == [record["text"] for record in first]


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one(one_and_two_processes, registry, tmp_path):
    """Two processes train 2 steps; one process continues to 4 and matches the one-process run."""
    one, _, _ = one_and_two_processes
    common = ["train", "tiny-sim4seg", "--max-samples", "5", "--precision", "float32", "--out", tmp_path]
    started = torchrun(2, registry, *common, "--train-steps", "2")
    assert started.returncode == 0, started.stderr[-3000:]
    record = json.loads((tmp_path / "checkpoint" / "method.json").read_text())
    assert record["step"] == 2
    assert record["processes"] == 2

    resumed = cli(registry, *common, "--train-steps", "4")
    assert resumed.exit_code == 0, resumed.output
    assert "Trained steps 2-4" in resumed.output
    expected, losses = step_losses(one), step_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4]
    for step in expected:
        assert losses[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-3), step


@pytest.fixture(scope="module")
def fsdp_run(registry, tmp_path_factory):
    """Two processes train the one_and_two_processes configuration with FSDP."""
    folder = tmp_path_factory.mktemp("fsdp")
    result = torchrun(2, registry, "train", "tiny-sim4seg", "--max-samples", "5", "--precision", "float32",
                      "--strategy", "fsdp", "--out", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@pytest.mark.slow
def test_fsdp_losses_match_ddp(one_and_two_processes, fsdp_run):
    # Measured on two CPU processes (gloo, one thread each): the largest
    # relative difference of any term over the 4 steps was 5.4e-8.
    _, two, _ = one_and_two_processes
    expected, losses = step_losses(two), step_losses(fsdp_run)
    assert sorted(losses) == [1, 2, 3, 4]
    for step in expected:
        for term in ("loss", "ce", "bce", "dice"):
            assert np.isfinite(losses[step][term]), (step, term)
            assert losses[step][term] == pytest.approx(expected[step][term], rel=1e-5), (step, term)


@pytest.mark.slow
def test_fsdp_checkpoint_holds_whole_weights(one_and_two_processes, fsdp_run):
    """Rank 0 gathers the shards into one safetensors file with every weight of the DDP checkpoint."""

    _, two, _ = one_and_two_processes
    record = json.loads((fsdp_run / "checkpoint" / "method.json").read_text())
    assert record["step"] == 4
    assert record["processes"] == 2
    weights = load_file(fsdp_run / "checkpoint" / "model.safetensors")
    reference = load_file(two / "checkpoint" / "model.safetensors")
    assert sorted(weights) == sorted(reference)
    for name, tensor in reference.items():
        assert weights[name].shape == tensor.shape, name


@pytest.mark.slow
def test_fsdp_optimizer_state_matches_ddp(one_and_two_processes, fsdp_run):
    """Rank 0 gathers AdamW's sharded state into DDP's format: the same keys, shapes, groups and values."""
    _, two, _ = one_and_two_processes
    state = load_file(fsdp_run / "checkpoint" / "optimizer.safetensors")
    reference = load_file(two / "checkpoint" / "optimizer.safetensors")
    assert set(reference) <= set(state)
    # DDP leaves the gradient of an unused parameter at None, so AdamW keeps
    # no state for it. FSDP gives it a zero gradient, so its moments stay zero.
    extra = sorted(set(state) - set(reference))
    for key in extra:
        if not key.endswith(".step"):
            assert not state[key].any(), key
    for key, tensor in reference.items():
        assert state[key].shape == tensor.shape, key
        assert state[key].dtype == tensor.dtype, key
    for name in ("step", "exp_avg", "exp_avg_sq"):
        keys = sorted(key for key in reference if key.endswith(f".{name}"))
        assert keys, name
        gathered = torch.cat([state[key].flatten() for key in keys])
        expected = torch.cat([reference[key].flatten() for key in keys])
        # The two runs sum gradients in another order, which changes the
        # moments of near-zero gradients (below 1e-9) completely, so the
        # difference is taken relative to the largest moment. Measured on two
        # CPU processes: 5.8e-7 for exp_avg, 7.5e-7 for exp_avg_sq.
        difference = float((gathered - expected).abs().max()) / float(expected.abs().max())
        assert difference <= 1e-5, (name, difference)
    groups = json.loads((fsdp_run / "checkpoint" / "method.json").read_text())["optimizer_param_groups"]
    expected_groups = json.loads((two / "checkpoint" / "method.json").read_text())["optimizer_param_groups"]
    assert groups == expected_groups


@pytest.fixture(scope="module")
def fsdp_two_steps(registry, tmp_path_factory):
    """FSDP trains the one_and_two_processes configuration for 2 of its 4 steps."""
    folder = tmp_path_factory.mktemp("fsdp-two-steps")
    result = torchrun(2, registry, "train", "tiny-sim4seg", "--max-samples", "5", "--precision", "float32",
                      "--strategy", "fsdp", "--train-steps", "2", "--out", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((folder / "checkpoint" / "method.json").read_text())["step"] == 2
    assert (folder / "checkpoint" / "optimizer.safetensors").is_file()
    return folder


def assert_resumed_like_ddp(folder: Path, expected: dict[int, dict[str, float]]) -> None:
    """Check that a run resumed at step 2 trained steps 3 and 4 as the uninterrupted DDP run did."""
    losses = step_losses(folder)
    assert sorted(losses) == [1, 2, 3, 4]
    # Step 3 uses the checkpoint's weights before any update, so it shows
    # that the gathered weights are the trained ones.
    assert losses[3]["loss"] == pytest.approx(expected[3]["loss"], rel=1e-5)
    # Step 4 follows the first update after the resume, so it shows that
    # AdamW's moments were kept: restarting them put the loss 0.15% off.
    # Measured on the CPU: at most 1.4e-7 (relative) for any term.
    for term in ("loss", "ce", "bce", "dice"):
        assert losses[4][term] == pytest.approx(expected[4][term], rel=1e-6), term


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_one(one_and_two_processes, fsdp_two_steps, registry, tmp_path):
    """One process continues an FSDP checkpoint from step 2 to 4, with AdamW's moments."""
    _, two, _ = one_and_two_processes
    shutil.copytree(fsdp_two_steps, tmp_path / "run")
    resumed = cli(registry, "train", "tiny-sim4seg", "--max-samples", "5", "--precision", "float32",
                  "--train-steps", "4", "--out", tmp_path / "run")
    assert resumed.exit_code == 0, resumed.output
    assert "Trained steps 2-4" in resumed.output
    assert_resumed_like_ddp(tmp_path / "run", step_losses(two))


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_in_fsdp(one_and_two_processes, fsdp_two_steps, registry, tmp_path):
    """Two FSDP processes continue an FSDP checkpoint; each rank receives its shard of AdamW's state."""
    _, two, _ = one_and_two_processes
    shutil.copytree(fsdp_two_steps, tmp_path / "run")
    resumed = torchrun(2, registry, "train", "tiny-sim4seg", "--max-samples", "5", "--precision", "float32",
                       "--strategy", "fsdp", "--train-steps", "4", "--out", tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_resumed_like_ddp(tmp_path / "run", step_losses(two))


@pytest.mark.slow
def test_fsdp_trains_lora_adapters(registry, tmp_path):
    """FSDP shards modules that mix frozen base weights with trainable adapters."""

    result = torchrun(2, registry, "train", "tiny-sim4seg", "--max-samples", "4", "--train-steps", "2",
                      "--precision", "float32", "--strategy", "fsdp", "--lora-rank", "4", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = step_losses(tmp_path)
    assert sorted(losses) == [1, 2]
    assert all(np.isfinite(losses[step]["loss"]) for step in losses)
    record = json.loads((tmp_path / "checkpoint" / "method.json").read_text())
    assert record["method"]["finetune"]["lora"]["r"] == 4
    adapters = load_file(tmp_path / "checkpoint" / "backbone" / "lora_adapters.safetensors")
    # 1 layer x (q_proj, v_proj) x (lora_A, lora_B), each with rank 4.
    assert len(adapters) == 4
    assert all(4 in tensor.shape for tensor in adapters.values())


@pytest.fixture(scope="module")
def deepspeed_run(registry, tmp_path_factory):
    """Two processes train the one_and_two_processes configuration with DeepSpeed ZeRO stage 2."""
    folder = tmp_path_factory.mktemp("deepspeed")
    result = torchrun(2, registry, "train", "tiny-sim4seg", "--max-samples", "5", "--precision", "float32",
                      "--strategy", "deepspeed", "--out", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


@requires_deepspeed
@pytest.mark.slow
def test_deepspeed_losses_match_ddp(one_and_two_processes, deepspeed_run):
    # Measured on two CPU processes (DeepSpeed 0.19.6, CPU accelerator, gloo,
    # one thread each): the largest relative difference of any term over the
    # 4 steps was 3.7e-7.
    _, two, _ = one_and_two_processes
    expected, losses = step_losses(two), step_losses(deepspeed_run)
    assert sorted(losses) == [1, 2, 3, 4]
    for step in expected:
        for term in ("loss", "ce", "bce", "dice"):
            assert np.isfinite(losses[step][term]), (step, term)
            assert losses[step][term] == pytest.approx(expected[step][term], rel=1e-5), (step, term)


@requires_deepspeed
@pytest.mark.slow
def test_deepspeed_checkpoint_is_safetensors(one_and_two_processes, deepspeed_run):
    """Rank 0 writes the whole weights as safetensors, and DeepSpeed writes no checkpoint of its own."""
    _, two, _ = one_and_two_processes
    record = json.loads((deepspeed_run / "checkpoint" / "method.json").read_text())
    assert record["step"] == 4
    assert record["processes"] == 2
    # ZeRO shards the optimizer state over the processes, so it is not saved.
    assert not (deepspeed_run / "checkpoint" / "optimizer.safetensors").exists()
    assert [path.name for path in deepspeed_run.rglob("*") if path.suffix in (".pt", ".pth", ".bin")] == []
    weights = load_file(deepspeed_run / "checkpoint" / "model.safetensors")
    reference = load_file(two / "checkpoint" / "model.safetensors")
    assert sorted(weights) == sorted(reference)
    for name, tensor in reference.items():
        assert weights[name].shape == tensor.shape, name
        assert weights[name].dtype == tensor.dtype, name


@requires_deepspeed
@pytest.mark.slow
def test_deepspeed_checkpoint_resumes_in_one(one_and_two_processes, registry, tmp_path):
    """DeepSpeed trains 2 steps, then one process continues from its checkpoint to step 4."""
    _, two, _ = one_and_two_processes
    common = ["train", "tiny-sim4seg", "--max-samples", "5", "--precision", "float32", "--out", tmp_path]
    started = torchrun(2, registry, *common, "--strategy", "deepspeed", "--train-steps", "2")
    assert started.returncode == 0, started.stderr[-3000:]
    assert json.loads((tmp_path / "checkpoint" / "method.json").read_text())["step"] == 2

    resumed = cli(registry, *common, "--train-steps", "4")
    assert resumed.exit_code == 0, resumed.output
    assert "Trained steps 2-4" in resumed.output
    expected, losses = step_losses(two), step_losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4]
    # Step 3 runs on the checkpoint's weights before any update.
    assert losses[3]["loss"] == pytest.approx(expected[3]["loss"], rel=1e-5)
    # AdamW restarts from zero moments at step 3, so step 4 differs a little.
    assert np.isfinite(losses[4]["loss"])
    assert losses[4]["loss"] == pytest.approx(expected[4]["loss"], rel=2e-2)


@pytest.mark.slow
def test_indivisible_batch_fails_before_compute(registry, tmp_path):
    result = torchrun(2, registry, "train", "tiny-odd-batch", "--max-samples", "3", "--out", tmp_path)
    assert result.returncode != 0
    assert "global batch of 3 samples does not split into 2 processes" in result.stderr + result.stdout
    assert not (tmp_path / "checkpoint").exists()
