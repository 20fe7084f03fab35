"""The composite MDS model: backbone, prompt module and mask decoder.

The model stays thin: it moves tensors between the components and applies
the ``[SEG]`` projection MLP that LISA adds between the language model and
the mask decoder. The same :meth:`MdsModel.masks_from_text` path serves
teacher-forced training and free generation, so the prompt module is applied
in both (the reference Sim4Seg code skips it when generating).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .backbone import BackboneOutput, VisionLanguageBackbone
from .decoder import MaskDecoder
from .errors import ConfigError
from .geometry import Frame
from .prompt import DecoderPrompts, PromptModule
from .sample import MdsSample

EMPTY_LOGIT = -20.0
"""Mask logit given to every pixel of an answer that has no ``[SEG]``."""


@dataclass
class EncodedImages:
    """Per-image tensors computed once per request.

    Attributes:
        image_embeddings: B x C x h x w from the mask decoder's image encoder.
        image_features: B x T x Dv inputs of the backbone's image tokens.
        decoder_frames: Each image's placement in the decoder's frame.
        token_frames: Each image's placement under the backbone's token grid.
    """

    image_embeddings: torch.Tensor
    image_features: torch.Tensor
    decoder_frames: list[Frame]
    token_frames: list[Frame]

    def select(self, rows: Sequence[int]) -> EncodedImages:
        """Select the encoded images at ``rows``, repeating those listed more than once."""
        index = torch.as_tensor(list(rows), device=self.image_embeddings.device, dtype=torch.long)
        return EncodedImages(self.image_embeddings[index], self.image_features[index],
                             [self.decoder_frames[row] for row in rows], [self.token_frames[row] for row in rows])


@dataclass
class TextMasks:
    """Masks decoded from the ``[SEG]`` tokens of B answers.

    Attributes:
        mask_logits: Per answer, an H x W logit map in its image frame; the
            union (pixel-wise maximum) over the answer's ``[SEG]`` tokens,
            or ``EMPTY_LOGIT`` everywhere when it has none.
        seg_found: Per answer, whether it holds at least one ``[SEG]``.
        iou_scores: Per answer, the decoder's predicted IoU (maximum over
            its ``[SEG]`` tokens; 0 without one).
        prompts: The decoder prompts used, one row per ``[SEG]`` token.
    """

    mask_logits: list[torch.Tensor]
    seg_found: list[bool]
    iou_scores: list[float]
    prompts: DecoderPrompts | None


class MdsModel(nn.Module):
    """Backbone + optional prompt module + mask decoder.

    Args:
        backbone: The vision-language backbone (built or loaded).
        decoder: The mask decoder.
        prompt_module: The similarity-to-mask module, or None (LISA).
    """

    def __init__(self, backbone: VisionLanguageBackbone, decoder: MaskDecoder,
                 prompt_module: PromptModule | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.prompt_module = prompt_module
        self.seg_projection = self._projection(backbone.hidden_size, decoder.prompt_embed_dim)
        self.projection_pretrained = False

    @staticmethod
    def _projection(hidden_size: int, prompt_dim: int) -> nn.Sequential:
        # LISA's text_hidden_fcs: hidden -> hidden -> ReLU -> prompt width.
        return nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, prompt_dim))

    def rebuild_projection(self) -> None:
        """Rebuild the ``[SEG]`` projection after the backbone's width is known; keep a pretrained one."""
        if self.projection_pretrained:
            return
        self.seg_projection = self._projection(self.backbone.hidden_size, self.decoder.prompt_embed_dim)

    @property
    def device(self) -> torch.device:
        return next(self.seg_projection.parameters()).device

    def encode(self, samples: Sequence[MdsSample]) -> EncodedImages:
        """Encode the images of ``samples`` (cached by the decoder)."""
        images = [sample.image for sample in samples]
        embeddings = self.decoder.encode_images(images).to(self.device)
        decoder_frames = [self.decoder.prompt_frame(sample.image_size) for sample in samples]
        token_frames = [self.backbone.token_frame(sample.image_size, frame)
                        for sample, frame in zip(samples, decoder_frames, strict=True)]
        features = self.backbone.image_features(images, embeddings)
        return EncodedImages(embeddings, features, decoder_frames, token_frames)

    def masks_from_text(self, encoded: EncodedImages, output: BackboneOutput, num_perturbations: int = 1,
                        perturbation_seeds: Sequence[int] | None = None) -> TextMasks:
        """Decode one mask per ``[SEG]`` token of each row and fuse them per row.

        Args:
            encoded: The encoded image of each row of ``output``.
            output: A teacher-forced backbone pass over question and answer.
            num_perturbations: Region prompts per row (n). Beyond the
                prompt module's own prompt, n - 1 perturbed ones come from
                its ``perturbed_prompts`` method; each gives a mask.
            perturbation_seeds: Per row, the seed of its perturbations'
                random choices, so a row's prompts do not depend on the
                other rows (0 for every row when None).

        Returns:
            Masks for B x n (row, prompt) pairs, entry ``row * n + k`` for
            prompt k, where prompt 0 is the unperturbed one.

        Raises:
            ConfigError: ``num_perturbations`` is above 1 but the method has
                no prompt module that can perturb its prompts.
        """
        self._check_perturbable(num_perturbations)
        rows, positions = torch.nonzero(output.seg_token_mask, as_tuple=True)
        batch = output.hidden_states.shape[0]
        expanded = encoded.select([row for row in range(batch) for _ in range(num_perturbations)])
        if rows.numel() == 0:
            empty = [torch.full(frame.image_size, EMPTY_LOGIT, device=self.device)
                     for frame in expanded.decoder_frames]
            return TextMasks(empty, [False] * len(empty), [0.0] * len(empty), None)

        # Project the [SEG] states and each row's image-token states.
        seg_embeddings = self.seg_projection(output.hidden_states[rows, positions])
        tokens = output.hidden_states[output.image_token_mask].view(batch, -1, output.hidden_states.shape[-1])
        token_embeddings = self.seg_projection(tokens)[rows]

        row_list = rows.tolist()
        prompts = self._prompts(token_embeddings, seg_embeddings, encoded.select(row_list))
        image_embeddings = encoded.image_embeddings[rows]
        decoder_prompts = prompts
        if num_perturbations > 1:
            seeds = [perturbation_seeds[row] if perturbation_seeds is not None else 0 for row in row_list]
            decoder_prompts = self._with_perturbations(prompts, encoded.select(row_list), num_perturbations, seeds)
            image_embeddings = image_embeddings.repeat_interleave(num_perturbations, dim=0)
            seg_embeddings = seg_embeddings.repeat_interleave(num_perturbations, dim=0)
            row_list = [row * num_perturbations + k for row in row_list for k in range(num_perturbations)]

        # One decoder call for all [SEG] tokens and prompts of the batch.
        decoded = self.decoder(image_embeddings, seg_embeddings.unsqueeze(1), decoder_prompts)
        return self._fuse_rows(decoded.mask_logits, decoded.iou_scores, row_list, expanded, prompts)

    def _check_perturbable(self, num_perturbations: int) -> None:
        if num_perturbations > 1 and not hasattr(self.prompt_module, "perturbed_prompts"):
            name = getattr(self.prompt_module, "name", None)
            raise ConfigError(
                f"{num_perturbations} region prompts per path were requested, but the method's prompt module "
                f"({name or 'none'}) has no region prompt to perturb; set the number of perturbations to 1 "
                "or use a method with the rvls2m prompt module.")

    def _with_perturbations(self, prompts: DecoderPrompts, encoded: EncodedImages, count: int,
                            seeds: Sequence[int]) -> DecoderPrompts:
        """Interleave each [SEG] token's prompt with ``count - 1`` perturbed versions of it."""
        dense = prompts.dense_masks
        perturbed = torch.cat([
            self.prompt_module.perturbed_prompts([similarity], [frame], count - 1,
                                                 torch.Generator().manual_seed(seed), dtype=dense.dtype)
            for similarity, frame, seed in zip(prompts.similarity, encoded.decoder_frames, seeds, strict=True)
        ]).to(dense.device)
        perturbed = perturbed.view(dense.shape[0], count - 1, *dense.shape[1:])
        interleaved = torch.cat([dense.unsqueeze(1), perturbed], dim=1).flatten(0, 1)
        return DecoderPrompts(dense_masks=interleaved, similarity=prompts.similarity)

    def _prompts(self, token_embeddings: torch.Tensor, seg_embeddings: torch.Tensor,
                 encoded: EncodedImages) -> DecoderPrompts:
        if self.prompt_module is None:
            return DecoderPrompts()
        return self.prompt_module(token_embeddings, seg_embeddings, self.backbone.token_grid,
                                  encoded.token_frames, encoded.decoder_frames)

    def _fuse_rows(self, mask_logits: torch.Tensor, iou_scores: torch.Tensor, rows: list[int],
                   encoded: EncodedImages, prompts: DecoderPrompts) -> TextMasks:
        batch = len(encoded.decoder_frames)
        fused: list[torch.Tensor | None] = [None] * batch
        scores = [0.0] * batch
        for index, row in enumerate(rows):
            frame = encoded.decoder_frames[row]
            logits = frame.frame_to_image(mask_logits[index:index + 1])[0, 0]
            fused[row] = logits if fused[row] is None else torch.maximum(fused[row], logits)
            scores[row] = max(scores[row], float(iou_scores[index, 0].detach()))
        masks = [logits if logits is not None else
                 torch.full(encoded.decoder_frames[row].image_size, EMPTY_LOGIT, device=self.device)
                 for row, logits in enumerate(fused)]
        return TextMasks(masks, [logits is not None for logits in fused], scores, prompts)


def as_numpy_mask(mask_logits: torch.Tensor) -> np.ndarray:
    """Binary H x W mask (``logits > 0``) as a numpy bool array."""
    return (mask_logits > 0).detach().cpu().numpy()
