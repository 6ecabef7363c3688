"""Stage 2 on the physically smaller model.

The compact model computes the masked model's logits (uvc.deploy.export), and its weights are the
masked model's kept weights, so fine-tuning it takes the same steps at the compact model's cost:
in the masked model every removed weight gets a zero gradient (its input or its output is masked)
and stays zero, and the compact model simply does not hold it. Heads that keep fewer value dims
than the block's widest are padded with zero rows of v (bias included) and zero columns of proj;
those compute zeros and get zero gradients, so they stay zero too. Each compact block drops paths
at its source block's rate, and the tokens that timm keeps out of weight decay stay out of it.

The best model is written back into the full-size model's positions (`write_back`), so a stage-2
file keeps its format: the full-size weights, the removed ones exactly zero.
"""
import torch
from torch import nn

from models.compact import CompactViT
from uvc.deploy.export import _value_index, block_pairs, copy_block_norms, copy_whole_parts, export_compact, kept_heads


def compact_student(vit: nn.Module, arch: dict) -> CompactViT:
    """The compact model of `vit` (trained weights of stage 1, removed ones zero) to fine-tune: in
    train mode, each block's drop path at its source block's rate, distilled training as `vit`'s."""
    student = export_compact(vit, arch).train()
    for dst, entry in zip(student.blocks, student.spec["blocks"]):
        src = vit.blocks[entry["source_block"]]
        rate = float(getattr(src.drop_path1, "drop_prob", 0.0))
        dst.drop_path = type(src.drop_path1)(rate) if rate > 0 else nn.Identity()
    student.set_distilled_training(bool(getattr(vit, "distilled_training", False)))
    return student


def write_back(vit: nn.Module, student: CompactViT, arch: dict) -> None:
    """Copy the compact student's weights into `vit`'s kept positions (the inverse of export_compact);
    removed weights, skipped blocks and dropped patches' position rows keep what `vit` holds."""
    with torch.no_grad():  # in the body, not a decorator: mutmut skips decorated functions
        _write_embeddings(vit, student)
        for src, dst, block in block_pairs(vit, student, arch):
            copy_block_norms(src, dst)
            _write_attention(src.attn, dst.attn, kept_heads(block))
            kept = torch.as_tensor(block["neurons"], dtype=torch.long, device=src.mlp.fc1.weight.device)
            src.mlp.fc1.weight[kept] = dst.mlp.fc1.weight
            src.mlp.fc1.bias[kept] = dst.mlp.fc1.bias
            src.mlp.fc2.weight[:, kept] = dst.mlp.fc2.weight
            src.mlp.fc2.bias.copy_(dst.mlp.fc2.bias)


def _write_attention(src: nn.Module, dst: nn.Module, heads) -> None:
    """The kept q, k and v rows (not the padding) and proj columns of `dst` into `src`."""
    d, attn_dim = src.head_dim, src.num_heads * src.head_dim
    device = src.qkv.weight.device
    head_ids = torch.as_tensor([h for h, _ in heads], dtype=torch.long)
    qk = (head_ids[:, None] * d + torch.arange(d)).flatten()
    v, keep = _value_index(heads, d, dst.value_dim)
    kept = keep.bool()
    rows = torch.cat([qk, attn_dim + qk, 2 * attn_dim + v[kept]]).to(device)
    taken = torch.cat([torch.ones(2 * len(qk), dtype=torch.bool), kept]).to(device)
    src.qkv.weight[rows] = dst.qkv.weight[taken]
    if src.qkv.bias is not None:
        src.qkv.bias[rows] = dst.qkv.bias[taken]
    src.proj.weight[:, v[kept].to(device)] = dst.proj.weight[:, kept.to(device)]
    src.proj.bias.copy_(dst.proj.bias)
    src.q_norm.load_state_dict(dst.q_norm.state_dict())
    src.k_norm.load_state_dict(dst.k_norm.state_dict())


def _write_embeddings(vit: nn.Module, student: CompactViT) -> None:
    """Patch embedding, prefix tokens, the kept rows of pos_embed, norms and heads."""
    kept = student.patch_index.to(vit.pos_embed.device)
    rows = kept if student.structure["no_embed_class"] else \
        torch.cat([torch.arange(vit.num_prefix_tokens, device=kept.device), vit.num_prefix_tokens + kept])
    vit.pos_embed[:, rows] = student.pos_embed
    copy_whole_parts(vit, student, student)
