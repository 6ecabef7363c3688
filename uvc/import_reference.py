"""python -m uvc.import_reference: a checkpoint of the reference implementation (VITA-Group/UVC) to a
stage-1 file (uvc.deploy.reference).

    python -m uvc.import_reference deit_tiny_patch16_224_30.pth.tar deit_tiny_uvc.pth \\
        --model_type deit_tiny_patch16_224
    python -m uvc.export --checkpoint deit_tiny_uvc.pth --output compact.pth     # physically smaller
    python post_train.py --model_type deit_tiny_patch16_224 --checkpoint_dir deit_tiny_uvc.pth ...
"""
import argparse
import sys

from utils.checkpoint import atomic_save
from uvc.deploy.architecture import Architecture
from uvc.deploy.reference import convert


def summary(record: dict) -> str:
    arch = Architecture.from_dict(record["arch"])
    d = arch.dims
    return (f"{arch.sizes['model_type']}, {len(arch.kept_blocks)}/{d.depth} blocks, heads kept "
            f"{arch.heads_kept}/{d.num_heads * d.depth}, neurons kept "
            f"{arch.neurons_kept}/{d.mlp_hidden * d.depth}, patches "
            f"{len(arch.patches_kept)}/{arch.num_patches}, MACs ratio "
            f"{record['fit']['macs_ratio']:.4f} (deployed, value dims padded)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m uvc.import_reference",
                                     description="Convert a VITA-Group/UVC checkpoint to a stage-1 file.")
    parser.add_argument("input", metavar="IN", help="the reference's .pth.tar (state dict or {args, model, s, r})")
    parser.add_argument("output", metavar="OUT", help="the stage-1 file to write (uvc-stage1-v1)")
    parser.add_argument("--model_type", "--model-type", default="",
                        help="its timm type, e.g. deit_tiny_patch16_224 (default: the file's args.model_type)")
    parser.add_argument("--num_heads", "--num-heads", type=int, default=0,
                        help="heads per block (default: the file's args, else the model type's own)")
    parser.add_argument("--teacher_path", "--teacher-path", default="",
                        help="the dense teacher stage 2 distils from (default: the file's args.teacher_path "
                             "or args.model_path)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        record, _ = convert(args.input, args.model_type, args.num_heads, args.teacher_path)
    except ValueError as e:  # ReferenceError, unknown or unsupported model types
        print(f"uvc.import_reference: error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 2
    atomic_save(record, args.output)
    print(f"wrote {args.output}: {summary(record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
