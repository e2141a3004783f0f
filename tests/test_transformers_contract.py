"""Our overrides against transformers' private call conventions (issue 11).

Our modules replace or subclass stock BERT/T5 modules, and stock code calls them. When a transformers release
renames an argument (5.24 passes the decoding cache as `cache=` where 5.23 passed `past_key_values=`), an override
that does not know the new name lets it fall into `**kwargs`, and the model silently decodes without a cache. These
tests read the installed transformers (signatures, and the calls stock callers make in their source) and fail when
ours no longer accepts what the stock code passes; `.ci/run` runs them on the lowest and the newest supported
transformers. At run time a synthesizer module's `synthesizer_attention` raises on any keyword it does not handle.
"""

import ast
import inspect
import textwrap

import pytest
import torch
from conftest import tiny_bert_config
from transformers import DynamicCache
from transformers.models.bert import modeling_bert
from transformers.models.t5 import modeling_t5
from transformers.utils import TransformersKwargs

from hf_synthesizer import (
    BertSynthesizerConfig,
    BertSynthesizerModel,
    BertSynthesizerPreTrainedModel,
    BertSynthesizerSelfAttention,
    T5SynthesizerAttention,
    T5SynthesizerPreTrainedModel,
    SynthesizerAttentionMixin,
)
from hf_synthesizer.modeling.synthesizer_attention import IGNORED_KEYWORDS, PACKED_KEYWORDS

# Our module, the stock module it stands in for, and the stock callers: (class, attribute through which it calls).
OVERRIDES = [
    (BertSynthesizerSelfAttention, modeling_bert.BertSelfAttention, [(modeling_bert.BertAttention, "self")]),
    (
        T5SynthesizerAttention,
        modeling_t5.T5Attention,
        [(modeling_t5.T5LayerSelfAttention, "SelfAttention"), (modeling_t5.T5LayerCrossAttention, "EncDecAttention")],
    ),
]
# Modules whose `attention_interface(...)` calls reach a synthesizer module's `synthesizer_attention` (through the
# registered `synthesizer_attention_forward`): the stock code our modules run (BERT's cross-attention) and ours.
ATTENTION_CALLERS = [
    modeling_bert.BertSelfAttention,
    modeling_bert.BertCrossAttention,
    modeling_t5.T5Attention,
    BertSynthesizerSelfAttention,
    T5SynthesizerAttention,
]


def named_parameters(function) -> list[str]:
    """Parameters a caller can pass by name (no self/cls, no *args/**kwargs), in order."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(function).parameters.items()
    return [n for n, p in parameters if p.kind in kinds and n not in ("self", "cls")]


def calls_in(function, callee) -> list[ast.Call]:
    """The calls in `function`'s source whose callee matches: `callee(node.func)` is True."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and callee(node.func)]


def is_self_attribute(name):
    return lambda f: isinstance(f, ast.Attribute) and f.attr == name and getattr(f.value, "id", None) == "self"


def contract_problems(ours, stock, callers) -> list[str]:
    """What stock code passes to `stock.forward` that `ours.forward` would not take by name."""
    accepted = named_parameters(ours.forward)
    problems = [
        f"{ours.__name__}.forward does not take `{name}`, which {stock.__name__}.forward takes"
        for name in named_parameters(stock.forward)
        if name not in accepted
    ]
    for caller, attribute in callers:
        calls = calls_in(caller.forward, is_self_attribute(attribute))
        assert calls, f"{caller.__name__}.forward no longer calls self.{attribute}: update OVERRIDES"
        for call in calls:
            positional = [a for a in call.args if not isinstance(a, ast.Starred)]
            stock_order = named_parameters(stock.forward)[: len(positional)]
            if accepted[: len(positional)] != stock_order:
                problems.append(
                    f"{caller.__name__} passes {len(positional)} positional arguments: {stock.__name__} reads them as "
                    f"{stock_order}, {ours.__name__} as {accepted[: len(positional)]}"
                )
            for keyword in call.keywords:
                if keyword.arg is not None and keyword.arg not in accepted:
                    problems.append(
                        f"{caller.__name__}.forward passes `{keyword.arg}=` to {ours.__name__}.forward, which does "
                        f"not take it: it would vanish into **kwargs"
                    )
    return problems


@pytest.mark.parametrize("ours, stock, callers", OVERRIDES, ids=lambda x: getattr(x, "__name__", ""))
def test_overrides_take_everything_the_stock_callers_pass(ours, stock, callers):
    assert contract_problems(ours, stock, callers) == []


def test_the_contract_check_catches_a_stale_signature():
    """The check above can fail: an override written for another release (it takes neither cache keyword, so it
    misses the one the installed transformers passes) is reported, naming that keyword."""

    class Stale(BertSynthesizerSelfAttention):
        def forward(self, hidden_states, attention_mask=None, **kwargs):
            return super().forward(hidden_states, attention_mask, **kwargs)

    stock = modeling_bert.BertSelfAttention
    cache_name = "cache" if "cache" in named_parameters(stock.forward) else "past_key_values"
    problems = contract_problems(Stale, stock, [(modeling_bert.BertAttention, "self")])
    assert any(f"`{cache_name}`" in p for p in problems), problems


def test_attention_function_takes_every_keyword_the_modules_pass():
    accepted = set(named_parameters(SynthesizerAttentionMixin.synthesizer_attention))
    for module in ATTENTION_CALLERS:
        calls = calls_in(module.forward, lambda f: getattr(f, "id", None) == "attention_interface")
        assert calls, f"{module.__name__}.forward no longer calls attention_interface"
        for call in calls:
            passed = {k.arg for k in call.keywords if k.arg is not None}
            assert passed <= accepted, f"{module.__name__} passes {passed - accepted}"


def test_every_transformers_kwarg_is_handled_ignored_or_refused():
    """A keyword transformers adds to `TransformersKwargs` fails here first, not silently at a user's."""
    handled = set(named_parameters(SynthesizerAttentionMixin.synthesizer_attention))
    known = handled | set(IGNORED_KEYWORDS) | set(PACKED_KEYWORDS)
    assert set(TransformersKwargs.__annotations__) <= known, set(TransformersKwargs.__annotations__) - known


@pytest.mark.parametrize("ours, stock", [(BertSynthesizerPreTrainedModel, modeling_bert.BertPreTrainedModel),
                                         (T5SynthesizerPreTrainedModel, modeling_t5.T5PreTrainedModel)])
def test_overridden_pretrained_methods_keep_the_stock_parameters(ours, stock):
    """Every method our PreTrainedModel classes (and mixins) override takes the stock method's parameters by name,
    or passes everything through (*args, **kwargs)."""
    for name, method in inspect.getmembers(ours, predicate=inspect.isroutine):
        owner = next(c for c in ours.__mro__ if name in vars(c))
        if not owner.__module__.startswith("hf_synthesizer") or not hasattr(stock, name):
            continue
        parameters = inspect.signature(method).parameters.values()
        if {p.kind for p in parameters} >= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}:
            continue
        missing = set(named_parameters(getattr(stock, name))) - set(named_parameters(method))
        assert not missing, f"{owner.__name__}.{name} lacks {missing}"


def tiny_decoder():
    config = BertSynthesizerConfig(**tiny_bert_config(is_decoder=True).to_dict(), synthesizer_variant="random")
    return BertSynthesizerModel(config).eval()


def test_attention_refuses_keywords_it_would_drop():
    attention = tiny_decoder().encoder.layer[0].attention.self
    hidden = torch.randn(1, 3, 32)
    value = torch.randn(1, 4, 3, 8)
    call = dict(synthesizer_inputs=hidden, scaling=1.0)
    with pytest.raises(TypeError, match="decoding cache as `cache=`"):
        attention.synthesizer_attention(None, value, value, None, cache=DynamicCache(), **call)
    with pytest.raises(TypeError, match="unexpected keyword argument `layer_head_mask`"):
        attention.synthesizer_attention(None, value, value, None, layer_head_mask=None, **call)
    with pytest.raises(ValueError, match="packed sequences"):
        attention.synthesizer_attention(None, value, value, None, cu_seq_lens_q=torch.tensor([0, 3]), **call)
    # through the module: a keyword the module does not consume reaches the check too
    with pytest.raises(TypeError, match="decoding cache as `layer_past=`"):
        attention(hidden, layer_past=DynamicCache())
    with pytest.raises(ValueError, match="not both"):
        attention(hidden, cache=DynamicCache(), past_key_values=DynamicCache())


@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_both_cache_names_reach_the_cache(name):
    """Whichever name a release uses, the module updates the cache (5.24: `cache=`, 5.23: `past_key_values=`)."""
    attention = tiny_decoder().encoder.layer[0].attention.self
    cache = DynamicCache()
    with torch.no_grad():
        attention(torch.randn(1, 3, 32), **{name: cache})
        attention(torch.randn(1, 1, 32), **{name: cache})
    assert cache.get_seq_length(0) == 4
