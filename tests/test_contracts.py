"""The mdskit.testing contracts over every registered component and method.

Every component in the registry runs its role's contract with a small
configuration. The second half checks that each contract catches a
deliberately broken component of its role with the expected message.
"""

from __future__ import annotations

import importlib.util
import inspect
import math

import numpy as np
import pytest
import torch
from mdskit_datasets.phantom import PhantomAdapter
from mdskit_datasets.template_cot import TemplateCot
from mdskit_litemedsam.litemedsam import LiteMedSAM
from mdskit_llava.backbone import LlavaBackbone
from mdskit_rvls2m.rvls2m import RVLS2M
from mdskit_tts.greedy import Greedy
from mdskit_tts.self_consistency import SelfConsistency

from mdskit.methods import load_registry
from mdskit.metrics import Metric
from mdskit.plugins import load_plugins
from mdskit.prompt import DecoderPrompts, PromptModule, token_similarity
from mdskit.registry import ROLES
from mdskit.testing import (
    CONTRACTS, BackboneContract, ContractViolation, CotGeneratorContract, DatasetAdapterContract,
    MaskDecoderContract, MethodContract, MetricContract, PromptModuleContract, TtsStrategyContract,
    contract_for, run_contract,
)
from mdskit.tts import Selection
from tiny_layouts import save_llava_hf, save_sam

COMPONENTS, PLUGIN_METHODS = load_plugins()
TINY_LLAVA = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300, token_grid=4,
                  vision_feature_dim=16, max_new_tokens=4)
REAL_DATASETS = ("busi", "kvasir", "ph2", "shenzhen")
TINY_SPECIALIST = dict(labels=["benign", "malignant", "normal"], input_size=64, width=8, classifier_size=64,
                       pretrained_classifier=False)
NEEDS_MMSEG = pytest.mark.skipif(importlib.util.find_spec("mmseg") is None,
                                 reason="mmsegmentation is not installed; run 'bash scripts/setup.sh --with specialist'")


@pytest.fixture(scope="module", autouse=True)
def embedding_cache(tmp_path_factory):
    """One LiteMedSAM disk cache for the module, so each synthetic image is encoded once."""
    folder = tmp_path_factory.mktemp("embeddings")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MDSKIT_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def published_folders(tmp_path_factory) -> dict[str, str]:
    """Tiny checkpoints in the published layouts that the llava-hf backbone and sam decoder read."""
    root = tmp_path_factory.mktemp("published")
    return {"llava-hf": str(save_llava_hf(root / "llava")), "sam": str(save_sam(root / "sam" / "sam_tiny.pth"))}


def factories(role: str, name: str, dataset_folder=None, published=None):
    """Return (factory, contract attributes) for a registered component in a small configuration."""
    component = COMPONENTS.get(role, name)
    if name == "llava-hf":
        return (lambda: component(pretrained=published[name], max_new_tokens=4)), {
            "load_component": lambda self, original, folder: component(pretrained=folder, max_new_tokens=4)}
    if name == "sam":
        return (lambda: component(checkpoint=published[name])), {}
    if role == "backbone":
        # max_new_tokens is a constructor parameter that checkpoints pass again, not a saved one.
        return (lambda: component(**TINY_LLAVA)), {
            "image_embedding_shape": (16, 8, 8),
            "load_component": lambda self, original, folder: component(pretrained=folder, **TINY_LLAVA)}
    if role == "prompt":
        # Shrink RVLS2M-style grids to the contract's 4 x 4 token grid; other modules keep their defaults.
        accepted = inspect.signature(component).parameters
        small = {key: value for key, value in {"grid": 4, "top_n": 3}.items() if key in accepted}
        return (lambda: component(**small)), {}
    if role == "tts":
        paths = 1 if name == "none" else 3
        return (lambda: component(num_paths=paths, temperature=1.0)), {}
    if role == "dataset":
        if name == "phantom":
            return (lambda: component(None, case_count=6)), {}
        folder = dataset_folder(name)
        return (lambda: component(folder)), {}
    if role == "specialist":
        return (lambda: component(**TINY_SPECIALIST)), {}
    return (lambda: component()), {}


def component_cases():
    cases = []
    for role in ROLES:
        for name in COMPONENTS.names(role.key):
            marks = [pytest.mark.data] if name in REAL_DATASETS else []
            if role.key == "specialist":
                marks.append(NEEDS_MMSEG)
            cases.append(pytest.param(role.key, name, id=f"{role.key}-{name}", marks=marks))
    return cases


def test_every_role_has_a_contract():
    assert set(CONTRACTS) == {role.key for role in ROLES}


def test_first_party_components_are_all_covered():
    expected = {"backbone": ["llava", "llava-hf"], "prompt": ["rvls2m", "similarity-box", "similarity-points"],
                "decoder": ["litemedsam", "sam"],
                "tts": ["best-of-n", "none", "oracle", "prompt-ensemble", "region-perturbation", "self-consistency"], "dataset": ["busi", "kvasir", "ph2", "phantom", "shenzhen"],
                "metric": ["accuracy", "ciou", "dice", "giou", "macro_f1"], "cot": ["template"],
                "specialist": ["mmseg-timm"]}
    assert {role.key: COMPONENTS.names(role.key) for role in ROLES} == expected


@pytest.mark.parametrize(("role", "name"), component_cases())
def test_registered_component_passes_contract(role, name, request):
    dataset_folder = request.getfixturevalue("dataset_folder") if name in REAL_DATASETS else None
    published = request.getfixturevalue("published_folders") if name in ("llava-hf", "sam") else None
    factory, attributes = factories(role, name, dataset_folder, published)
    violations = run_contract(contract_for(role, factory, **attributes))
    assert violations == {}


class SmallMethod(MethodContract):
    name = ""

    def make_method(self):
        return load_registry(None, COMPONENTS, PLUGIN_METHODS).method(self.name), COMPONENTS


def method_cases():
    registry = load_registry(None, COMPONENTS, PLUGIN_METHODS)
    return [pytest.param(name, marks=[NEEDS_MMSEG] if registry.methods[name].specialist else [], id=name)
            for name in sorted(registry.methods)]


@pytest.mark.parametrize("method", method_cases())
def test_registered_method_passes_contract(method):
    contract = type(f"Contract_{method}", (SmallMethod,), {"name": method})()
    assert run_contract(contract) == {}


# ------------------------------------------------------------------ broken components


def only_check(contract, check: str) -> str:
    """Run one check, which must fail, and return its message."""
    with pytest.raises(ContractViolation) as caught:
        getattr(contract, check)()
    return str(caught.value)


class ShortFeatureLlava(LlavaBackbone):
    """Drops the last image token, so T no longer matches the token grid."""

    def image_features(self, images, image_embeddings):
        return super().image_features(images, image_embeddings)[:, :-1]


def test_backbone_contract_catches_missing_image_token():
    class Broken(BackboneContract):
        image_embedding_shape = (16, 8, 8)

        def make_component(self):
            return ShortFeatureLlava(**TINY_LLAVA)

    message = only_check(Broken(), "test_output_types_and_shapes")
    assert message == "image_features has shape (2, 15, 16); expected B x T x Dv with T = 16."


class BatchNormalizedPrompt(PromptModule):
    """Scales the similarity over the whole batch, so a sample depends on the others."""

    name = "batch-normalized"

    def forward(self, image_token_embeddings, seg_embeddings, token_grid, token_frames, prompt_frames):
        scores = token_similarity(image_token_embeddings, seg_embeddings)
        scores = (scores - scores.min()) / (scores.max() - scores.min())
        grid = scores.view(-1, 1, *token_grid)
        size = prompt_frames[0].size
        return DecoderPrompts(dense_masks=torch.nn.functional.interpolate(grid, size=size))


def test_prompt_contract_catches_batch_dependence():
    class Broken(PromptModuleContract):
        def make_component(self):
            return BatchNormalizedPrompt()

    violations = run_contract(Broken())
    assert set(violations) == {"test_batch_matches_samples"}
    assert violations["test_batch_matches_samples"].startswith(
        "dense_masks of sample 0 alone vs in the batch: values differ by up to")


def test_prompt_contract_passes_rvls2m_default():
    class Default(PromptModuleContract):
        def make_component(self):
            return RVLS2M(grid=8, top_n=10)

    assert run_contract(Default()) == {}


class Float32Decoder(LiteMedSAM):
    """Always returns float32 logits, whatever the embeddings' dtype."""

    def forward(self, image_embeddings, sparse_embeddings, prompts):
        output = super().forward(image_embeddings, sparse_embeddings, prompts)
        output.mask_logits = output.mask_logits.float()
        return output


def test_decoder_contract_catches_fixed_dtype():
    class Broken(MaskDecoderContract):
        def make_component(self):
            return Float32Decoder()

    message = only_check(Broken(), "test_dtype_and_device_follow_inputs")
    assert message == ("mask_logits is torch.float32 on cpu for torch.float64 image embeddings on cpu; follow the "
                       "image embeddings' dtype and device.")


class LogitMaskGreedy(Greedy):
    """Returns the logits as the mask instead of a bool mask."""

    def select(self, candidates):
        selection = super().select(candidates)
        return Selection(selection.text, selection.diagnosis, candidates[0].mask_logits, selection.chosen)


def test_tts_contract_catches_float_mask():
    class Broken(TtsStrategyContract):
        def make_component(self):
            return LogitMaskGreedy()

    message = only_check(Broken(), "test_selection_types_and_shapes")
    assert message == ("Selection.mask is torch.float32 (24, 32); expected a bool H x W mask of the candidates' "
                       "size (24, 32).")


class NarrowListVote(SelfConsistency):
    """Lists only the first path's mask but fuses the masks of every voter."""

    def __init__(self) -> None:
        super().__init__(num_paths=4, max_fused_paths=0)

    def masks_needed(self, candidates):
        return [0]


def test_tts_contract_catches_masks_needed_too_narrow():
    class Broken(TtsStrategyContract):
        def make_component(self):
            return NarrowListVote()

    message = only_check(Broken(), "test_needed_masks_suffice")
    assert message.startswith("select read a mask that masks_needed did not list (candidate 2 has no decoded mask.")


class UintMaskPhantom(PhantomAdapter):
    """Stores masks as uint8 instead of bool."""

    def generate_case(self, index):
        case = super().generate_case(index)
        case.mask = case.mask.astype(np.uint8)
        return case


def test_dataset_contract_catches_uint8_mask():
    class Broken(DatasetAdapterContract):
        def make_component(self):
            return UintMaskPhantom(None, case_count=3)

    violations = run_contract(Broken())
    assert set(violations) == {"test_cases_are_well_formed"}
    assert violations["test_cases_are_well_formed"].startswith("phantom/phantom-000: mask is uint8")


class ZeroWhenEmpty(Metric):
    """Scores an empty result list 0 instead of NaN."""

    name = "zero-when-empty"

    def compute(self, results):
        return sum(result.iou for result in results) / len(results) if results else 0.0


def test_metric_contract_catches_empty_value():
    class Broken(MetricContract):
        def make_component(self):
            return ZeroWhenEmpty()

    violations = run_contract(Broken())
    assert violations == {"test_empty_results_give_nan": "compute([]) returned 0.0; expected NaN."}
    assert math.isfinite(ZeroWhenEmpty().compute(Broken().results()))


class NoSegCot(TemplateCot):
    """Forgets the [SEG] token at the end of the answer."""

    name = "no-seg"

    def generate(self, sample):
        return super().generate(sample).replace("[SEG]", "").strip()


def test_cot_contract_catches_missing_seg():
    class Broken(CotGeneratorContract):
        def make_component(self):
            return NoSegCot()

    violations = run_contract(Broken())
    assert set(violations) == {"test_answers_parse_back"}
    assert violations["test_answers_parse_back"].startswith("the answer for synthetic/case-000 has no [SEG]")
