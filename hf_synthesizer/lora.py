"""Which projections LoRA (peft) can adapt in a synthesizer model.

Pure synthesizer variants have no `query`/`key` projections (their logits do not come from QKᵀ): the usual BERT LoRA
targets `["query", "value"]` silently adapt `value` alone there (peft fails only when no target exists at all; use
`check_lora_targets`). `value` always exists;
`query`/`key` exist in layers with a vanilla term; the dense synthesizers add linear layers of their own
(`dense_w1`, `factorized_dense_a`, `factorized_dense_b`). Random matrices (`random_r`, `factorized_random_r1/r2`)
are not linear layers: train them fully with `modules_to_save=["synthesizer"]` or leave them frozen.

    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(target_modules=lora_target_modules(model), task_type="SEQ_CLS"))
"""

from torch import nn

ATTENTION_PROJECTIONS = ("query", "key", "value")
SYNTHESIZER_LINEARS = ("dense_w1", "factorized_dense_a", "factorized_dense_b")


def lora_target_modules(model, include_synthesizer: bool = False) -> list[str]:
    """Names of the attention projections (and, with `include_synthesizer`, the synthesizer's own linear layers)
    that exist as `nn.Linear` somewhere in `model`, for `peft.LoraConfig(target_modules=...)`."""
    wanted = ATTENTION_PROJECTIONS + (SYNTHESIZER_LINEARS if include_synthesizer else ())
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    return [name for name in wanted if name in present]


def check_lora_targets(model, target_modules) -> None:
    """Raise a `ValueError` naming the attention projections in `target_modules` that this synthesizer model does
    not have (peft's own error only says that nothing matched), with the targets that do exist."""
    if isinstance(target_modules, str):
        return  # a regex: peft matches it against full module names; nothing to check by name
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    missing = [t for t in target_modules if t in ATTENTION_PROJECTIONS + SYNTHESIZER_LINEARS and t not in present]
    if missing:
        variant = getattr(model.config, "synthesizer_variant", "?")
        raise ValueError(
            f"LoRA target_modules {missing} do not exist in this synthesizer_{variant} model: a synthesizer without a "
            f"vanilla term has no query/key projections. Targets that exist: {lora_target_modules(model, True)} "
            f"(hf_synthesizer.lora.lora_target_modules(model)); train the random matrices with "
            f"modules_to_save=['synthesizer'] if you want them updated."
        )
