"""Official PyTorch DDRNet checkpoints <-> vitijax orbax model checkpoints.

Import (a .pth/.npz/.safetensors state dict -> an orbax checkpoint that
training can start from with ``config.init_from``)::

    python -m launch.convert --from DDRNet23s_cityscapes.pth --variant 23-slim \
        --num-classes 2 --reinit-classifier --out checkpoints/ddrnet23s_city_2cls

Export (an orbax model checkpoint, or a training workdir's, -> an
official-named state dict for PyTorch users)::

    python -m launch.convert --from checkpoints/ddrnet23s_city_2cls --out ddrnet.pth
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

STATE_DICT_EXTS = (".pth", ".pt", ".npz", ".safetensors")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="src", required=True,
                   help="state dict file (.pth/.pt/.npz/.safetensors) to import, or an orbax model directory to export")
    p.add_argument("--out", required=True, help="orbax directory (import) or state dict file (export)")
    p.add_argument("--variant", choices=["23-slim", "23", "39"], help="DDRNet variant (required for import)")
    p.add_argument("--num-classes", type=int, help="classes of the model to build (default: the checkpoint's)")
    aux = p.add_mutually_exclusive_group()
    aux.add_argument("--aux-head", dest="aux_head", action="store_true", default=None,
                     help="build the auxiliary head (default: if the checkpoint has one)")
    aux.add_argument("--no-aux-head", dest="aux_head", action="store_false")
    p.add_argument("--reinit-classifier", action="store_true",
                   help="drop only the classifier convs (e.g. a 19-class Cityscapes checkpoint -> 2 classes)")
    p.add_argument("--partial", action="store_true",
                   help="load what matches, start the rest fresh (ImageNet-pretrained backbones); every key is reported")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of layers that start fresh")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from vitijax import compile_cache
    from vitijax.checkpoint import CheckpointError, load_model, resolve_model_dir, save_model
    from vitijax.data.io import sha256_file
    from vitijax.convert import CheckpointMismatch, ddrnet_state_dict_from_variables, \
        ddrnet_variables_from_torch, save_state_dict
    from vitijax.models.ddrnet import count_params

    compile_cache.enable()
    try:
        if os.path.isdir(args.src):
            if not args.out.lower().endswith(STATE_DICT_EXTS):
                p.error(f"--out {args.out}: exporting needs a file ending in one of {', '.join(STATE_DICT_EXTS)}")
            expect = {"variant": args.variant} if args.variant else None
            variables, meta = load_model(resolve_model_dir(args.src), expect=expect)
            sd = ddrnet_state_dict_from_variables(variables, meta["variant"])
            save_state_dict(sd, args.out)
            print(f"wrote {len(sd)} tensors of DDRNet-{meta['variant']} ({meta['num_classes']} classes) to {args.out}")
            return 0
        if args.variant is None:
            p.error("--variant is required when importing a state dict")
        variables = ddrnet_variables_from_torch(
            args.src, args.variant, num_classes=args.num_classes, aux_head=args.aux_head,
            reinit_classifier=args.reinit_classifier, partial=args.partial, seed=args.seed)
        num_classes = variables["params"]["final_layer"]["conv2"]["bias"].shape[0]
        meta = {"model": "ddrnet", "variant": args.variant, "num_classes": int(num_classes),
                "aux_head": "seghead_extra" in variables["params"], "source": os.path.abspath(args.src),
                "source_sha256": sha256_file(args.src), "reinit_classifier": args.reinit_classifier,
                "partial": args.partial}
        out = save_model(args.out, variables, meta)
        print(f"wrote DDRNet-{args.variant} ({meta['num_classes']} classes, aux head {meta['aux_head']}, "
              f"{count_params(variables['params']):,} parameters) to {out}")
        return 0
    except (CheckpointMismatch, CheckpointError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
