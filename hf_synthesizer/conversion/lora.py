"""LoRA (peft) on synthesizer models: what PEFT cannot say by itself.

Pick targets with PEFT: `target_modules="all-linear"` adapts every linear layer that exists, whatever the variant
(`query`/`key` only where a vanilla term has them, `value`, the attention output and feed-forward layers, and the
dense synthesizers' own `dense_w1`, `factorized_dense_a`, `factorized_dense_b`, whose LoRA deltas the attention uses).
Random matrices (`random_r`, `factorized_random_r1/r2`, the mixture weights) are not linear layers: train them fully
with `modules_to_save=["synthesizer"]` or leave them frozen.

    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(target_modules="all-linear", task_type="SEQ_CLS"))

What PEFT does not say: pure synthesizer variants have no `query`/`key` projections, so the usual BERT targets
`["query", "value"]` silently adapt `value` alone (PEFT fails only when no target exists at all).
`check_lora_targets` raises for such a list.
"""

from torch import nn

ATTENTION_PROJECTIONS = ("query", "key", "value")
SYNTHESIZER_LINEARS = ("dense_w1", "factorized_dense_a", "factorized_dense_b")


def check_lora_targets(model, target_modules) -> None:
    """Raise a `ValueError` naming the attention projections in `target_modules` that this synthesizer model does
    not have (PEFT's own error only says that nothing matched), with the targets that do exist."""
    if isinstance(target_modules, str):
        return  # "all-linear" or a regex: PEFT matches it against the modules that exist
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    known = ATTENTION_PROJECTIONS + SYNTHESIZER_LINEARS
    missing = [t for t in target_modules if t in known and t not in present]
    if missing:
        variant = getattr(model.config, "synthesizer_variant", "?")
        raise ValueError(
            f"LoRA target_modules {missing} do not exist in this synthesizer_{variant} model: a synthesizer without a "
            f"vanilla term has no query/key projections. Targets that exist: {[t for t in known if t in present]}, "
            f"or target_modules='all-linear' for every linear layer there is; train the random matrices with "
            f"modules_to_save=['synthesizer'] if you want them updated."
        )
