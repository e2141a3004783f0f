"""Model cards for synthesizer checkpoints, rendered from the template `model_cards/synthesizer.md`.

The template has one copy, in the repository's top-level `model_cards/` folder; the wheel installs it as package data
(`hf_synthesizer/model_cards/synthesizer.md`, see pyproject.toml), found with `importlib.resources`, so rendering
works from an installed wheel, whatever the current directory, and from the source tree. `model_cards/examples/`
holds the cards of every named variant rendered from it; regenerate them after changing the template or the card
code with `python -m hf_synthesizer.conversion.model_card --render-examples` (tests/test_sharing.py checks they are
current).

`save_pretrained`/`push_to_hub` of every synthesizer model call `render_model_card`, found as
`hf_synthesizer.render_model_card` (see modeling/hub_mixin.py); `hf-synthesizer card PATH` writes one for a saved
checkpoint; `SynthesizerTrainer` (hf_synthesizer.conversion.trainer) makes `Trainer.push_to_hub` upload it instead
of transformers' generic card.
"""

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.dynamic_module_utils import get_relative_import_files

from ..modeling.hub_mixin import GENERATED_CARD_MARKER, module_auto_map

TEMPLATE = "synthesizer.md"

FAMILY_NAMES = {"bert": "BERT", "t5": "T5"}

# What a user types in `pipeline(...)` for the head a checkpoint was saved with.
PIPELINE_TAGS = {
    "AutoModel": "feature-extraction",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForTokenClassification": "token-classification",
    "AutoModelForQuestionAnswering": "question-answering",
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForSeq2SeqLM": "text2text-generation",
}


def component_formula(name: str, config, family: str) -> str:
    """The logits formula of one component, as the README's variant table writes it (no `|`: it sits in a table)."""
    if name == "vanilla":
        return "`Q Kᵀ` (T5 does not scale it)" if family == "t5" else "`Q Kᵀ / √d_h` (stock dot-product attention)"
    if name == "dense":
        shared = "shared across heads" if config.synthesizer_dense_shared_w2 else "one per head"
        return f"`S_i = W2 · relu(W1 x_i + b1) + b2 ∈ ℝ^L`, sliced `[:ℓk]` (W2 {shared}); token i never looks at token j"
    if name == "factorized_dense":
        a, b = config.factorized_dense_split
        return (
            f"`S_ij = A_i[j mod a] · B_i[⌊j/a⌋]`, `A = F_A(x_i) ∈ ℝ^a`, `B = F_B(x_i) ∈ ℝ^b`, a = {a}, b = {b}, a·b = L"
        )
    if name == "random":
        return "`R_h[:ℓq, :ℓk]`, `R_h ∈ ℝ^{L×L}` trained; the same for every input"
    if name == "fixed_random":
        return "`R_h[:ℓq, :ℓk]`, `R_h ∈ ℝ^{L×L}` frozen (saved as a buffer, never trained)"
    if name == "factorized_random":
        k = config.synthesizer_factorized_rank
        return f"`(R1_h R2_hᵀ)[:ℓq, :ℓk]`, `R1_h, R2_h ∈ ℝ^{{L×k}}`, k = {k}"
    raise ValueError(f"Unknown synthesizer component {name!r}.")


def mixture_formula(config) -> str | None:
    components = config.synthesizer_components
    if len(components) < 2:
        return None
    if config.synthesizer_mixture == "gate":
        first, second = components
        return (
            f"`S = σ(a) · S_{first} + (1 − σ(a)) · S_{second}`, one learned gate `a` per layer (0 at init), "
            f"mixed before the softmax."
        )
    terms = " + ".join(f"α_{n} S_{n}" for n in components)
    return (
        f"`S = {terms}`, with `α = softmax(learned logits)` per head and layer (equal at init), "
        f"mixed before the softmax."
    )


def _num_layers(config) -> int | None:
    try:
        return config._synthesizer_num_layers()
    except (AttributeError, NotImplementedError):
        return None


def layers_text(config) -> str:
    n = _num_layers(config)
    stacks = getattr(config, "synthesizer_stacks", None)  # T5: which of encoder/decoder are synthesized
    where = f" of the {' and '.join(stacks)}" if stacks else ""
    if config.synthesizer_layers is None:
        if stacks:
            return f"the self-attention of every block{where} is synthesized; cross-attention stays dot-product."
        return f"the self-attention of all {n} layers is synthesized." if n else "every self-attention is synthesized."
    others = "the others keep vanilla dot-product attention"
    return f"self-attention synthesized in layers {list(config.synthesizer_layers)}{where} (of {n}); {others}."


def parameter_counts(model) -> dict[str, int]:
    """Trainable synthesizer parameters, frozen synthesizer buffers (fixed random), and the rest of the model."""
    synth_params, synth_buffers = set(), 0
    for module in model.modules():
        # By class name: a model loaded with trust_remote_code has its own copy of the class.
        if type(module).__name__ == "SynthesizerLogits":
            synth_params.update(id(p) for p in module.parameters())
            synth_buffers += sum(b.numel() for b in module.buffers())
    params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    synthesizer = sum(p.numel() for p in params if id(p) in synth_params)
    total = sum(p.numel() for p in params)
    return {"synthesizer": synthesizer, "synthesizer_buffers": synth_buffers, "rest": total - synthesizer, "total": total}


def auto_class_name(model) -> str | None:
    """The Auto class a checkpoint of this model is loaded with (`AutoModelForMaskedLM`, ...). A class mapped to
    several (T5's conditional generation: pretraining and seq2seq) gets the one with a pipeline."""
    auto_map = {**(getattr(model.config, "auto_map", None) or {}), **module_auto_map(type(model))}
    candidates = [auto for auto, target in auto_map.items() if target.split(".")[-1] == type(model).__name__]
    candidates.sort(key=lambda auto: list(PIPELINE_TAGS).index(auto) if auto in PIPELINE_TAGS else len(PIPELINE_TAGS))
    if candidates:
        return candidates[0]
    name = type(model)._auto_class
    return name if name and name != "AutoConfig" else None


def code_files(model) -> list[str]:
    """The Python files a saved checkpoint of `model` ships (its modeling file and the siblings it imports)."""
    module_file = sys.modules[type(model).__module__].__file__
    files = [module_file, *get_relative_import_files(module_file)]
    config_file = sys.modules[type(model.config).__module__].__file__
    files += [config_file, *get_relative_import_files(config_file)]
    return sorted({os.path.basename(f) for f in files})


def _supported_pipeline_tasks() -> set[str]:
    """Tasks `transformers.pipeline` runs in the installed version (5.x removed text2text-generation and
    question-answering, which remain Hub task tags)."""
    from transformers.pipelines import SUPPORTED_TASKS

    return set(SUPPORTED_TASKS)


# The top-level model_cards/ folder of a source tree (or editable install); None in an installed wheel.
SOURCE_DIR = Path(__file__).resolve().parents[2] / "model_cards"
EXAMPLES_DIR = SOURCE_DIR / "examples"


def template_text() -> str:
    """The card template: package data of an installed wheel, else the source tree's `model_cards/` folder."""
    packaged = resources.files("hf_synthesizer").joinpath("model_cards", TEMPLATE)
    path = packaged if packaged.is_file() else SOURCE_DIR / TEMPLATE
    return path.read_text(encoding="utf-8")


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def eval_result_list(eval_results, task_type, datasets) -> list[EvalResult]:
    """`{"accuracy": 0.9}` (or EvalResults as they are) -> EvalResults for the card's `model-index`."""
    if not eval_results:
        return []
    if isinstance(eval_results, dict):
        dataset = (datasets or ["custom"])[0]
        return [
            EvalResult(
                task_type=task_type or "other",
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=name.removeprefix("eval_"),
                metric_value=value,
            )
            for name, value in eval_results.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
    return list(eval_results)


def render_model_card(
    model,
    *,
    model_name: str | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: str | list[str] | None = None,
    eval_results: dict | list[EvalResult] | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    tags: list[str] | None = None,
    extra_sections: str | None = None,
) -> str:
    """The README.md (YAML front matter + Markdown) of a synthesizer model.

    eval_results: `{metric: value}` (recorded on the first of `datasets`, or "custom") or a list of
        `huggingface_hub.EvalResult`; they become the card's `model-index`.
    extra_sections: Markdown inserted before "Limitations" (e.g. the Trainer's training procedure).
    """
    config = model.config
    family = getattr(config, "stock_model_type", None) or config.model_type.removesuffix("_synthesizer")
    variant = config.synthesizer_variant
    attn_implementation = "synthesizer_" + variant
    auto_class = auto_class_name(model) or "AutoModel"
    pipeline_tag = PIPELINE_TAGS.get(auto_class)  # Hub metadata (the Hub's task taxonomy)
    datasets = _as_list(datasets)
    repo_id = repo_id or model_name or "path/to/this/checkpoint"
    model_name = model_name or repo_id
    results = eval_result_list(eval_results, pipeline_tag, datasets)

    all_tags = ["synthesizer", attn_implementation, family, "custom_code"]
    all_tags += [t for t in _as_list(tags) if t not in all_tags]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=all_tags,
        base_model=base_model,
        datasets=datasets or None,
        license=license,
        language=language,
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    components = config.synthesizer_components
    synthesizer_fields = [(k, v) for k, v in sorted(config.to_dict().items()) if k.startswith("synthesizer_")]
    auto_map = {**(getattr(config, "auto_map", None) or {}), **module_auto_map(type(model))}
    heads = sorted(k for k in auto_map if k != "AutoConfig")
    content = ModelCard.from_template(
        card_data,
        template_str=template_text(),
        model_name=model_name,
        repo_id=repo_id,
        family=family,
        family_name=FAMILY_NAMES.get(family, family),
        variant=variant,
        attn_implementation=attn_implementation,
        base_model=base_model,
        architecture=type(model).__name__,
        formulas=[(name, component_formula(name, config, family)) for name in components],
        mixture=config.synthesizer_mixture,
        mixture_formula=mixture_formula(config),
        layers_text=layers_text(config),
        synthesizer_fields=synthesizer_fields,
        length=config.synthesizer_length,
        params=parameter_counts(model),
        results=results,
        auto_class=auto_class,
        auto_classes_text=", ".join(f"`{h}`" for h in heads) if heads else f"`{auto_class}`",
        pipeline_tag=pipeline_tag,
        pipeline_task=pipeline_tag if pipeline_tag in _supported_pipeline_tasks() else None,
        generate_snippet=auto_class == "AutoModelForSeq2SeqLM",
        extra_sections=extra_sections,
        code_files_text=", ".join(f"`{f}`" for f in code_files(model)),
        pure="vanilla" not in components,
        input_independent=set(components) <= {"random", "fixed_random", "factorized_random"},
    ).content
    assert GENERATED_CARD_MARKER in content, "the template must carry the generated-card marker"
    return content


def trainer_card_kwargs(trainer, **kwargs) -> dict:
    """Card arguments from a Trainer's state: datasets, last evaluation metrics, hyperparameters and results table
    (the same facts transformers' own Trainer card shows)."""
    from transformers.modelcard import TrainingSummary, make_markdown_table

    summary = TrainingSummary.from_trainer(
        trainer,
        model_name=kwargs.get("model_name"),
        finetuned_from=kwargs.get("finetuned_from"),
        dataset=kwargs.get("dataset"),
        dataset_tags=kwargs.get("dataset_tags"),
        tags=kwargs.get("tags"),
        license=kwargs.get("license"),
        language=kwargs.get("language"),
    )
    lines = ["## Training procedure", "", "Trained with the transformers `Trainer`. Hyperparameters:", ""]
    lines += [f"- {name}: {value}" for name, value in (summary.hyperparameters or {}).items()]
    if summary.eval_lines:
        lines += ["", "Results during training:", "", make_markdown_table(summary.eval_lines)]
    tags = [t for t in _as_list(summary.tags)]
    return {
        "model_name": summary.model_name,
        "base_model": summary.finetuned_from,
        "datasets": _as_list(summary.dataset) or _as_list(kwargs.get("dataset")),
        "eval_results": summary.eval_results or None,
        "license": summary.license,
        "language": summary.language,
        "tags": tags,
        "extra_sections": "\n".join(lines),
    }


class SynthesizerModelCardMixin:
    """Mixed into a `Trainer` class (before it): its `create_model_card`, which `Trainer.push_to_hub` calls after
    saving the model, writes the synthesizer card with the Trainer's hyperparameters and evaluation results instead
    of transformers' generic one. A model that is not a synthesizer gets transformers' card. See
    `hf_synthesizer.conversion.trainer.SynthesizerTrainer`."""

    def create_model_card(self, **kwargs):
        model = self.accelerator.unwrap_model(self.model)
        if getattr(model.config, "synthesizer_variant", "vanilla") == "vanilla":
            return super().create_model_card(**kwargs)
        if not self.is_world_process_zero():
            return None
        card_kwargs = trainer_card_kwargs(self, **kwargs)
        card_kwargs["repo_id"] = self.hub_model_id or card_kwargs["model_name"]
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(render_model_card(model, **card_kwargs))
        return None


def example_cards() -> dict[str, str]:
    """`{file name: card}` for every named variant on bert-base-uncased (masked LM, `synthesizer_length` 128) and for
    t5-small converted to random+vanilla: what `model_cards/examples/` holds. Models are built on the meta device
    (structure and parameter counts only)."""
    from transformers import BertConfig, T5Config

    from ..modeling.configuration_synthesizer import NAMED_VARIANTS, attn_implementation_name
    from .checkpoints import empty_model, families

    bert, t5 = families()["bert"], families().get("t5")
    examples = [(bert, "google-bert/bert-base-uncased", BertConfig(), "masked-lm", v) for v in NAMED_VARIANTS]
    if t5 is not None:
        examples.append((t5, "google-t5/t5-small", T5Config(), "seq2seq-lm", "random+vanilla"))
    cards = {}
    for family, base_model, stock_config, head, variant in examples:
        config = family.config_class(**stock_config.to_dict(), synthesizer_variant=variant, synthesizer_length=128)
        name = f"{base_model.split('/')[-1]}-{attn_implementation_name(variant)}"
        cards[f"{name}.md"] = render_model_card(
            empty_model(family, config, head), model_name=name, repo_id=f"your-name/{name}", base_model=base_model,
            license="apache-2.0",
        )
    return cards


def render_examples(directory=None) -> list[Path]:
    """Write `example_cards()` into `directory` (default `model_cards/examples/` of the source tree), removing cards
    of variants no longer rendered; returns the files written."""
    directory = Path(directory or EXAMPLES_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    cards = example_cards()
    for stale in set(p.name for p in directory.glob("*.md")) - set(cards):
        (directory / stale).unlink()
    for name, text in cards.items():
        (directory / name).write_text(text, encoding="utf-8")
    return [directory / name for name in cards]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_synthesizer.conversion.model_card",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--render-examples", action="store_true",
                        help=f"Regenerate the example cards (default folder: {EXAMPLES_DIR}).")
    parser.add_argument("--output", type=Path, help="Write the example cards here instead.")
    args = parser.parse_args(argv)
    if not args.render_examples:
        parser.error("nothing to do: pass --render-examples")
    for path in render_examples(args.output):
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
