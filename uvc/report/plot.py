"""A report drawn: kept heads, value dims and MLP width per block, and the kept-patch map."""
import math

import torch

from uvc.report.render import si


def plot_architecture(r: dict, sizes: dict, path: str) -> None:
    """Kept heads, value dims and MLP width per block (skipped blocks hatched) and the kept-patch map."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    H, d, M, L = sizes["num_heads"], sizes["head_dim"], sizes["mlp_hidden"], sizes["depth"]
    P = sizes["num_patches"]
    blocks = r.get("blocks") or [{"skipped": False, "heads": H, "value_dims": H * d, "value_dims_deployed": H * d,
                                  "mlp_hidden": M}] * L
    kept = r.get("patch_map", list(range(P)))
    fig = plt.figure(figsize=(11, 4))
    grid = fig.add_gridspec(1, 2, width_ratios=[3, 1])
    ax = fig.add_subplot(grid[0])
    x = torch.arange(L).float()
    series = (("heads", H, "tab:blue"), ("value_dims", H * d, "tab:orange"), ("mlp_hidden", M, "tab:green"))
    width = 0.27
    for j, (key, full, color) in enumerate(series):
        frac = [0.0 if b["skipped"] else b[key] / full for b in blocks]
        bars = ax.bar((x + (j - 1) * width).tolist(), frac, width, color=color, label=f"{key} kept (of {full})")
        for bar, b in zip(bars, blocks):
            if not b["skipped"]:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, str(b[key]),
                        ha="center", va="bottom", fontsize=6, rotation=90)
    for i, b in enumerate(blocks):
        if b["skipped"]:
            ax.axvspan(i - 0.45, i + 0.45, color="0.85", hatch="//", zorder=0)
            ax.text(i, 0.5, "skipped", ha="center", va="center", rotation=90, fontsize=8)
    ax.set_xticks(range(L))
    ax.set_xlabel("block")
    ax.set_ylabel("fraction kept")
    ax.set_ylim(0, 1.25)
    ax.legend(loc="upper right", fontsize=7, ncol=3)
    ax.set_title(f"{r['model_type']}: {si(r['macs'])}MACs, {100 * r['macs_ratio']:.1f}% of dense")
    side = math.isqrt(P)
    patch_map = torch.zeros(P)
    patch_map[torch.as_tensor(kept, dtype=torch.long)] = 1.0
    ax2 = fig.add_subplot(grid[1])
    if side * side == P:
        ax2.imshow(patch_map.view(side, side).numpy(), cmap="gray", vmin=0, vmax=1)
    ax2.set_xticks([])
    ax2.set_yticks([])
    ax2.set_title(f"patches kept: {len(kept)}/{P}")
    ax2.set_xlabel("white: kept, black: dropped", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
