"""`Trainer` and `Seq2SeqTrainer` whose `push_to_hub` uploads the synthesizer model card (with the Trainer's
hyperparameters and evaluation results) instead of transformers' generic one: the public `create_model_card` hook,
overridden by `SynthesizerModelCardMixin`. Models that are not synthesizers get transformers' card."""

from transformers import Seq2SeqTrainer, Trainer

from .model_card import SynthesizerModelCardMixin


class SynthesizerTrainer(SynthesizerModelCardMixin, Trainer):
    """`transformers.Trainer`; `push_to_hub` uploads the synthesizer model card."""


class SynthesizerSeq2SeqTrainer(SynthesizerModelCardMixin, Seq2SeqTrainer):
    """`transformers.Seq2SeqTrainer`; `push_to_hub` uploads the synthesizer model card."""
