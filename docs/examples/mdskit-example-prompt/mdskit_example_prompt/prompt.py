"""A soft dense mask prompt from the Gaussian-smoothed token similarity."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mdskit.errors import ConfigError
from mdskit.prompt import DecoderPrompts, PromptModule, token_similarity


class SmoothedSimilarityPrompt(PromptModule):
    """Prompt the mask decoder with the smoothed image-token / [SEG] similarity.

    The similarity of each image token to the [SEG] embedding is min-max
    scaled per sample, smoothed with a Gaussian over the token grid, set to
    0 below ``threshold`` and placed in the decoder's prompt frame.

    Args:
        sigma: Standard deviation of the Gaussian, in token-grid cells.
        threshold: Scores below it (in [0, 1]) become 0.
    """

    name = "smoothed-similarity"

    def __init__(self, sigma: float = 1.0, threshold: float = 0.5) -> None:
        super().__init__()
        if not sigma > 0:
            raise ConfigError(f"invalid smoothed-similarity sigma {sigma!r}; set a positive number of cells.")
        if not 0 <= threshold < 1:
            raise ConfigError(f"invalid smoothed-similarity threshold {threshold!r}; choose a value in [0, 1).")
        self.sigma = float(sigma)
        self.threshold = float(threshold)

    def forward(self, image_token_embeddings, seg_embeddings, token_grid, token_frames, prompt_frames):
        rows, cols = token_grid
        scores = token_similarity(image_token_embeddings, seg_embeddings)
        low = scores.amin(dim=1, keepdim=True)
        spread = (scores.amax(dim=1, keepdim=True) - low).clamp_min(1e-12)
        maps = ((scores - low) / spread).view(-1, 1, rows, cols)
        maps = self.smooth(maps)

        masks, similarity = [], []
        for index, (token_frame, prompt_frame) in enumerate(zip(token_frames, prompt_frames)):
            image_map = token_frame.frame_to_image(maps[index:index + 1])
            similarity.append(image_map[0, 0])
            soft = torch.where(image_map >= self.threshold, image_map, torch.zeros_like(image_map))
            masks.append(prompt_frame.image_to_frame(soft)[0])
        return DecoderPrompts(dense_masks=torch.stack(masks), similarity=similarity)

    def smooth(self, maps: torch.Tensor) -> torch.Tensor:
        """Convolve B x 1 x rows x cols maps with a normalised Gaussian.

        The border is padded by reflection, or by replication on a grid too
        small to reflect.
        """
        radius = max(1, int(3 * self.sigma))
        offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
        kernel = torch.exp(-0.5 * (offsets / self.sigma) ** 2)
        kernel = kernel / kernel.sum()
        padding = (radius, radius, radius, radius)
        mode = "reflect" if min(maps.shape[-2:]) > radius else "replicate"
        padded = F.pad(maps, padding, mode=mode)
        smoothed = F.conv2d(padded, kernel.view(1, 1, 1, -1))
        return F.conv2d(smoothed, kernel.view(1, 1, -1, 1))
