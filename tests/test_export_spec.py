"""uvc.deploy.export's spec and rebuilding functions by hand: the compact spec of an arch, the dense sizes
of a compact spec (also one written before num_patches and num_prefix_tokens were recorded), the refusals
of a model that does not fit, and the rebuilt source of a training checkpoint."""
import pytest
import torch

from test_export import dense_arch, digits_model
from uvc.deploy.export import (build_masked_source, compact_macs, compact_spec_from_arch, dense_model_of,
                               export_compact, kept_heads, masked_forward_reference, spec_dims)


def _arch():
    model, name = digits_model()
    arch = dense_arch(model, name)
    arch["blocks"][0]["skipped"] = True
    arch["blocks"][1]["heads"], arch["blocks"][1]["value_dims"] = [0, 1], [[], list(range(5))]  # head 0: no dim
    arch["blocks"][2]["heads"], arch["blocks"][2]["value_dims"] = [], []  # no head at all
    return model, arch


def test_the_compact_spec_counts_the_kept_heads_value_width_and_neurons_of_each_kept_block():
    model, arch = _arch()
    spec = compact_spec_from_arch(arch)
    assert spec["format_version"] == 1 and spec["model_kwargs"] == arch["model_kwargs"]
    assert [(b["source_block"], b["heads"], b["value_dim"]) for b in spec["blocks"]] == \
        [(1, 1, 5), (2, 0, 0)] + [(l, 4, 16) for l in range(3, 8)]
    assert kept_heads(arch["blocks"][1]) == [(1, list(range(5)))]
    assert spec["num_patches"] == 16 and type(spec["num_patches"]) is int
    assert spec["norm_eps"] == arch["norm_eps"]  # the arch's own
    del arch["model_kwargs"], arch["norm_eps"]
    older = compact_spec_from_arch(arch, norm_eps=1e-5)
    assert "model_kwargs" not in older and older["norm_eps"] == 1e-5 and compact_spec_from_arch(arch)["norm_eps"] == 1e-6


def test_the_dense_sizes_of_a_compact_spec_also_without_the_recorded_patch_and_prefix_counts():
    model, arch = _arch()
    spec = compact_spec_from_arch(arch)
    dims = spec_dims(spec)
    assert (dims.num_patches, dims.num_prefix_tokens, dims.num_cls_heads) == (16, 1, 1)
    for distilled, prefix in ((False, 1), (True, 2)):
        old = {k: v for k, v in spec.items() if k not in ("num_patches", "num_prefix_tokens")}
        old["distilled"] = distilled
        assert (spec_dims(old).num_patches, spec_dims(old).num_prefix_tokens) == (16, prefix)
        assert type(spec_dims(old).num_patches) is int
    assert compact_macs(spec, with_attn=False) < compact_macs(spec)  # the N^2 terms as asked
    assert spec_dims(dict(spec, num_patches=9)).num_patches == 9  # what the spec records wins


def test_an_arch_without_model_kwargs_rebuilds_its_model_type_at_its_resolution_on_the_cpu():
    model, arch = _arch()
    rebuilt = dense_model_of(arch)
    assert next(rebuilt.parameters()).device.type == "cpu"
    older = dense_model_of(dict(arch, model_kwargs=None, img_size=32, num_classes=7))
    assert older.patch_embed.img_size == (32, 32) and older.num_classes == 7
    recorded = dense_model_of(dict(arch, model_kwargs=dict(arch["model_kwargs"], num_classes=5), num_classes=7))
    assert recorded.num_classes == 5  # the recorded kwargs, not the sizes


def test_a_model_that_does_not_fit_the_arch_is_refused_with_what_differs():
    model, arch = _arch()
    for key, value, message in (("depth", 5, "cannot export: model depth 8 != arch depth 5"),
                                ("num_heads", 2, "cannot export: model heads 4x16 != arch 2x16"),
                                ("head_dim", 8, "cannot export: model heads 4x16 != arch 4x8"),
                                ("num_prefix_tokens", 2, "cannot export: prefix tokens differ from the arch")):
        with pytest.raises(ValueError) as e:
            export_compact(model, dict(arch, **{key: value}))
        assert str(e.value) == message
    with pytest.raises(ValueError, match="vit_digits_patch2_8 builds Linear"):  # named by the arch's model type
        export_compact(torch.nn.Linear(2, 2), arch)
    untyped = {k: v for k, v in arch.items() if k != "model_type"}
    with pytest.raises(ValueError, match="^Linear builds Linear"):  # or by the class, when the arch has none
        export_compact(torch.nn.Linear(2, 2), untyped)


def test_the_source_of_a_checkpoint_is_rebuilt_from_its_arch_and_weights_even_from_ddp():
    model, arch = _arch()
    state = {"module." + k: v for k, v in model.state_dict().items()}  # as DistributedDataParallel saves
    source = build_masked_source({"arch": arch, "model": state})
    assert not source.training
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), model.state_dict().values()))
    short = dict(model.state_dict())
    first = next(iter(short))
    del short[first]
    with pytest.raises(ValueError) as e:
        build_masked_source({"arch": arch, "model": short})
    assert str(e.value) == f"the weights do not fit vit_digits_patch2_8: 1 missing keys (first: {first})"
    extra = dict(model.state_dict(), **{"extra.a": torch.zeros(1), "extra.b": torch.zeros(1)})
    with pytest.raises(ValueError) as e:
        build_masked_source({"arch": arch, "model": extra})
    assert str(e.value) == "the weights do not fit vit_digits_patch2_8: 2 unexpected keys (first: extra.a)"
    wrong = {k: torch.zeros(1) for k in model.state_dict()}  # every shape wrong: a long error, cut short
    with pytest.raises(ValueError) as e:
        build_masked_source({"arch": arch, "model": wrong})
    prefix = "cannot rebuild 'vit_digits_patch2_8': "
    assert str(e.value).startswith(prefix + "Error(s) in loading state_dict")
    assert "\n" not in str(e.value) and len(str(e.value)) == len(prefix) + 300


def test_the_masked_reference_runs_in_the_models_precision():
    """Its input masks take the model's dtype: a bfloat16 model runs the reference in bfloat16."""
    model, arch = _arch()
    x = torch.randn(2, 1, 8, 8)
    low = model.to(torch.bfloat16)
    out = masked_forward_reference(low, arch, x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    full = masked_forward_reference(low.float(), arch, x)
    assert torch.allclose(out.float(), full, atol=0.1)


def test_a_block_without_neurons_and_a_spec_without_patches_export_exactly():
    """Empty selections are selections too: a kept block whose MLP keeps no neuron, a kept head with no
    value dim, and every patch dropped (the class token alone) export to the masked model's logits."""
    model, arch = _arch()
    arch["blocks"][3]["neurons"] = []
    arch["blocks"][4]["heads"], arch["blocks"][4]["value_dims"] = [2], [[]]
    x = torch.randn(2, 1, 8, 8)
    for patches in (arch["patches_kept"], []):
        arch["patches_kept"] = patches
        expected = masked_forward_reference(model, arch, x)
        assert torch.allclose(export_compact(model, arch)(x), expected, atol=1e-4)
