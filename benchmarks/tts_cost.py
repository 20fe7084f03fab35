"""Cost of sampling m paths with n region prompts each, against greedy decoding.

For every strategy and (m, n) the same test cases are answered twice in
the same process: once greedily, and once with m paths sampled at the
given temperature and n region prompts per path. The two alternate case by case,
so load from other processes slows both alike. Image embeddings are
computed (or read from the cache) before timing, because a request encodes
its image once whatever m and n are.

Measured per configuration, summed over the cases:

- wall time of :func:`mdskit.evaluation.predict` (``time.perf_counter``),
  which decodes only the masks the strategy reads;
- model calls: language-model forward passes (the prefill and one per
  generated token), teacher-forced backbone passes, mask decoder calls,
  and the rows those decoder calls decoded;
- peak memory: the highest resident set size (``VmRSS`` in
  ``/proc/self/status``, sampled every 2 ms by a thread) during the case,
  minus the resident set size just before it, the maximum over the cases.
  It covers every allocation of the process, torch's included, which
  ``tracemalloc`` would miss. It is a lower bound of the memory a case
  needs, because memory that earlier cases freed but the allocator kept
  is reused without raising the resident set size.

Example (from the project folder):

    python benchmarks/tts_cost.py --checkpoint runs/sim4seg-train/checkpoint \\
        --data busi=../shared/data --data ph2=../shared/data --max-samples 4 \\
        --out benchmarks/results/tts-cost.md
"""

from __future__ import annotations

import argparse
import logging
import platform
import resource
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from mdskit.build import build_model
from mdskit.evaluation import predict
from mdskit.runs import Workspace, load_split, open_datasets, parse_data_option
from mdskit_tts import BestOfN, Greedy, SelfConsistency

logger = logging.getLogger("tts_cost")

PATH_COUNTS = (1, 2, 4, 8)
PERTURBATION_COUNTS = (1, 2)
STRATEGIES = {
    "self-consistency": lambda **options: SelfConsistency(**options),
    "self-consistency, every mask": lambda **options: SelfConsistency(max_fused_paths=0, **options),
    "best-of-n, logprob": lambda **options: BestOfN(score="logprob", **options),
    "best-of-n, predicted IoU": lambda **options: BestOfN(score="predicted-iou", **options),
}
"""The strategies measured: self-consistency with its default cap of three
fused paths and with every voter's mask fused, and best-of-n with a score
read from the text (one mask decoded) and one read from the masks (all
decoded)."""


def resident_bytes() -> int:
    """Return the process's resident set size from ``/proc/self/status``."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status; the memory column needs Linux.")


@contextmanager
def peak_resident(period_s: float = 0.002):
    """Yield a dict whose ``peak`` becomes the highest resident set size above the starting one."""
    baseline = resident_bytes()
    result = {"peak": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            result["peak"] = max(result["peak"], resident_bytes() - baseline)
            stop.wait(period_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak"] = max(result["peak"], resident_bytes() - baseline)


class CallCounter:
    """Count forward calls of the language model, the backbone and the mask decoder."""

    def __init__(self, model) -> None:
        self.counts = {"lm_forward": 0, "teacher_forced": 0, "decoder_calls": 0, "decoder_rows": 0}
        self.handles = [
            model.backbone.model.language_model.register_forward_hook(self._count("lm_forward")),
            model.backbone.register_forward_hook(self._count("teacher_forced")),
            model.decoder.register_forward_hook(self._count_decoder),
        ]

    def _count(self, key: str):
        def hook(module, inputs, output) -> None:
            self.counts[key] += 1
        return hook

    def _count_decoder(self, module, inputs, output) -> None:
        self.counts["decoder_calls"] += 1
        self.counts["decoder_rows"] += int(inputs[0].shape[0])

    def reset(self) -> dict[str, int]:
        counts = dict(self.counts)
        for key in self.counts:
            self.counts[key] = 0
        return counts


def measure(model, samples, strategy, counter: CallCounter, seed: int) -> dict:
    """Predict every sample once with ``strategy`` and return the wall time, model calls and peak memory."""
    counter.reset()
    wall = 0.0
    peak = 0
    for sample in samples:
        with peak_resident() as memory:
            started = time.perf_counter()
            predict(model, sample, strategy, seed=seed)
            wall += time.perf_counter() - started
        peak = max(peak, memory["peak"])
    return {"wall_s": wall, "peak_bytes": peak, **counter.reset()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="sim4seg")
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--data", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--max-samples", type=int, default=4, help="Test cases per dataset.")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=1, help="Passes over the cases per configuration.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES),
                        metavar="NAME", help=f"Strategies to measure, from: {', '.join(map(repr, STRATEGIES))}.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tts-cost.md"))
    args = parser.parse_args()
    command = "python benchmarks/tts_cost.py " + " ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items()
        if key not in ("data", "strategies")) + "".join(f" --data {item}" for item in args.data)
    if args.strategies != list(STRATEGIES):
        command += " --strategies " + " ".join(repr(name) for name in args.strategies)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    workspace = Workspace.load()
    spec = workspace.registry.method(args.method)
    adapters = open_datasets(workspace.components, parse_data_option(tuple(args.data), workspace.components))
    model = build_model(spec, workspace.components, args.checkpoint).eval()
    samples = load_split(adapters, "test", spec, workspace.components, args.max_samples, args.seed)
    counter = CallCounter(model)

    # Warm up at the largest configuration: fill the embedding cache, and let
    # torch's kernels and the C allocator's thresholds settle, because the
    # first large allocations are slower and would bias the first rows.
    for sample in samples:
        predict(model, sample, SelfConsistency(num_paths=max(PATH_COUNTS), num_perturbations=2, max_fused_paths=0),
                seed=args.seed)
        predict(model, sample, Greedy(), seed=args.seed)
    counter.reset()

    rows = []
    for name in args.strategies:
        for paths in PATH_COUNTS:
            for perturbations in PERTURBATION_COUNTS:
                temperature = args.temperature if paths > 1 else 1.0
                sampled = STRATEGIES[name](num_paths=paths, temperature=temperature, num_perturbations=perturbations)
                greedy_runs, sampled_runs = [], []
                for _ in range(args.repeats):
                    for sample in samples:
                        greedy_runs.append(measure(model, [sample], Greedy(), counter, args.seed))
                        sampled_runs.append(measure(model, [sample], sampled, counter, args.seed))
                rows.append(_row(name, paths, perturbations, greedy_runs, sampled_runs, args.repeats))
                logger.info("%s m=%d n=%d: %.2fx greedy wall time", name, paths, perturbations,
                            rows[-1]["wall_ratio"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text(_markdown(rows, command, len(samples), args), encoding="utf-8")
    partial.replace(args.out)
    logger.info("wrote %s", args.out)


def _row(strategy: str, paths: int, perturbations: int, greedy_runs: list[dict], sampled_runs: list[dict],
         repeats: int) -> dict:
    def total(runs: list[dict], key: str) -> float:
        return sum(run[key] for run in runs) / repeats

    ratios = [run["wall_s"] / base["wall_s"] for run, base in zip(sampled_runs, greedy_runs, strict=True)]
    greedy_wall, sampled_wall = total(greedy_runs, "wall_s"), total(sampled_runs, "wall_s")
    return {
        "strategy": strategy, "paths": paths, "perturbations": perturbations,
        "greedy_wall_s": greedy_wall, "wall_s": sampled_wall, "wall_ratio": sampled_wall / greedy_wall,
        "median_case_ratio": statistics.median(ratios),
        "greedy_peak_mib": max(run["peak_bytes"] for run in greedy_runs) / 2**20,
        "peak_mib": max(run["peak_bytes"] for run in sampled_runs) / 2**20,
        **{key: total(sampled_runs, key) for key in ("lm_forward", "teacher_forced", "decoder_calls",
                                                     "decoder_rows")},
        **{f"greedy_{key}": total(greedy_runs, key) for key in ("lm_forward", "decoder_rows")},
    }


def _max_rss_mib() -> float:
    """Return the process's peak resident set size in MiB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _markdown(rows: list[dict], command: str, cases: int, args) -> str:
    lines = [
        "# Test-time scaling cost against greedy decoding", "",
        f"Command: `{command}`", "",
        f"Machine: {platform.machine()} CPU ({torch.get_num_threads()} torch threads; the machine was shared with "
        f"other jobs, so absolute times vary and the ratios, measured case by case in one process, are the "
        f"result), Python {platform.python_version()}, torch {torch.__version__}. {cases} test cases, "
        f"{args.repeats} pass(es); sampled paths at temperature {args.temperature} (m = 1 decodes greedily).", "",
        "Wall time: sum over the cases of `predict`. LM calls: language-model forward passes (prefill plus one "
        "per generated token). Decoder rows: masks decoded (only those the strategy reads, each distinct answer once). Peak memory: highest resident set size during a case "
        "above the size before it (VmRSS sampled every 2 ms), the maximum over the cases: a lower bound, because "
        "memory freed by earlier cases and kept by the allocator is reused without raising it. Process peak "
        f"resident set size over the whole benchmark: {_max_rss_mib():.0f} MiB.", "",
        "| strategy | m | n | greedy wall (s) | wall (s) | wall ratio | median per-case ratio | LM calls (greedy) | "
        "teacher-forced passes | decoder calls | decoder rows (greedy) | peak MiB (greedy) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['strategy']} | {row['paths']} | {row['perturbations']} | {row['greedy_wall_s']:.2f} | {row['wall_s']:.2f} | "
            f"{row['wall_ratio']:.2f}x | {row['median_case_ratio']:.2f}x | {row['lm_forward']:.0f} "
            f"({row['greedy_lm_forward']:.0f}) | {row['teacher_forced']:.0f} | {row['decoder_calls']:.0f} | "
            f"{row['decoder_rows']:.0f} ({row['greedy_decoder_rows']:.0f}) | {row['peak_mib']:.0f} "
            f"({row['greedy_peak_mib']:.0f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
