"""Every variant's probabilities, outputs and gradients against the independent loop reference (tests/reference.py)."""

import pytest
import torch
from conftest import tiny_bert_config
from reference import reference_self_attention

from hf_synthesizer import BertSynthesizerConfig, BertSynthesizerModel

VARIANTS = [
    dict(synthesizer_variant="dense"),
    dict(synthesizer_variant="dense", synthesizer_dense_shared_w2=True),
    dict(synthesizer_variant="factorized_dense"),
    dict(synthesizer_variant="factorized_dense", synthesizer_factorized_dense_split=[3, 8]),
    dict(synthesizer_variant="random"),
    dict(synthesizer_variant="fixed_random"),
    dict(synthesizer_variant="factorized_random"),
    dict(synthesizer_variant="factorized_random", synthesizer_factorized_rank=3),
    dict(synthesizer_variant="random+vanilla"),
    dict(synthesizer_variant="random+vanilla", synthesizer_vanilla_backend="eager"),
    dict(synthesizer_variant="dense+vanilla"),
    dict(synthesizer_variant="dense+random"),
    dict(synthesizer_variant="random+vanilla", synthesizer_mixture="gate"),
    dict(synthesizer_variant="factorized_dense+fixed_random+factorized_random+vanilla"),
]


def variant_id(options):
    return "-".join(f"{v}" for v in options.values())


def attention_layer(options, seed=0, **config):
    """Layer 0 of a tiny synthesizer BERT with non-trivial random parameters (not the near-uniform init)."""
    cfg = BertSynthesizerConfig(**tiny_bert_config(**config).to_dict(), **options)
    torch.manual_seed(seed)
    model = BertSynthesizerModel(cfg)
    attn = model.encoder.layer[0].attention.self
    with torch.no_grad():
        for name, tensor in list(attn.synthesizer.named_parameters()) + list(attn.synthesizer.named_buffers()):
            tensor.copy_(torch.randn_like(tensor) * (0.3 if "factorized_dense" in name else 0.7))
    return attn.eval()


def inputs(batch=2, length=7, d=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, d, generator=g)
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[1, length - 3 :] = False  # example 1 is padded
    return x, keep


def run(attn, x, keep):
    mask = keep[:, None, None, :] if keep is not None else None
    out, probs = attn(x, attention_mask=mask, output_attentions=True)
    return out, probs


@pytest.mark.parametrize("options", VARIANTS, ids=variant_id)
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "pad"])
def test_forward_and_gradients_match_reference(options, padded):
    attn = attention_layer(options)
    x, keep = inputs()
    keep = keep if padded else None
    x_ref = x.clone().requires_grad_(True)
    x = x.clone().requires_grad_(True)

    out, probs = run(attn, x, keep)
    ref_out, ref_probs = reference_self_attention(attn, x_ref, keep)
    torch.testing.assert_close(probs, ref_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)

    weight = torch.randn_like(out)
    params = [p for p in attn.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * weight).sum(), [x, *params])
    ref_grads = torch.autograd.grad((ref_out * weight).sum(), [x_ref, *params])
    for (name, _), g, r in zip([("x", None), *[(n, p) for n, p in attn.named_parameters()]], grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4, msg=f"gradient of {name}")


@pytest.mark.parametrize("options", VARIANTS[:9], ids=variant_id)
def test_sdpa_vanilla_backend_without_output_attentions_matches_reference(options):
    """Without output_attentions, mixtures with vanilla take the sdpa route; same numbers."""
    attn = attention_layer(options)
    x, keep = inputs()
    out, _ = attn(x, attention_mask=keep[:, None, None, :])
    ref_out, _ = reference_self_attention(attn, x, keep)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", VARIANTS, ids=variant_id)
def test_causal_matches_reference(options):
    attn = attention_layer(options, is_decoder=True)
    x, keep = inputs()
    out, probs = attn(x, attention_mask=None, output_attentions=True)
    ref_out, ref_probs = reference_self_attention(attn, x, None, causal=True)
    torch.testing.assert_close(probs, ref_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", VARIANTS, ids=variant_id)
def test_bf16_autocast_close_to_reference_and_softmax_in_fp32(options):
    attn = attention_layer(options)
    x, keep = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, probs = run(attn, x, keep)
    assert probs.dtype == torch.float32  # softmax ran in fp32 under autocast
    ref_out, ref_probs = reference_self_attention(attn, x, keep)
    torch.testing.assert_close(probs, ref_probs, atol=3e-2, rtol=0)
    torch.testing.assert_close(out.float(), ref_out, atol=6e-2, rtol=0)
