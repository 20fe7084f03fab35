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
from mdskit.finetune import load_adapters, save_adapters, split_adapters
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
        load_adapters(self.model, self.language_model_module(), folder)
        config = self.model.config
        self.token_grid = tuple(config.token_grid)
        self.vision_feature_dim = config.vision_feature_dim
        self.hidden_size = config.text_config.hidden_size
        logger.info("loaded the llava backbone from %s", folder)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write config, safetensors weights and tokenizer to ``folder``."""
        model, tokenizer = self._require()
        # With LoRA adapters the base weights keep their names and the adapters go to files of their own.
        base, adapters = split_adapters(model)
        model.save_pretrained(folder, state_dict=base)
        save_adapters(self.language_model_module(), adapters, folder)
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

    def target_token_count(self, questions: Sequence[str], answers: Sequence[str]) -> int:
        """Return the answer tokens (with the end token) that the causal LM loss averages over."""
        return sum(len(self._answer_ids(answer)) for answer in answers)

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
                 temperature: float = 1.0, do_sample: bool = False,
                 path_seeds: Sequence[int] | None = None) -> GeneratedAnswers:
        """Generate ``num_paths`` answers per request, sharing the prompt's key-value cache.

        The prompt (image tokens and question) is encoded once per request
        at batch 1, and its key-value cache is then repeated for the
        ``num_paths`` rows that decode together. Sampling draws from the
        softmax of the logits divided by ``temperature`` (no top-k or top-p
        filtering), and row i draws with its own generator seeded with
        ``path_seeds[i]``, so a path's answer does not depend on the other
        rows of the batch: decoding the paths one by one with the same seeds
        gives the same answers, up to floating-point differences between
        batch sizes. Without ``path_seeds`` the seeds are drawn from torch's
        global generator. Greedy decoding takes the most likely token.

        ``mean_logprobs`` are the mean log-probabilities of the generated
        tokens under the model (temperature 1), the end-of-sequence token
        included.
        """
        model, _ = self._require()
        if do_sample and path_seeds is None:
            path_seeds = torch.randint(2**62, (num_paths,)).tolist()
        if path_seeds is not None and len(path_seeds) != num_paths:
            raise ValueError(f"expected {num_paths} path seeds, got {len(path_seeds)}.")
        texts, logprobs = [], []
        for features, question in zip(image_features, questions, strict=True):
            prompt = torch.tensor([self._prompt_ids(question)], device=image_features.device)
            embeddings = self._embed(prompt, features.unsqueeze(0))
            generators = None
            if do_sample:
                generators = [torch.Generator(device=image_features.device).manual_seed(int(seed))
                              for seed in path_seeds]
            tokens, mean_logprobs = self._decode_paths(model, embeddings, num_paths, temperature, generators)
            texts.append([self._decode(row) for row in tokens])
            logprobs.append(mean_logprobs)
        return GeneratedAnswers(texts=texts, mean_logprobs=logprobs)

    def _decode_paths(self, model: MdsLlavaForCausalLM, prompt_embeddings: torch.Tensor, num_paths: int,
                      temperature: float, generators: list[torch.Generator] | None) -> tuple[torch.Tensor, list[float]]:
        """Decode ``num_paths`` rows from one prompt; return their token ids and mean log-probabilities."""
        _, tokenizer = self._require()
        language_model = self._causal_lm()
        # logits_to_keep=1 computes the vocabulary logits of the last position only.
        prefill = language_model(inputs_embeds=prompt_embeddings, use_cache=True, logits_to_keep=1)
        cache = prefill.cache
        cache.batch_repeat_interleave(num_paths)
        logits = prefill.logits[:, -1].expand(num_paths, -1)

        device = prompt_embeddings.device
        finished = torch.zeros(num_paths, dtype=torch.bool, device=device)
        totals = torch.zeros(num_paths, dtype=torch.float64, device=device)
        counts = torch.zeros(num_paths, dtype=torch.long, device=device)
        steps: list[torch.Tensor] = []
        for _ in range(self.max_new_tokens):
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            if generators is None:
                next_tokens = log_probs.argmax(dim=-1)
            else:
                next_tokens = _sample_rows(log_probs / temperature, generators)
            next_tokens = torch.where(finished, torch.full_like(next_tokens, tokenizer.pad_token_id), next_tokens)
            chosen = log_probs.gather(1, next_tokens[:, None])[:, 0]
            totals += torch.where(finished, torch.zeros_like(chosen), chosen)
            counts += (~finished).long()
            steps.append(next_tokens)
            finished |= next_tokens == tokenizer.eos_token_id
            if bool(finished.all()):
                break
            output = language_model(input_ids=next_tokens[:, None], cache=cache, use_cache=True)
            cache = output.cache
            logits = output.logits[:, -1]
        tokens = torch.stack(steps, dim=1)
        return tokens, (totals / counts.clamp(min=1)).tolist()

    def _embed(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Input embeddings with the image features at the ``<image>`` tokens."""
        model, _ = self._require()
        return model.embed(input_ids, image_features)

    def _causal_lm(self) -> torch.nn.Module:
        """Return the causal language model that decodes from input embeddings and a key-value cache."""
        model, _ = self._require()
        return model.language_model

    def language_model_module(self) -> torch.nn.Module:
        """Return the language model whose layers take LoRA adapters and gradient checkpointing."""
        return self._causal_lm()

    def trainable_parts(self) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters of the parts that fine-tuning can unfreeze, by part name."""
        model, _ = self._require()
        language_model = self._causal_lm()
        return {"multimodal_projector": list(model.multi_modal_projector.parameters()),
                "lm_head": list(language_model.get_output_embeddings().parameters()),
                "embeddings": list(language_model.get_input_embeddings().parameters())}

    def _decode(self, token_ids: torch.Tensor) -> str:
        _, tokenizer = self._require()
        text = tokenizer.decode(token_ids.tolist(), skip_special_tokens=False)
        for token in (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token, IMAGE_TOKEN):
            if token:
                text = text.replace(token, "")
        return text.strip()


def _sample_rows(scaled_log_probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Draw one token per row from softmax(row), row i with ``generators[i]``."""
    probabilities = torch.softmax(scaled_log_probs, dim=-1)
    drawn = [torch.multinomial(row, 1, generator=generator)
             for row, generator in zip(probabilities, generators, strict=True)]
    return torch.cat(drawn)
