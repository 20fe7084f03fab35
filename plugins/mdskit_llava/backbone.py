"""``llava``: a LLaVA-style backbone that reads the mask decoder's image embeddings.

The language model is a Llama decoder built from a config (no download);
its tokenizer is a byte-level BPE trained on the training texts, with
``<image>`` and ``[SEG]`` in the vocabulary. Image tokens are the mask
decoder's frozen image embeddings (for LiteMedSAM, a medical TinyViT),
average-pooled to the token grid and passed through the projection MLP, so
the expensive image encoder runs once per image for both the language model
and the mask decoder.

With ``pretrained`` set, the same code loads a local folder in transformers'
format written by :meth:`LlavaBackbone.save_pretrained`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from transformers import LlamaConfig, PreTrainedTokenizerFast

from mdskit import SEG_TOKEN
from mdskit.backbone import BackboneOutput, GeneratedAnswers, VisionLanguageBackbone
from mdskit.errors import CheckpointError
from mdskit.geometry import Frame

from .modeling import MdsLlavaConfig, MdsLlavaForCausalLM
from .tokenizer import IMAGE_TOKEN, train_tokenizer

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


class LlavaBackbone(VisionLanguageBackbone):
    """LLaVA-style backbone over the mask decoder's image embeddings.

    Args:
        pretrained: Local folder written by ``save_pretrained``; when set,
            the size arguments below are read from it instead.
        hidden_size: Width of the language model.
        num_layers: Number of decoder layers.
        num_heads: Attention heads per layer.
        intermediate_size: Width of the feed-forward layers.
        vocab_size: Size of the byte-level BPE vocabulary to train.
        token_grid: Image tokens per side; T = token_grid ** 2.
        vision_feature_dim: Channels of the decoder's image embeddings.
        max_new_tokens: Longest answer generated, in tokens.
    """

    name = "llava"

    def __init__(self, pretrained: str | None = None, hidden_size: int = 256, num_layers: int = 4,
                 num_heads: int = 4, intermediate_size: int = 768, vocab_size: int = 1024,
                 token_grid: int = 16, vision_feature_dim: int = 256, max_new_tokens: int = 96) -> None:
        super().__init__()
        self.max_new_tokens = max_new_tokens
        self.model: MdsLlavaForCausalLM | None = None
        self.tokenizer: PreTrainedTokenizerFast | None = None
        self._sizes = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                           intermediate_size=intermediate_size, vocab_size=vocab_size)
        self.token_grid = (token_grid, token_grid)
        self.vision_feature_dim = vision_feature_dim
        self.hidden_size = hidden_size
        if pretrained:
            self._load(Path(pretrained))

    # ----------------------------------------------------------------- building

    def setup(self, corpus: Sequence[str]) -> None:
        """Train the tokenizer on ``corpus`` and build a randomly initialised model."""
        if self.model is not None:
            return
        sizes = self._sizes
        self.tokenizer = train_tokenizer(corpus, sizes["vocab_size"])
        text_config = LlamaConfig(
            vocab_size=len(self.tokenizer), hidden_size=sizes["hidden_size"],
            intermediate_size=sizes["intermediate_size"], num_hidden_layers=sizes["num_layers"],
            num_attention_heads=sizes["num_heads"], num_key_value_heads=sizes["num_heads"],
            max_position_embeddings=2048, pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
        config = MdsLlavaConfig(
            text_config=text_config, vision_feature_dim=self.vision_feature_dim,
            image_token_id=self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            seg_token_id=self.tokenizer.convert_tokens_to_ids(SEG_TOKEN), token_grid=self.token_grid,
        )
        self.model = MdsLlavaForCausalLM(config)
        logger.info("built a randomly initialised language model (%d parameters, vocabulary %d)",
                    sum(p.numel() for p in self.model.parameters()), len(self.tokenizer))

    def _load(self, folder: Path) -> None:
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"backbone folder {folder} has no config.json; pass a folder written by "
                "save_pretrained (a trained mdskit checkpoint holds it under backbone/).")
        try:
            self.model = MdsLlavaForCausalLM.from_pretrained(folder)
            self.tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            raise CheckpointError(f"cannot load the llava backbone from {folder}: {error}") from error
        for token in (IMAGE_TOKEN, SEG_TOKEN):
            if token not in self.tokenizer.get_vocab():
                raise CheckpointError(f"the tokenizer in {folder} has no {token} token; it was not "
                                      "written by this backbone.")
        config = self.model.config
        self.token_grid = tuple(config.token_grid)
        self.vision_feature_dim = config.vision_feature_dim
        self.hidden_size = config.text_config.hidden_size
        logger.info("loaded the llava backbone from %s", folder)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config, safetensors weights and tokenizer to ``folder``."""
        model, tokenizer = self._require()
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    def _require(self) -> tuple[MdsLlavaForCausalLM, PreTrainedTokenizerFast]:
        if self.model is None or self.tokenizer is None:
            raise RuntimeError("the llava backbone is not built yet; call setup(corpus) or pass pretrained=FOLDER.")
        return self.model, self.tokenizer

    # ----------------------------------------------------------------- images

    def token_frame(self, image_size: tuple[int, int], decoder_frame: Frame) -> Frame:
        """The token grid covers the decoder's frame, whose embeddings it pools."""
        return decoder_frame

    def image_features(self, images: Sequence[np.ndarray], image_embeddings: torch.Tensor) -> torch.Tensor:
        """Pool B x C x h x w decoder embeddings to B x T x C image-token features."""
        pooled = F.adaptive_avg_pool2d(image_embeddings, self.token_grid)
        return pooled.flatten(2).transpose(1, 2)

    # ----------------------------------------------------------------- text

    def _prompt_ids(self, question: str) -> list[int]:
        _, tokenizer = self._require()
        tokens = self.token_grid[0] * self.token_grid[1]
        prompt = f"{tokenizer.bos_token}USER: {IMAGE_TOKEN * tokens}\n{question.strip()} ASSISTANT:"
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _answer_ids(self, answer: str) -> list[int]:
        _, tokenizer = self._require()
        return tokenizer(f" {answer.strip()}{tokenizer.eos_token}", add_special_tokens=False)["input_ids"]

    def _batch(self, questions: Sequence[str], answers: Sequence[str], device: torch.device):
        _, tokenizer = self._require()
        rows, labels = [], []
        for question, answer in zip(questions, answers, strict=True):
            prompt, target = self._prompt_ids(question), self._answer_ids(answer)
            rows.append(prompt + target)
            labels.append([IGNORE_INDEX] * len(prompt) + target)
        length = max(len(row) for row in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([row + [pad] * (length - len(row)) for row in rows], device=device)
        label_ids = torch.tensor([row + [IGNORE_INDEX] * (length - len(row)) for row in labels], device=device)
        attention_mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows], device=device)
        return input_ids, label_ids, attention_mask

    def forward(self, image_features: torch.Tensor, questions: Sequence[str],
                answers: Sequence[str]) -> BackboneOutput:
        """Teacher-forced pass; the loss covers the answer tokens only."""
        model, _ = self._require()
        input_ids, labels, attention_mask = self._batch(questions, answers, image_features.device)
        output = model(input_ids, image_features, attention_mask=attention_mask, labels=labels)
        return BackboneOutput(
            loss=output.loss,
            hidden_states=output.hidden_states[-1],
            image_token_mask=input_ids == model.config.image_token_id,
            seg_token_mask=(input_ids == model.config.seg_token_id) & (labels != IGNORE_INDEX),
        )

    @torch.no_grad()
    def generate(self, image_features: torch.Tensor, questions: Sequence[str], num_paths: int = 1,
                 temperature: float = 1.0, do_sample: bool = False) -> GeneratedAnswers:
        """Generate ``num_paths`` answers per request; the paths of one request share one batch."""
        model, tokenizer = self._require()
        texts, logprobs = [], []
        for features, question in zip(image_features, questions, strict=True):
            prompt = torch.tensor([self._prompt_ids(question)], device=image_features.device)
            embeddings = model.embed(prompt, features.unsqueeze(0))
            sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
            output = model.language_model.generate(
                inputs_embeds=embeddings, attention_mask=torch.ones_like(prompt),
                max_new_tokens=self.max_new_tokens, num_return_sequences=num_paths,
                output_scores=True, return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **sampling,
            )
            scores = model.language_model.compute_transition_scores(
                output.sequences, output.scores, normalize_logits=True)
            texts.append([self._decode(row) for row in output.sequences])
            logprobs.append(self._mean_logprobs(output.sequences, scores))
        return GeneratedAnswers(texts=texts, mean_logprobs=logprobs)

    def _decode(self, token_ids: torch.Tensor) -> str:
        _, tokenizer = self._require()
        text = tokenizer.decode(token_ids.tolist(), skip_special_tokens=False)
        for token in (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, IMAGE_TOKEN):
            text = text.replace(token, "")
        return text.strip()

    def _mean_logprobs(self, sequences: torch.Tensor, scores: torch.Tensor) -> list[float]:
        _, tokenizer = self._require()
        generated = sequences[:, -scores.shape[1]:]
        # Tokens after the end of an answer are padding and carry no probability.
        valid = (generated != tokenizer.pad_token_id) & torch.isfinite(scores)
        totals = torch.where(valid, scores, torch.zeros_like(scores)).sum(dim=1)
        return (totals / valid.sum(dim=1).clamp(min=1)).tolist()
