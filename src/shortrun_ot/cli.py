"""Command-line entry points called by the Snakemake rules (``shortrun-ot STAGE ...``)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .config import ConfigError, check_stage_settings, load_stage_settings, resolve_device, set_tf32, stage_settings
from .io import save_json


def _context(args) -> str:
    parts = [f"run '{args.run}'"] if getattr(args, "run", None) else []
    if getattr(args, "iteration", None) is not None:
        parts.append(f"iteration {args.iteration}")
    if getattr(args, "first", None) is not None:
        parts.append(f"iterations {args.first}..{args.last}")
    parts.append(f"stage {args.command}")
    return ", ".join(parts)


def cmd_prepare(args):
    from .data import prepare

    prepare(args.dataset, args.raw_root, args.out, heldout_digit=args.heldout_digit, seed=args.seed)


def cmd_write_config(args):
    settings = stage_settings(json.loads(args.settings))
    check_stage_settings(settings, f"runs.{args.run}")
    save_json(settings, args.out)


def cmd_init(args):
    from .pipeline import initialise

    print(json.dumps(initialise(load_stage_settings(args.config), args.data, args.checkpoint_out,
                                args.latents_out, args.prior_out)))


def cmd_infer(args):
    from .langevin import DivergenceError
    from .pipeline import infer

    settings = load_stage_settings(args.config)
    try:
        report = infer(settings, args.iteration, args.data, args.checkpoint, args.latents, args.latents_out,
                       args.stats_out, resolve_device(args.device), progress=True, cuda_graph=args.cuda_graphs)
    except DivergenceError as exc:
        raise _divergence_advice(exc, settings) from None
    print(json.dumps(report))


def _divergence_advice(exc, settings):
    from .langevin import DivergenceError

    return DivergenceError(
        f"{exc}; lower 'langevin.step_size' (now {settings['langevin']['step_size']}) in params.yaml "
        "or the run's overrides, then rerun"
    )


def _learning_advice(exc, settings):
    return FloatingPointError(
        f"{exc}; lower 'learning.lr' (now {settings['learning']['lr']}) or 'langevin.step_size' "
        f"(now {settings['langevin']['step_size']}), or raise 'sigma' (now {settings['sigma']})"
    )


def cmd_correct(args):
    from .pipeline import correct

    report = correct(load_stage_settings(args.config), args.iteration, args.latents, args.prior, args.previous,
                     args.latents_out, args.stats_out, resolve_device(args.device), progress=True)
    print(json.dumps(report))


def cmd_learn(args):
    from .pipeline import learn_stage

    settings = load_stage_settings(args.config)
    try:
        report = learn_stage(settings, args.iteration, args.data, args.checkpoint, args.latents,
                             args.checkpoint_out, args.stats_out, resolve_device(args.device), progress=True)
    except FloatingPointError as exc:
        raise _learning_advice(exc, settings) from None
    print(json.dumps(report))


def cmd_train_block(args):
    from .langevin import DivergenceError
    from .pipeline import train_block

    settings = load_stage_settings(args.config)
    try:
        reports = train_block(settings, args.run_dir, args.first, args.last, args.data, resolve_device(args.device),
                              progress=True, cuda_graph=args.cuda_graphs)
    except DivergenceError as exc:
        raise _divergence_advice(exc, settings) from None
    except FloatingPointError as exc:
        raise _learning_advice(exc, settings) from None
    print(json.dumps({"iterations": [args.first, args.last], "stages": len(reports)}))


def cmd_grid(args):
    from .figures import image_grid_figure
    from .pipeline import load_checkpoint, load_latents, load_training_images

    settings = load_stage_settings(args.config)
    images = load_training_images(args.data, settings)[: args.count]
    generator = load_checkpoint(args.checkpoint, settings, torch.device("cpu"))
    generator.eval()
    z = load_latents(args.latents, len(load_training_images(args.data, settings)))[: args.count]
    prior = torch.randn((args.count, settings["latent_dim"]), generator=torch.Generator().manual_seed(settings["seed"]))
    with torch.no_grad():
        panels = {"training images": images, "reconstructions g(z)": generator(z), "samples g(z), z ~ N(0, I)": generator(prior)}
    image_grid_figure(panels, args.out)


def cmd_fid_reference(args):
    from .data import load_prepared
    from .evaluation import real_feature_statistics
    from .inception import load_fid_inception
    from .metrics import save_statistics

    device = resolve_device(args.device)
    images = load_prepared(args.data, "train")
    if args.images is not None:
        images = images[: args.images]
    mu, sigma = real_feature_statistics(images, load_fid_inception(device), batch_size=args.batch_size,
                                        device=device, progress=True)
    save_statistics(args.out, mu, sigma, len(images))


def cmd_evaluate(args):
    from .data import load_prepared
    from .evaluation import evaluate_run
    from .inception import load_fid_inception
    from .metrics import load_statistics
    from .pipeline import load_checkpoint, load_latents, load_training_images

    settings = load_stage_settings(args.config)
    device = resolve_device(args.device)
    train_images = load_training_images(args.data, settings)
    test_images = load_prepared(args.data, "test")
    if args.test_images is not None:
        test_images = test_images[: args.test_images]
    generator = load_checkpoint(args.checkpoint, settings, device)
    metrics = evaluate_run(
        generator, settings, train_images, load_latents(args.latents, len(train_images)), test_images,
        load_latents(args.prior, len(train_images)), load_fid_inception(device), load_statistics(args.fid_reference),
        fid_samples=args.fid_samples, test_steps=args.test_steps, batch_size=args.batch_size, device=device,
        progress=True,
    )
    save_json({"run": args.run, "dataset": settings["dataset"], "iterations": args.iteration, **metrics}, args.out)


def cmd_anomaly(args):
    from .data import load_prepared, load_prepared_labels
    from .evaluation import evaluate_anomaly
    from .pipeline import load_checkpoint

    settings = load_stage_settings(args.config)
    device = resolve_device(args.device)
    generator = load_checkpoint(args.checkpoint, settings, device)
    result = evaluate_anomaly(generator, settings, load_prepared(args.data, "test"),
                              load_prepared_labels(args.data, "test"), steps=args.test_steps,
                              batch_size=args.batch_size, device=device, progress=True)
    save_json({"run": args.run, "model": args.model, "dataset": settings["dataset"], **result}, args.out)


def cmd_table1(args):
    from .tables import table1, write_table

    metrics = dict(item.split("=", 1) for item in args.metrics)
    write_table(table1(metrics, args.reference), args.csv, args.markdown,
                "Table 1: reconstruction MSE ([0, 1] scale) and FID; `measured` rows come from this workflow.")


def cmd_table2(args):
    from .tables import table2, write_table

    write_table(table2(args.anomaly, args.reference), args.csv, args.markdown,
                "Table 2: anomaly-detection AUPRC per held-out MNIST digit (mean and std over seeds).")


def cmd_history(args):
    from .history import write_history

    rows = write_history(args.stats, args.out)
    print(json.dumps({"run": args.run, "iterations": len(rows), "out": args.out}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shortrun-ot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name, func, help_text, data=True):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        p.add_argument("--run", help="experiment key (for messages)")
        if name not in ("prepare", "write-config", "fid-reference"):
            p.add_argument("--config", required=True, help="the run's config.json")
        if data:
            p.add_argument("--data", required=True, help="prepared dataset (.pt)")
        return p

    p = stage("prepare", cmd_prepare, "prepare and checksum a dataset", data=False)
    p.add_argument("--dataset", required=True)
    p.add_argument("--raw-root", required=True)
    p.add_argument("--heldout-digit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    p = stage("write-config", cmd_write_config, "validate a run's settings and write config.json", data=False)
    p.add_argument("--settings", required=True, help="JSON of the run's merged training settings")
    p.add_argument("--out", required=True)

    p = stage("init", cmd_init, "iteration 0: initial generator, latents and prior sample")
    p.add_argument("--checkpoint-out", required=True)
    p.add_argument("--latents-out", required=True)
    p.add_argument("--prior-out", required=True)

    for name, func, help_text in (("infer", cmd_infer, "inference stage (Langevin, Eq. 7)"),
                                  ("learn", cmd_learn, "learning stage (Adam on (z, I) pairs)")):
        p = stage(name, func, help_text)
        p.add_argument("--iteration", type=int, required=True)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--latents", required=True)
        p.add_argument("--stats-out", required=True)
        p.add_argument("--device", default="auto")
    sub.choices["infer"].add_argument("--latents-out", required=True)

    p = stage("train-block", cmd_train_block, "iterations FIRST..LAST in one process (all their files)")
    p.add_argument("--run-dir", required=True, help="results/runs/<run>: reads it<FIRST-1>, writes it<FIRST>..it<LAST>")
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--last", type=int, required=True)
    p.add_argument("--device", default="auto")
    for name in ("infer", "train-block"):
        sub.choices[name].add_argument("--cuda-graphs", action="store_true",
                                       help="replay each batch's Langevin chain as a CUDA graph (CUDA only)")
    sub.choices["learn"].add_argument("--checkpoint-out", required=True)

    p = stage("correct", cmd_correct, "correction stage (OT, Alg. 2 and Eq. 10)", data=False)
    p.add_argument("--iteration", type=int, required=True)
    p.add_argument("--latents", required=True)
    p.add_argument("--prior", required=True)
    p.add_argument("--previous", default=None, help="previous correction (warm start of h)")
    p.add_argument("--latents-out", required=True)
    p.add_argument("--stats-out", required=True)
    p.add_argument("--device", default="auto")

    p = stage("grid", cmd_grid, "PNG grid of training images, reconstructions and samples")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--latents", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--out", required=True)

    p = stage("fid-reference", cmd_fid_reference, "Inception statistics of real training images")
    p.add_argument("--images", type=int, default=None, help="first N training images (default: all)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)

    p = stage("evaluate", cmd_evaluate, "Table 1 metrics of a run: MSE (train, test), FID, OT cost")
    p.add_argument("--iteration", type=int, required=True, help="the iteration evaluated")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--latents", required=True)
    p.add_argument("--prior", required=True)
    p.add_argument("--fid-reference", required=True)
    p.add_argument("--fid-samples", type=int, required=True)
    p.add_argument("--test-steps", type=int, required=True)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)

    p = stage("anomaly", cmd_anomaly, "anomaly AUPRC of a run trained without one digit (Table 2)")
    p.add_argument("--model", required=True, help="model key the run belongs to (e.g. ours)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--test-steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)

    p = sub.add_parser("table1", help="assemble Table 1 (CSV and Markdown)")
    p.set_defaults(func=cmd_table1)
    p.add_argument("--metrics", nargs="+", required=True, help="RUN=metrics.json pairs")
    p.add_argument("--reference", required=True, help="CSV of the paper's numbers")
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)

    p = sub.add_parser("table2", help="assemble Table 2 (CSV and Markdown)")
    p.set_defaults(func=cmd_table2)
    p.add_argument("--anomaly", nargs="+", required=True, help="anomaly JSON files")
    p.add_argument("--reference", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)

    p = sub.add_parser("history", help="per-iteration history CSV of a run (DVC plots)")
    p.set_defaults(func=cmd_history)
    p.add_argument("--run", help="experiment key (for messages)")
    p.add_argument("--stats", nargs="+", required=True, help="the run's infer/correct/learn JSON files")
    p.add_argument("--out", required=True)
    for name in ("infer", "learn", "correct", "train-block"):
        sub.choices[name].add_argument("--tf32", action="store_true",
                                       help="TF32 matrix units for CUDA float32 matmuls and convolutions")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "tf32"):  # training stages: IEEE float32 unless asked (PyTorch lets cuDNN use TF32)
        set_tf32(args.tf32)
    try:
        args.func(args)
    except (ConfigError, ValueError, RuntimeError, OSError, FloatingPointError) as exc:  # OSError: disk full, ...
        print(f"shortrun-ot: error: {_context(args)}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
