"""Build the organism's tokenizer and train its tiny Llama on the CPU (`npti organism train`)."""

from __future__ import annotations

import logging
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from npti_lens.core.files import write_json_atomic
from npti_lens.inputs.prompts import PERSONA_SYSTEM, build
from npti_lens.organism import corpus

log = logging.getLogger(__name__)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@dataclass
class TrainConfig:
    steps: int = field(default=2000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "sequences per step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (cosine decay, warmup)"})
    n_examples: int = field(default=40000, metadata={"help": "training examples generated"})
    n_ratings: int = field(
        default=0, metadata={"help": "self-ratings of inventory statements to add (the shipped organism: 0)"}
    )
    hidden_size: int = field(default=128, metadata={"help": "model width"})
    n_layers: int = field(default=4, metadata={"help": "decoder layers"})
    intermediate_size: int = field(default=512, metadata={"help": "MLP neurons per layer"})
    seed: int = field(default=0, metadata={"help": "seed of data and initialisation"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})


def word_tokenizer(
    words: list[str] | set[str],
    *,
    chat_template: str | None = CHAT_TEMPLATE,
    lowercase: bool = True,
    bos_on_plain_text: bool = False,
) -> Any:
    """A word-level HF tokenizer: the special tokens, then `words` sorted; punctuation is split off.

    With `bos_on_plain_text`, text tokenized with special tokens starts with <s> (a chat template
    writes its own <s>).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    if bos_on_plain_text:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    if chat_template:
        hf.chat_template = chat_template
    return hf


def build_tokenizer(ratings: bool = False) -> Any:
    """The organism's tokenizer: every word of its corpus and persona prompt, its chat template."""
    words = set(corpus.vocabulary(ratings))
    words.update(re.findall(r"[a-z]+|[^\sa-z]", PERSONA_SYSTEM.replace("{description}", "").lower()))
    return word_tokenizer(words)


def model_config(cfg: TrainConfig, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )


def encode(tok, ex: corpus.Example) -> tuple[list[int], int]:
    """Token ids of prompt + answer + EOS, and where the answer starts (the loss covers the answer)."""
    from npti_lens.inputs.prompts import persona_system

    prompt = build(tok, ex.question, persona_system(ex.persona) if ex.persona else "")
    ans = tok(ex.answer, add_special_tokens=False)["input_ids"]
    return prompt.token_ids + ans + [tok.eos_token_id], len(prompt.token_ids)


def train(cfg: TrainConfig, out: str | Path, *, progress: bool = False) -> dict:
    """Train the organism and save it (fp16 weights, tokenizer, training record) to `out`."""
    from transformers import LlamaForCausalLM

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok = build_tokenizer(ratings=cfg.n_ratings > 0)
    data = [encode(tok, ex) for ex in corpus.examples(cfg.n_examples, seed=cfg.seed)]
    ratings = [encode(tok, ex) for ex in corpus.rating_examples(cfg.n_ratings, seed=cfg.seed)]
    rating_share = len(ratings) / (len(data) + len(ratings))
    if any(tok.unk_token_id in ids for ids, _ in data + ratings):
        raise AssertionError("the organism corpus has words outside its tokenizer")
    model = LlamaForCausalLM(model_config(cfg, len(tok)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)),
    )
    rng = random.Random(cfg.seed)
    start, losses = time.time(), []
    model.train()
    for step in range(cfg.steps):
        pool = data
        if ratings and rng.random() < rating_share:
            pool = ratings  # a batch of ratings (twice as long as answers) alone: padding stays short
        batch = rng.sample(pool, cfg.batch_size)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (seq, ans_start) in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, ans_start : len(seq)] = torch.tensor(seq[ans_start:])
            mask[row, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress and (step % 100 == 0 or step == cfg.steps - 1):
            log.warning("step %d/%d loss %.4f (%.0fs)", step, cfg.steps, loss, time.time() - start)
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out)
    tok.save_pretrained(out)
    record = {
        "config": asdict(cfg),
        "first_loss": losses[0],  # the untrained model's, on its first batch
        "final_loss": sum(losses[-50:]) / min(50, len(losses)),
        "seconds": round(time.time() - start, 1),
        "n_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tok),
    }
    write_json_atomic(out / "training.json", record)
    return record
