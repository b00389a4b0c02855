"""A Hugging Face sequence-classification model as the reward."""

from __future__ import annotations

from pathlib import Path

from .base import REQUIRED, RewardKind, checked_number, messages, register_reward, text_of


class HFRewardModel:
    """A Hugging Face sequence-classification model scoring prompt + completion: logits[:, index].

    A conversation is rendered with the reward tokenizer's chat template when it has one (as TRL does for
    reward models); otherwise the prompt and completion texts are concatenated (with a newline between the two
    for a conversation)."""

    def __init__(self, model, index=0, batch_size=16, device=None, name=None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import resolve_model

        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        if self.tokenizer.pad_token is None:  # decoder reward models often have none; the model needs one to
            self.tokenizer.pad_token = self.tokenizer.eos_token  # find each row's last token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        num_labels = self.model.config.num_labels
        self.index = int(index)
        if not -num_labels <= self.index < num_labels:
            raise ValueError(f"reward model {model!r} has {num_labels} labels; index {self.index} is out of range")
        self.batch_size = int(batch_size)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.__name__ = name or Path(str(model).rstrip("/")).name

    def texts(self, prompts, completions) -> tuple[list[str], bool]:
        """(texts, rendered): rendered says the chat template already added the special tokens."""
        conversational = not isinstance(prompts[0], str) or not isinstance(completions[0], str)
        if conversational and getattr(self.tokenizer, "chat_template", None):
            pairs = zip(prompts, completions, strict=True)
            chats = [messages(p, "user") + messages(c, "assistant") for p, c in pairs]
            return [self.tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats], True
        sep = "\n" if conversational else ""  # plain strings: the completion continues the prompt, as in TRL
        return [text_of(p) + sep + text_of(c) for p, c in zip(prompts, completions, strict=True)], False

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        import torch

        if len(completions) == 0:
            return []
        texts, rendered = self.texts(prompts, completions)
        scores = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, padding_side="right", add_special_tokens=not rendered)
                logits = self.model(**batch.to(self.device)).logits
                scores += logits[:, self.index].float().cpu().tolist()
        return scores


@register_reward
class HFKind(RewardKind):
    name = "hf"
    syntax = "hf:ID_OR_PATH[:INDEX]"
    help = "a sequence-classification reward model on prompt + completion, logits[:, INDEX]"
    keys = {"model": REQUIRED, "index": 0, "batch_size": 16}

    def from_string(self, text):
        rest = text.partition(":")[2]
        model, sep, index = rest.rpartition(":")  # a path may hold colons; a last integer is the index
        if sep and _is_int(index):
            return {"model": model, "index": int(index)}
        return {"model": rest}

    def validate(self, args):
        if not str(args.get("model", "")).strip():
            raise ValueError("needs a model id or path")
        checked_number(args["index"], "index", integer=True)
        checked_number(args["batch_size"], "batch_size", 1, integer=True)

    def check(self, args, spec):
        from ..models import check_pretrained

        try:
            check_pretrained(str(args["model"]), "model")
        except ValueError as e:
            raise ValueError(f"reward {spec!r}: {e}") from None

    def build(self, args, name, tokenizer, spec):
        return HFRewardModel(args["model"], index=args["index"], batch_size=args["batch_size"], name=name)


def _is_int(s) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False
