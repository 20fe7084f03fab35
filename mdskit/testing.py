"""Contract checks that every registered component and method must pass.

Each role has a contract class whose ``test_*`` methods are the checks.
They cover output types, shapes and dtypes, device and dtype following the
inputs, a save/load round trip, a batch giving the same result as its
samples one by one, and determinism under a seed, where the role has each
of these. A plugin author subclasses the contract of the role and implements
``make_component``; pytest then collects every check for the subclass::

    from mdskit.testing import PromptModuleContract
    from mdskit_example_prompt.prompt import SmoothedSimilarityPrompt

    class TestSmoothedSimilarityPrompt(PromptModuleContract):
        def make_component(self):
            return SmoothedSimilarityPrompt(sigma=1.0)

Without pytest, :func:`run_contract` runs every check of a contract
instance and returns the violations. A failed check raises
:class:`ContractViolation` (an ``AssertionError``) that names the check and
the expected behaviour. The inputs are small random tensors and synthetic
images, so the checks take seconds on a CPU; the checks also run on CUDA
when it is available.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import SEG_TOKEN
from .backbone import BackboneOutput, GeneratedAnswers, VisionLanguageBackbone
from .cot import CotGenerator, attach_text, parse_diagnosis
from .datasets import SPLITS, DatasetAdapter
from .decoder import DecoderOutput, MaskDecoder
from .errors import MdskitError, PluginError
from .geometry import Frame
from .metrics import Metric, SampleResult
from .prompt import DecoderPrompts, PromptModule
from .sample import MdsSample
from .specialist import SpecialistModel, train_labels
from .tts import Candidate, GroundTruth, Selection, TestTimeScaling, checked_masks_needed, decoded_candidates

__all__ = [
    "BackboneContract", "ContractViolation", "CotGeneratorContract", "DatasetAdapterContract",
    "MaskDecoderContract", "MethodContract", "MetricContract", "PromptModuleContract", "SpecialistContract",
    "TtsStrategyContract", "contract_for", "run_contract", "synthetic_samples",
]


class ContractViolation(AssertionError):
    """A component that breaks its role's contract; the message names the check."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ContractViolation` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ContractViolation(message)


def require_close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    """Require two tensors of the same shape with values within ``atol`` (plus 1e-4 relative)."""
    require(tuple(actual.shape) == tuple(expected.shape),
            f"{what}: shape {tuple(actual.shape)} differs from {tuple(expected.shape)}.")
    difference = (actual.detach().double().cpu() - expected.detach().double().cpu()).abs()
    tolerance = atol + 1e-4 * expected.detach().double().cpu().abs()
    worst = float((difference - tolerance).max()) if difference.numel() else 0.0
    require(worst <= 0, f"{what}: values differ by up to {float(difference.max()):.3g} (tolerance {atol}).")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random number generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def available_devices() -> list[torch.device]:
    """Return the CPU, plus the first CUDA device when one is available."""
    # NOTE: the first-party components were checked on the CPU only; the CUDA
    # branch of each check has not been run on a GPU yet.
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", 0))
    return devices


def synthetic_images(sizes: Sequence[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    """Return random H x W x 3 uint8 RGB images of the given sizes."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for height, width in sizes]


SAMPLE_SIZES = ((48, 64), (64, 48))
"""(H, W) of the synthetic samples, alternating, so that both aspect ratios occur."""


def synthetic_samples(count: int = 3, label_set: tuple[str, ...] = ("benign", "malignant", "normal"),
                      seed: int = 0) -> list[MdsSample]:
    """Return samples with random images and an elliptic mask, labels cycling over ``label_set``.

    Sizes alternate over :data:`SAMPLE_SIZES`. The last label of
    ``label_set`` gets an empty mask, as normal cases do.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        height, width = SAMPLE_SIZES[index % len(SAMPLE_SIZES)]
        rows, cols = np.mgrid[:height, :width]
        label = label_set[index % len(label_set)]
        centre_row, centre_col = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        mask = ((rows - centre_row) / (0.2 * height)) ** 2 + ((cols - centre_col) / (0.25 * width)) ** 2 <= 1
        if index % len(label_set) == len(label_set) - 1:
            mask = np.zeros_like(mask)
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        samples.append(MdsSample(case_id=f"case-{index:03d}", dataset="synthetic", modality="ultrasound",
                                 image=image, mask=mask, label=label, label_set=label_set,
                                 group=f"case-{index:03d}", source="mdskit.testing synthetic sample"))
    return samples


class Contract:
    """Base of the role contracts.

    Attributes:
        seed: Seed set before each ``make_component`` call and each random input.
    """

    seed: int = 0

    def make_component(self) -> Any:
        """Return a new instance of the component under test."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_component().")

    def build(self, seed: int | None = None) -> Any:
        """Seed the random number generators and call :meth:`make_component`."""
        seed_everything(self.seed if seed is None else seed)
        return self.make_component()


def run_contract(contract: Contract) -> dict[str, str]:
    """Run every ``test_*`` check of ``contract``; return check name -> violation message for those that fail."""
    violations = {}
    for name in sorted(dir(contract)):
        check = getattr(contract, name)
        if not name.startswith("test_") or not callable(check):
            continue
        try:
            check()
        except AssertionError as error:
            violations[name] = str(error)
    return violations


def _tensors_equal(first: torch.Tensor | None, second: torch.Tensor | None) -> bool:
    if first is None or second is None:
        return first is second
    return first.shape == second.shape and bool(torch.equal(first.detach().cpu(), second.detach().cpu()))


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Add noise to every trainable parameter, as training would, so that a round trip has something to carry."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad and parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.add_(0.01 * noise.to(parameter.device, parameter.dtype))


def _round_trip(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Save ``source``'s state dict with safetensors and load it into ``target``."""
    state = {key: value.detach().contiguous().cpu().clone() for key, value in source.state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "component.safetensors"
        save_file(state, str(path))
        loaded = load_file(str(path))
    missing, unexpected = target.load_state_dict(loaded, strict=False)
    require(not missing and not unexpected,
            f"save/load round trip: load_state_dict reported missing keys {missing[:5]} and unexpected keys "
            f"{unexpected[:5]}; the state dict must load into a new instance from make_component().")


# --------------------------------------------------------------------- prompt


class PromptModuleContract(Contract):
    """Contract of :class:`~mdskit.prompt.PromptModule`.

    Attributes:
        channels: Width C of the embeddings.
        token_grid: (rows, cols) of the image-token grid.
        image_sizes: (H, W) of each sample's image; one batch.
        prompt_frame_size: Side of the square decoder prompt frame
            (:meth:`Frame.longest_side`); the token grid covers that frame.
    """

    channels: int = 16
    token_grid: tuple[int, int] = (4, 4)
    image_sizes: tuple[tuple[int, int], ...] = ((40, 56), (48, 48), (64, 40))
    prompt_frame_size: int = 64

    def make_inputs(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                    seed: int | None = None) -> dict[str, Any]:
        """Return the keyword arguments of one forward call, with random embeddings."""
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        batch = len(self.image_sizes)
        tokens = self.token_grid[0] * self.token_grid[1]
        frames = [Frame.longest_side(size, self.prompt_frame_size) for size in self.image_sizes]
        return {
            "image_token_embeddings": torch.randn(batch, tokens, self.channels, generator=generator).to(device, dtype),
            "seg_embeddings": torch.randn(batch, self.channels, generator=generator).to(device, dtype),
            "token_grid": self.token_grid,
            "token_frames": frames,
            "prompt_frames": frames,
        }

    def component(self, seed: int | None = None) -> PromptModule:
        component = self.build(seed)
        require(isinstance(component, PromptModule),
                f"make_component() returned {type(component).__name__}, not a PromptModule subclass.")
        return component.eval()

    def test_output_types_and_shapes(self) -> None:
        prompts = self.component()(**self.make_inputs())
        require(isinstance(prompts, DecoderPrompts),
                f"forward returned {type(prompts).__name__}; return mdskit.prompt.DecoderPrompts.")
        require(any(value is not None for value in (prompts.dense_masks, prompts.boxes, prompts.points)),
                "forward returned no prompt; set dense_masks, boxes or points.")
        batch = len(self.image_sizes)
        if prompts.dense_masks is not None:
            expected = (batch, 1, self.prompt_frame_size, self.prompt_frame_size)
            require(tuple(prompts.dense_masks.shape) == expected,
                    f"dense_masks has shape {tuple(prompts.dense_masks.shape)}; expected B x 1 x Hp x Wp = "
                    f"{expected} (the prompt frame's size).")
            require(prompts.dense_masks.is_floating_point(), "dense_masks must be a floating-point tensor.")
            require(bool(torch.isfinite(prompts.dense_masks).all()), "dense_masks holds NaN or infinite values.")
        if prompts.boxes is not None:
            require(tuple(prompts.boxes.shape) == (batch, 4),
                    f"boxes has shape {tuple(prompts.boxes.shape)}; expected B x 4 = {(batch, 4)}.")
        if prompts.points is not None:
            coords, labels = prompts.points
            require(coords.dim() == 3 and coords.shape[0] == batch and coords.shape[2] == 2,
                    f"point coordinates have shape {tuple(coords.shape)}; expected B x K x 2.")
            require(tuple(labels.shape) == tuple(coords.shape[:2]),
                    f"point labels have shape {tuple(labels.shape)}; expected B x K = {tuple(coords.shape[:2])}.")
        if prompts.similarity is not None:
            require(len(prompts.similarity) == batch,
                    f"similarity holds {len(prompts.similarity)} maps for a batch of {batch}.")
            for index, (similarity, size) in enumerate(zip(prompts.similarity, self.image_sizes)):
                require(tuple(similarity.shape) == size,
                        f"similarity map {index} has shape {tuple(similarity.shape)}; expected the image's "
                        f"H x W = {size}.")

    def test_dtype_and_device_follow_inputs(self) -> None:
        for device in available_devices():
            for dtype in (torch.float32, torch.float64):
                component = self.component().to(device=device, dtype=dtype)
                prompts = component(**self.make_inputs(dtype, device))
                for name, tensor in (("dense_masks", prompts.dense_masks), ("boxes", prompts.boxes)):
                    if tensor is None:
                        continue
                    require(tensor.device.type == device.type,
                            f"{name} is on {tensor.device} for inputs on {device}; create outputs on the "
                            "inputs' device.")
                    if tensor.is_floating_point():
                        require(tensor.dtype == dtype,
                                f"{name} is {tensor.dtype} for {dtype} inputs; follow the embeddings' dtype.")

    def test_batch_matches_samples(self) -> None:
        component = self.component()
        inputs = self.make_inputs()
        batched = component(**inputs)
        for index in range(len(self.image_sizes)):
            single = component(**{
                "image_token_embeddings": inputs["image_token_embeddings"][index:index + 1],
                "seg_embeddings": inputs["seg_embeddings"][index:index + 1],
                "token_grid": self.token_grid,
                "token_frames": inputs["token_frames"][index:index + 1],
                "prompt_frames": inputs["prompt_frames"][index:index + 1],
            })
            for name in ("dense_masks", "boxes"):
                whole, alone = getattr(batched, name), getattr(single, name)
                if whole is not None:
                    require(alone is not None, f"{name} is None for a batch of one but set for a larger batch.")
                    require_close(alone[0], whole[index], f"{name} of sample {index} alone vs in the batch")

    def test_deterministic_under_seed(self) -> None:
        first = self.component()(**self.make_inputs())
        second = self.component()(**self.make_inputs())
        for name in ("dense_masks", "boxes"):
            require(_tensors_equal(getattr(first, name), getattr(second, name)),
                    f"{name} differs between two runs with seed {self.seed}; draw randomness only from "
                    "torch's seeded generators.")

    def test_state_dict_round_trip(self) -> None:
        original = self.component(seed=self.seed)
        _perturb(original, self.seed + 1)
        restored = self.component(seed=self.seed + 2)
        _round_trip(original, restored)
        inputs = self.make_inputs()
        before, after = original(**inputs), restored(**inputs)
        for name in ("dense_masks", "boxes"):
            if getattr(before, name) is not None:
                require_close(getattr(after, name), getattr(before, name), f"{name} after a save/load round trip")


# --------------------------------------------------------------------- decoder


class MaskDecoderContract(Contract):
    """Contract of :class:`~mdskit.decoder.MaskDecoder`.

    The images are those of :func:`synthetic_samples`, which the method
    contract uses too, so an embedding cache computes them once. The checks
    of one contract instance share one component and one batched forward
    pass (:meth:`reference`), because a SAM decoder pass takes seconds on a
    CPU.

    Attributes:
        image_count: Number of synthetic images in one batch.
        sparse_tokens: K, the extra sparse prompt embeddings per sample.
    """

    image_count: int = 2
    sparse_tokens: int = 1
    _reference: tuple[MaskDecoder, torch.Tensor, tuple[torch.Tensor, DecoderPrompts], DecoderOutput] | None = None

    def component(self, seed: int | None = None) -> MaskDecoder:
        component = self.build(seed)
        require(isinstance(component, MaskDecoder),
                f"make_component() returned {type(component).__name__}, not a MaskDecoder subclass.")
        return component.eval()

    def images(self) -> list[np.ndarray]:
        return [sample.image for sample in synthetic_samples(self.image_count, seed=self.seed)]

    def make_inputs(self, component: MaskDecoder, embeddings: torch.Tensor,
                    seed: int | None = None) -> tuple[torch.Tensor, DecoderPrompts]:
        """Return random sparse embeddings and a random binary dense mask prompt for ``embeddings``."""
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        batch = embeddings.shape[0]
        frame = component.prompt_frame(SAMPLE_SIZES[0])
        sparse = torch.randn(batch, self.sparse_tokens, component.prompt_embed_dim, generator=generator)
        dense = (torch.rand(batch, 1, *frame.size, generator=generator) > 0.7).float()
        prompts = DecoderPrompts(dense_masks=dense.to(embeddings.device, embeddings.dtype))
        return sparse.to(embeddings.device, embeddings.dtype), prompts

    @torch.no_grad()
    def reference(self) -> tuple[MaskDecoder, torch.Tensor, tuple[torch.Tensor, DecoderPrompts], DecoderOutput]:
        """Return the shared component, image embeddings, inputs and batched output (computed once)."""
        if self._reference is None:
            component = self.component()
            embeddings = component.encode_images(self.images())
            inputs = self.make_inputs(component, embeddings)
            self._reference = (component, embeddings, inputs, component(embeddings, *inputs))
        return self._reference

    @torch.no_grad()
    def test_encode_images(self) -> None:
        component, embeddings, _, _ = self.reference()
        require(isinstance(embeddings, torch.Tensor) and embeddings.dim() == 4,
                f"encode_images returned {getattr(embeddings, 'shape', type(embeddings))}; expected B x C x h x w.")
        require(embeddings.shape[0] == self.image_count,
                f"encode_images returned {embeddings.shape[0]} embeddings for {self.image_count} images.")
        require(embeddings.is_floating_point(), "image embeddings must be floating point.")
        again = component.encode_images(self.images()[::-1])
        require_close(again.flip(0), embeddings, "image embeddings of the same images in reverse order", atol=1e-3)
        for size in {image.shape[:2] for image in self.images()}:
            frame = component.prompt_frame(size)
            require(isinstance(frame, Frame) and tuple(frame.image_size) == size,
                    f"prompt_frame({size}) returned {frame!r}; expected a Frame for that image size.")

    def test_output_types_and_shapes(self) -> None:
        output = self.reference()[3]
        batch = self.image_count
        require(isinstance(output, DecoderOutput),
                f"forward returned {type(output).__name__}; return mdskit.decoder.DecoderOutput.")
        require(output.mask_logits.dim() == 4 and tuple(output.mask_logits.shape[:2]) == (batch, 1),
                f"mask_logits has shape {tuple(output.mask_logits.shape)}; expected B x 1 x h x w.")
        require(tuple(output.iou_scores.shape) == (batch, 1),
                f"iou_scores has shape {tuple(output.iou_scores.shape)}; expected B x 1 = {(batch, 1)}.")
        require(bool(torch.isfinite(output.mask_logits).all()), "mask_logits holds NaN or infinite values.")

    @torch.no_grad()
    def test_dtype_and_device_follow_inputs(self) -> None:
        component, embeddings, inputs, output = self.reference()
        runs = [(torch.device("cpu"), torch.float32, output)]
        cast = embeddings.double()
        runs.append((torch.device("cpu"), torch.float64, component(cast, *self.make_inputs(component, cast))))
        for device in available_devices()[1:]:
            moved = self.component().to(device)
            on_device = moved.encode_images(self.images())
            require(on_device.device.type == device.type,
                    f"encode_images returned embeddings on {on_device.device} for a decoder on {device}.")
            runs.append((device, torch.float32, moved(on_device, *self.make_inputs(moved, on_device))))
        for device, dtype, result in runs:
            for name in ("mask_logits", "iou_scores"):
                tensor = getattr(result, name)
                require(tensor.dtype == dtype and tensor.device.type == device.type,
                        f"{name} is {tensor.dtype} on {tensor.device} for {dtype} image embeddings on "
                        f"{device}; follow the image embeddings' dtype and device.")

    @torch.no_grad()
    def test_batch_matches_samples(self) -> None:
        component, embeddings, (sparse, prompts), batched = self.reference()
        for index in range(self.image_count):
            rows = slice(index, index + 1)
            single = component(embeddings[rows], sparse[rows], DecoderPrompts(dense_masks=prompts.dense_masks[rows]))
            require_close(single.mask_logits[0], batched.mask_logits[index],
                          f"mask_logits of sample {index} alone vs in the batch", atol=1e-4)
            require_close(single.iou_scores[0], batched.iou_scores[index],
                          f"iou_scores of sample {index} alone vs in the batch", atol=1e-4)

    @torch.no_grad()
    def test_deterministic_under_seed(self) -> None:
        _, _, _, output = self.reference()
        component = self.component()
        embeddings = component.encode_images(self.images())
        again = component(embeddings, *self.make_inputs(component, embeddings))
        require(_tensors_equal(output.mask_logits, again.mask_logits),
                f"mask_logits differ between two components built with seed {self.seed}; draw randomness only "
                "from torch's seeded generators.")

    @torch.no_grad()
    def test_state_dict_round_trip(self) -> None:
        original = self.component(seed=self.seed)
        _perturb(original, self.seed + 1)
        restored = self.component(seed=self.seed + 2)
        _round_trip(original, restored)
        embeddings = original.encode_images(self.images())
        inputs = self.make_inputs(original, embeddings)
        require_close(restored(embeddings, *inputs).mask_logits, original(embeddings, *inputs).mask_logits,
                      "mask_logits after a save/load round trip")


# --------------------------------------------------------------------- backbone


class BackboneContract(Contract):
    """Contract of :class:`~mdskit.backbone.VisionLanguageBackbone`.

    The contract calls ``setup(corpus)`` on each new component, and restores
    a saved one with :meth:`load_component`.

    Attributes:
        image_embedding_shape: C x h x w of the mask decoder embeddings that
            ``image_features`` receives.
        image_sizes: (H, W) of the synthetic images of one batch.
    """

    image_embedding_shape: tuple[int, int, int] = (16, 8, 8)
    image_sizes: tuple[tuple[int, int], ...] = ((48, 64), (64, 48))

    def corpus(self) -> list[str]:
        """Return the texts passed to ``setup``: the questions and answers of :meth:`texts`."""
        questions, answers = self.texts()
        return [*questions, *answers] * 4

    def texts(self) -> tuple[list[str], list[str]]:
        """Return one question and one answer (with ``[SEG]``) per image."""
        questions = ["What is the lesion in this image?", "Is there a finding? Segment it."]
        answers = [f"Modality: ultrasound. Findings: an oval mass. Diagnosis: benign. {SEG_TOKEN}",
                   f"Modality: ultrasound. Findings: an irregular mass. Diagnosis: malignant. {SEG_TOKEN}"]
        return questions[:len(self.image_sizes)], answers[:len(self.image_sizes)]

    def component(self, seed: int | None = None) -> VisionLanguageBackbone:
        component = self.build(seed)
        require(isinstance(component, VisionLanguageBackbone),
                f"make_component() returned {type(component).__name__}, not a VisionLanguageBackbone subclass.")
        component.setup(self.corpus())
        return component.eval()

    def load_component(self, component: VisionLanguageBackbone, folder: str) -> VisionLanguageBackbone:
        """Return the backbone saved in ``folder`` by ``save_pretrained``.

        The default calls ``type(component)(pretrained=folder)``. Checkpoints
        pass the method's backbone parameters too, so override this when a
        parameter that ``save_pretrained`` does not store changes the output.
        """
        return type(component)(pretrained=folder)

    def features(self, component: VisionLanguageBackbone, device: torch.device | str = "cpu") -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        embeddings = torch.randn(len(self.image_sizes), *self.image_embedding_shape, generator=generator)
        images = synthetic_images(self.image_sizes, self.seed)
        return component.image_features(images, embeddings.to(device))

    @torch.no_grad()
    def test_output_types_and_shapes(self) -> None:
        component = self.component()
        features = self.features(component)
        batch = len(self.image_sizes)
        tokens = component.token_grid[0] * component.token_grid[1]
        require(features.dim() == 3 and tuple(features.shape[:2]) == (batch, tokens),
                f"image_features has shape {tuple(features.shape)}; expected B x T x Dv with T = {tokens}.")
        output = component(features, *self.texts())
        require(isinstance(output, BackboneOutput),
                f"forward returned {type(output).__name__}; return mdskit.backbone.BackboneOutput.")
        hidden = output.hidden_states
        require(hidden.dim() == 3 and hidden.shape[0] == batch and hidden.shape[2] == component.hidden_size,
                f"hidden_states has shape {tuple(hidden.shape)}; expected B x L x hidden_size "
                f"({component.hidden_size}).")
        for name in ("image_token_mask", "seg_token_mask"):
            mask = getattr(output, name)
            require(mask.dtype == torch.bool and tuple(mask.shape) == tuple(hidden.shape[:2]),
                    f"{name} is {mask.dtype} {tuple(mask.shape)}; expected a bool B x L mask.")
        require(output.image_token_mask.sum(dim=1).tolist() == [tokens] * batch,
                f"image_token_mask marks {output.image_token_mask.sum(dim=1).tolist()} tokens per row; "
                f"expected T = {tokens}.")
        require(bool((output.seg_token_mask.sum(dim=1) >= 1).all()), f"seg_token_mask misses the {SEG_TOKEN} "
                                                                    "token of an answer.")
        require(output.loss is not None and output.loss.dim() == 0 and bool(torch.isfinite(output.loss)),
                f"loss is {output.loss!r}; expected a finite scalar when answers are given.")

        generated = component.generate(features, self.texts()[0], num_paths=2, temperature=1.0, do_sample=True)
        require(isinstance(generated, GeneratedAnswers), "generate must return mdskit.backbone.GeneratedAnswers.")
        require([len(paths) for paths in generated.texts] == [2] * batch
                and all(isinstance(text, str) for paths in generated.texts for text in paths),
                "generate must return B lists of num_paths answer strings.")
        require([len(values) for values in generated.mean_logprobs] == [2] * batch,
                "generate must return B lists of num_paths mean log-probabilities.")

    @torch.no_grad()
    def test_dtype_and_device_follow_inputs(self) -> None:
        for device in available_devices():
            component = self.component().to(device)
            features = self.features(component, device)
            output = component(features, *self.texts())
            for name in ("hidden_states", "image_token_mask", "seg_token_mask"):
                tensor = getattr(output, name)
                require(tensor.device.type == device.type,
                        f"{name} is on {tensor.device} for image features on {device}.")
            require(output.hidden_states.dtype == features.dtype,
                    f"hidden_states is {output.hidden_states.dtype} for {features.dtype} image features.")

    @torch.no_grad()
    def test_batch_matches_samples(self) -> None:
        component = self.component()
        features = self.features(component)
        questions, answers = self.texts()
        batched = component(features, questions, answers)
        greedy = component.generate(features, questions).texts
        for index in range(len(questions)):
            single = component(features[index:index + 1], questions[index:index + 1], answers[index:index + 1])
            for name in ("image_token_mask", "seg_token_mask"):
                whole = batched.hidden_states[index][getattr(batched, name)[index]]
                alone = single.hidden_states[0][getattr(single, name)[0]]
                require_close(alone, whole, f"hidden states at {name} of sample {index} alone vs in the batch",
                              atol=1e-4)
            alone_text = component.generate(features[index:index + 1], questions[index:index + 1]).texts[0]
            require(alone_text == greedy[index], f"greedy answer of sample {index} alone {alone_text!r} differs "
                                                 f"from the one in the batch {greedy[index]!r}.")

    @torch.no_grad()
    def test_deterministic_under_seed(self) -> None:
        runs = []
        for _ in range(2):
            component = self.component()
            features = self.features(component)
            output = component(features, *self.texts())
            seed_everything(self.seed)
            sampled = component.generate(features, self.texts()[0], num_paths=2, do_sample=True)
            runs.append((output.hidden_states, sampled.texts))
        require(_tensors_equal(runs[0][0], runs[1][0]),
                f"hidden_states differ between two components built with seed {self.seed}.")
        require(runs[0][1] == runs[1][1], f"sampled answers differ under the same seed: {runs[0][1]} vs {runs[1][1]}.")

    @torch.no_grad()
    def test_save_pretrained_round_trip(self) -> None:
        component = self.component()
        features = self.features(component)
        before = component(features, *self.texts())
        with tempfile.TemporaryDirectory() as folder:
            component.save_pretrained(folder)
            restored = self.load_component(component, folder).eval()
            after = restored(features, *self.texts())
        require_close(after.hidden_states, before.hidden_states, "hidden_states after save_pretrained and "
                                                                 "loading with pretrained=FOLDER")
        require(component.generate(features, self.texts()[0]).texts == restored.generate(features, self.texts()[0]).texts,
                "greedy answers differ after save_pretrained and loading with pretrained=FOLDER.")


# --------------------------------------------------------------------- test-time scaling


class TtsStrategyContract(Contract):
    """Contract of :class:`~mdskit.tts.TestTimeScaling`.

    ``make_component`` returns a strategy; the contract gives it
    ``num_paths`` candidates per request.

    Attributes:
        label_set: Diagnoses the synthetic candidates name.
        mask_size: (H, W) of the candidates' mask logits.
    """

    label_set: tuple[str, ...] = ("benign", "malignant", "normal")
    mask_size: tuple[int, int] = (24, 32)

    def component(self) -> TestTimeScaling:
        component = self.build()
        require(isinstance(component, TestTimeScaling),
                f"make_component() returned {type(component).__name__}, not a TestTimeScaling subclass.")
        return component

    def candidates(self, count: int, device: torch.device | str = "cpu", valid: bool = True) -> list[Candidate]:
        """Return ``count`` candidates with random masks; ``valid=False`` gives no diagnosis and no ``[SEG]``."""
        generator = torch.Generator().manual_seed(self.seed)
        result = []
        for index in range(count):
            logits = torch.randn(*self.mask_size, generator=generator).to(device)
            diagnosis = self.label_set[index % 2] if valid else None
            text = f"Diagnosis: {diagnosis}. {SEG_TOKEN}" if valid else "no answer"
            result.append(Candidate(path_index=index, text=text, diagnosis=diagnosis, mask_logits=logits,
                                    seg_found=valid, mean_logprob=-0.1 * (index + 1), iou_score=0.5))
        return result

    def ground_truth(self, device: torch.device | str = "cpu") -> GroundTruth:
        """Return the ground truth for strategies with ``uses_ground_truth``: a centred box and the first label."""
        mask = torch.zeros(self.mask_size, dtype=torch.bool, device=device)
        height, width = self.mask_size
        mask[height // 4:3 * height // 4, width // 4:3 * width // 4] = True
        return GroundTruth(mask=mask, label=self.label_set[0])

    def select(self, component: TestTimeScaling, candidates: list[Candidate]) -> Selection:
        if component.uses_ground_truth:
            decoded = decoded_candidates(candidates)
            device = decoded[0].mask_logits.device if decoded else "cpu"
            selection = component.select(candidates, ground_truth=self.ground_truth(device))
        else:
            selection = component.select(candidates)
        require(isinstance(selection, Selection),
                f"select returned {type(selection).__name__}; return mdskit.tts.Selection.")
        return selection

    def test_selection_types_and_shapes(self) -> None:
        component = self.component()
        candidates = self.candidates(component.num_paths)
        selection = self.select(component, candidates)
        require(isinstance(selection.text, str), f"Selection.text is {type(selection.text).__name__}, not str.")
        require(selection.mask.dtype == torch.bool and tuple(selection.mask.shape) == self.mask_size,
                f"Selection.mask is {selection.mask.dtype} {tuple(selection.mask.shape)}; expected a bool H x W "
                f"mask of the candidates' size {self.mask_size}.")
        indices = {candidate.path_index for candidate in candidates}
        require(bool(selection.chosen) and set(selection.chosen) <= indices,
                f"Selection.chosen is {selection.chosen}; expected path indices among {sorted(indices)}.")
        diagnoses = {candidate.diagnosis for candidate in candidates}
        require(selection.diagnosis in diagnoses,
                f"Selection.diagnosis {selection.diagnosis!r} is none of the candidates' diagnoses.")
        if selection.agreement is not None:
            agreement = selection.agreement
            require(tuple(agreement.shape) == self.mask_size and bool(((agreement >= 0) & (agreement <= 1)).all()),
                    "Selection.agreement must be an H x W map with values in [0, 1].")
        require(selection.failure is None, f"Selection.failure is {selection.failure!r} for valid candidates.")

    def test_failure_without_valid_candidates(self) -> None:
        component = self.component()
        selection = self.select(component, self.candidates(component.num_paths, valid=False))
        require(selection.failure is not None, "Selection.failure is None although no candidate has a diagnosis "
                                               f"or {SEG_TOKEN}; say why no valid answer was found.")
        require(selection.diagnosis is None, "Selection.diagnosis must be None when no candidate has one.")
        require(not bool(selection.mask.any()), f"Selection.mask must be empty when no candidate has {SEG_TOKEN}.")

    def test_ground_truth_required_when_used(self) -> None:
        component = self.component()
        if not component.uses_ground_truth:
            return
        try:
            component.select(self.candidates(component.num_paths))
        except MdskitError:
            return
        raise ContractViolation("select answered without ground_truth although uses_ground_truth is set; raise an "
                                "MdskitError that names a ground-truth-free strategy instead.")

    def test_device_follows_inputs(self) -> None:
        for device in available_devices():
            component = self.component()
            selection = self.select(component, self.candidates(component.num_paths, device))
            require(selection.mask.device.type == device.type,
                    f"Selection.mask is on {selection.mask.device} for candidates on {device}.")

    def test_needed_masks_suffice(self) -> None:
        component = self.component()
        candidates = self.candidates(component.num_paths)
        without_masks = [dataclasses.replace(candidate, mask_logits=None, iou_score=None) for candidate in candidates]
        try:
            name = getattr(component, "name", type(component).__name__)
            needed = checked_masks_needed(component.masks_needed(without_masks), candidates, name)
        except PluginError as error:
            raise ContractViolation(str(error)) from error
        if needed is None:
            return
        lazy = [candidate if candidate.path_index in needed
                else dataclasses.replace(candidate, mask_logits=None, iou_score=None)
                for candidate in candidates]
        try:
            partial = self.select(component, lazy)
        except (TypeError, AttributeError, ValueError) as error:
            raise ContractViolation(f"select read a mask that masks_needed did not list ({error}); list every "
                                    "candidate whose mask select reads.") from error
        full = self.select(component, candidates)
        require(partial.text == full.text and partial.chosen == full.chosen and torch.equal(partial.mask, full.mask),
                "select gives another answer when only the masks that masks_needed lists are decoded; it must "
                "read no other mask.")

    def test_deterministic_and_pure(self) -> None:
        component = self.component()
        candidates = self.candidates(component.num_paths)
        kept = copy.deepcopy(candidates)
        first = self.select(component, candidates)
        second = self.select(self.component(), candidates)
        require(first.text == second.text and first.chosen == second.chosen and torch.equal(first.mask, second.mask),
                "select gives different selections for the same candidates.")
        for candidate, original in zip(candidates, kept):
            require(torch.equal(candidate.mask_logits, original.mask_logits) and candidate.text == original.text,
                    "select changed its input candidates; leave them unchanged.")


# --------------------------------------------------------------------- chain of thought


class CotGeneratorContract(Contract):
    """Contract of :class:`~mdskit.cot.CotGenerator`; override :meth:`samples` for other modalities."""

    def samples(self) -> list[MdsSample]:
        """Return the samples for which the generator writes answers."""
        return synthetic_samples(6, seed=self.seed)

    def component(self) -> CotGenerator:
        component = self.build()
        require(isinstance(component, CotGenerator),
                f"make_component() returned {type(component).__name__}, not a CotGenerator subclass.")
        return component

    def test_answers_parse_back(self) -> None:
        component = self.component()
        for sample in self.samples():
            answer = component.generate(sample)
            require(isinstance(answer, str), f"generate returned {type(answer).__name__} for {sample.uid}.")
            require(SEG_TOKEN in answer, f"the answer for {sample.uid} has no {SEG_TOKEN}: {answer!r}.")
            parsed = parse_diagnosis(answer, sample.label_set)
            require(parsed == sample.label, f"the answer for {sample.uid} reads as diagnosis {parsed!r}, not "
                                            f"{sample.label!r}: {answer!r}.")
        attach_text(self.samples(), component, seed=self.seed)

    def test_deterministic(self) -> None:
        first = [self.component().generate(sample) for sample in self.samples()]
        second = [self.component().generate(sample) for sample in self.samples()]
        require(first == second, "generate writes different answers for the same samples.")


# --------------------------------------------------------------------- dataset


class DatasetAdapterContract(Contract):
    """Contract of :class:`~mdskit.datasets.DatasetAdapter`; ``make_component`` returns an opened adapter.

    The checks of one instance share one adapter and its cases
    (:meth:`reference`), because reading a public dataset takes a while.
    """

    _reference: tuple[DatasetAdapter, list[MdsSample]] | None = None

    def component(self) -> DatasetAdapter:
        component = self.build()
        require(isinstance(component, DatasetAdapter),
                f"make_component() returned {type(component).__name__}, not a DatasetAdapter subclass.")
        return component

    def reference(self) -> tuple[DatasetAdapter, list[MdsSample]]:
        """Return the shared adapter and its cases (read once)."""
        if self._reference is None:
            adapter = self.component()
            self._reference = (adapter, adapter.load_cases())
        return self._reference

    def test_cases_are_well_formed(self) -> None:
        adapter, cases = self.reference()
        require(len(cases) > 0, f"dataset '{adapter.name}' returned no cases.")
        require(len({case.case_id for case in cases}) == len(cases), "case ids must be unique.")
        for case in cases:
            require(isinstance(case, MdsSample), f"load_cases returned {type(case).__name__}, not MdsSample.")
            require(case.dataset == adapter.name, f"{case.uid}: dataset is {case.dataset!r}, not {adapter.name!r}.")
            require(case.image.dtype == np.uint8 and case.image.ndim == 3 and case.image.shape[2] == 3,
                    f"{case.uid}: image is {case.image.dtype} {case.image.shape}; expected H x W x 3 uint8.")
            require(case.mask.dtype == bool and case.mask.shape == case.image.shape[:2],
                    f"{case.uid}: mask is {case.mask.dtype} {case.mask.shape}; expected a bool mask of the "
                    f"image's size {case.image.shape[:2]}.")
            require(case.label in adapter.label_set and tuple(case.label_set) == tuple(adapter.label_set),
                    f"{case.uid}: label {case.label!r} or label set {case.label_set} differs from the adapter's "
                    f"{adapter.label_set}.")
            require(bool(case.modality), f"{case.uid}: modality is empty.")

    def test_deterministic(self) -> None:
        _, first = self.reference()
        second = self.component().load_cases()
        require([case.case_id for case in first] == [case.case_id for case in second],
                "load_cases returns different cases on two calls.")
        for one, two in zip(first, second):
            require(np.array_equal(one.image, two.image) and np.array_equal(one.mask, two.mask),
                    f"{one.uid}: image or mask differs between two calls of load_cases.")

    def test_splits_partition_the_cases(self) -> None:
        adapter, cases = self.reference()
        everything = sorted(case.case_id for case in cases)
        splits = {split: [case.case_id for case in adapter.load_split(split)] for split in SPLITS}
        combined = sorted(case_id for ids in splits.values() for case_id in ids)
        require(combined == everything, "the train, val and test splits must together hold every case once.")


# --------------------------------------------------------------------- metric


class MetricContract(Contract):
    """Contract of :class:`~mdskit.metrics.Metric`."""

    def results(self) -> list[SampleResult]:
        """Return scored samples from :func:`synthetic_samples`, each predicted with a shifted mask."""
        results = []
        for index, sample in enumerate(synthetic_samples(6, seed=self.seed)):
            predicted = np.roll(sample.mask, shift=index, axis=1)
            predicted_label = sample.label_set[(index // 2) % len(sample.label_set)]
            results.append(SampleResult.from_masks(sample.uid, sample.dataset, sample.label, sample.label_set,
                                                   predicted_label, predicted, sample.mask))
        return results

    def component(self) -> Metric:
        component = self.build()
        require(isinstance(component, Metric),
                f"make_component() returned {type(component).__name__}, not a Metric subclass.")
        return component

    def test_value_is_a_finite_float(self) -> None:
        value = self.component().compute(self.results())
        require(isinstance(value, float) and math.isfinite(value), f"compute returned {value!r}; expected a "
                                                                   "finite float.")

    def test_empty_results_give_nan(self) -> None:
        value = self.component().compute([])
        require(isinstance(value, float) and math.isnan(value), f"compute([]) returned {value!r}; expected NaN.")

    def test_order_does_not_matter(self) -> None:
        results = self.results()
        forward, backward = self.component().compute(results), self.component().compute(results[::-1])
        require(math.isclose(forward, backward, rel_tol=1e-9, abs_tol=1e-12),
                f"compute gives {forward} and {backward} for the same results in another order.")


# --------------------------------------------------------------------- method


class MethodContract(Contract):
    """Contract of a whole method: its components built together as :class:`~mdskit.model.MdsModel`,
    or its :class:`~mdskit.specialist.SpecialistModel`.

    ``make_method`` returns the method definition and the components it
    names. The checks run a teacher-forced pass over synthetic samples and
    a checkpoint round trip through :mod:`mdskit.checkpoint`. The checks of
    one instance share one model and its batched masks (:meth:`reference`).
    """

    _reference: tuple[Any, Any, list[MdsSample], list[torch.Tensor]] | None = None

    def make_method(self) -> tuple[Any, Any]:
        """Return ``(MethodSpec, Components)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_method().")

    def samples(self) -> list[MdsSample]:
        return synthetic_samples(2, seed=self.seed)

    def model(self, checkpoint: str | Path | None = None, seed: int | None = None):
        """Build the method's model (set up for training, or from ``checkpoint``) and its samples with text."""
        from .build import build_cot_generator, build_model, build_specialist

        spec, components = self.make_method()
        seed_everything(self.seed if seed is None else seed)
        samples = attach_text(self.samples(), build_cot_generator(spec, components), seed=self.seed)
        if spec.specialist is not None:
            labels = train_labels(samples) if checkpoint is None else None
            return spec, build_specialist(spec, components, checkpoint, labels=labels).eval(), samples
        model = build_model(spec, components, checkpoint)
        if checkpoint is None:
            model.backbone.setup([text for sample in samples for text in (sample.question, sample.answer)])
            model.rebuild_projection()
        return spec, model.eval(), samples

    @staticmethod
    def masks(model, samples: Sequence[MdsSample]) -> list[torch.Tensor]:
        """Return the mask logits of a teacher-forced pass over ``samples`` (a specialist's, resized to each image)."""
        if isinstance(model, SpecialistModel):
            logits = model(model.to_input(samples)).mask_logits.float()
            return [torch.nn.functional.interpolate(logits[index:index + 1], size=sample.image_size,
                                                    mode="bilinear", align_corners=False)[0, 0]
                    for index, sample in enumerate(samples)]
        encoded = model.encode(samples)
        output = model.backbone(encoded.image_features, [sample.question for sample in samples],
                                [sample.answer for sample in samples])
        return model.masks_from_text(encoded, output).mask_logits

    @torch.no_grad()
    def reference(self) -> tuple[Any, Any, list[MdsSample], list[torch.Tensor]]:
        """Return the shared spec, model, samples and batched mask logits (computed once)."""
        if self._reference is None:
            spec, model, samples = self.model()
            self._reference = (spec, model, samples, self.masks(model, samples))
        return self._reference

    def test_masks_cover_each_image(self) -> None:
        _, _, samples, masks = self.reference()
        require(len(masks) == len(samples), f"{len(masks)} masks for {len(samples)} samples.")
        for mask, sample in zip(masks, samples):
            require(tuple(mask.shape) == sample.image_size and mask.is_floating_point(),
                    f"{sample.uid}: mask logits {mask.dtype} {tuple(mask.shape)}; expected floating point of the "
                    f"image's size {sample.image_size}.")

    @torch.no_grad()
    def test_batch_matches_samples(self) -> None:
        _, model, samples, batched = self.reference()
        for index, sample in enumerate(samples):
            (alone,) = self.masks(model, [sample])
            require_close(alone, batched[index], f"mask logits of {sample.uid} alone vs in the batch", atol=1e-3)

    @torch.no_grad()
    def test_deterministic_under_seed(self) -> None:
        _, _, samples, first = self.reference()
        second = self.masks(self.model()[1], samples)
        for one, two in zip(first, second):
            require(_tensors_equal(one, two), f"mask logits differ between two models built with seed {self.seed}.")

    @torch.no_grad()
    def test_checkpoint_round_trip(self) -> None:
        from .checkpoint import save_checkpoint

        spec, model, samples, before = self.reference()
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder) / "checkpoint", model, spec, step=0)
            # Another seed, so that a weight the checkpoint misses would differ.
            _, restored, _ = self.model(Path(folder) / "checkpoint", seed=self.seed + 1)
            after = self.masks(restored, samples)
        for one, two, sample in zip(after, before, samples):
            require_close(one, two, f"mask logits of {sample.uid} after a checkpoint round trip", atol=1e-4)


# --------------------------------------------------------------------- specialist


class SpecialistContract(Contract):
    """Contract of :class:`~mdskit.specialist.SpecialistModel`.

    ``make_component`` returns a model whose ``labels`` are set (the
    labels of :func:`synthetic_samples` suit any model). The checks run
    the model on the synthetic images resized by :meth:`SpecialistModel.to_input`.

    Attributes:
        image_count: Number of synthetic images in one batch.
    """

    image_count: int = 2

    def component(self, seed: int | None = None) -> SpecialistModel:
        component = self.build(seed)
        require(isinstance(component, SpecialistModel),
                f"make_component() returned {type(component).__name__}, not a SpecialistModel subclass.")
        require(bool(component.labels), "make_component() returned a specialist without labels; pass labels=[...].")
        return component.eval()

    def images(self, component: SpecialistModel) -> torch.Tensor:
        return component.to_input(synthetic_samples(self.image_count, seed=self.seed))

    @torch.no_grad()
    def test_output_shapes(self) -> None:
        component = self.component()
        images = self.images(component)
        output = component(images)
        size = component.input_size
        expected_masks = (self.image_count, 1, size, size)
        require(tuple(output.mask_logits.shape) == expected_masks and output.mask_logits.is_floating_point(),
                f"mask_logits {output.mask_logits.dtype} {tuple(output.mask_logits.shape)}; expected floating "
                f"point {expected_masks}.")
        expected_labels = (self.image_count, len(component.labels))
        require(tuple(output.label_logits.shape) == expected_labels,
                f"label_logits {tuple(output.label_logits.shape)}; expected {expected_labels} (one per label).")
        require(output.mask_logits.device == images.device, "mask_logits are not on the device of the images.")

    @torch.no_grad()
    def test_batch_matches_samples(self) -> None:
        component = self.component()
        images = self.images(component)
        batched = component(images)
        for index in range(self.image_count):
            alone = component(images[index:index + 1])
            require_close(alone.mask_logits[0], batched.mask_logits[index], f"mask logits of image {index} alone "
                          "vs in the batch", atol=1e-3)
            require_close(alone.label_logits[0], batched.label_logits[index], f"label logits of image {index} "
                          "alone vs in the batch", atol=1e-3)

    @torch.no_grad()
    def test_deterministic_under_seed(self) -> None:
        first = self.component()
        second = self.component()
        images = self.images(first)
        require(_tensors_equal(first(images).mask_logits, second(images).mask_logits),
                f"mask logits differ between two models built with seed {self.seed}.")

    @torch.no_grad()
    def test_state_dict_round_trip(self) -> None:
        source = self.component()
        _perturb(source, self.seed + 1)
        target = self.component(self.seed + 2)
        _round_trip(source, target)
        images = self.images(source)
        require_close(target.eval()(images).mask_logits, source(images).mask_logits,
                      "mask logits after a state-dict round trip", atol=1e-5)


CONTRACTS: dict[str, type[Contract]] = {
    "backbone": BackboneContract,
    "prompt": PromptModuleContract,
    "decoder": MaskDecoderContract,
    "tts": TtsStrategyContract,
    "dataset": DatasetAdapterContract,
    "metric": MetricContract,
    "cot": CotGeneratorContract,
    "specialist": SpecialistContract,
}
"""The contract class of each role key of :data:`mdskit.registry.ROLES`."""


def contract_for(role: str, factory: Callable[[], Any], **attributes: Any) -> Contract:
    """Return a contract instance of ``role`` whose ``make_component`` calls ``factory``.

    Keyword arguments override the contract's attributes (for example
    ``image_embedding_shape`` of a backbone).
    """
    base = CONTRACTS[role]
    contract_class = type(f"{base.__name__}For{getattr(factory, '__name__', 'Factory')}", (base,),
                          {"make_component": lambda self: factory(), **attributes})
    return contract_class()
