"""The paper's Tables 1 and 2: measured rows next to the numbers printed in the paper."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .io import save_text

DATASET_TITLE = {"mnist": "MNIST", "mnist5k": "MNIST (5k subset)", "svhn": "SVHN", "celeba": "CelebA",
                 "mnist64": "MNIST 64x64", "mnist5k64": "MNIST 64x64 (5k subset)", "celeba128": "CelebA 128x128"}
#: Row titles of run keys (as the paper names the systems); other runs keep their key.
MODEL_TITLE = {"ours": "Ours", "abp": "ABP", "vae": "VAE", "two_stage_vae": "2sVAE", "rae": "RAE",
               "sri": "SRI", "sri5": "SRI (L=5)", "lebm": "LEBM", "aeot": "AE-OT", "cvae": "C-VAE",
               "wae": "WAE", "vae_nf": "VAE-NF", "infovae": "InfoVAE"}


def paper_rows(path: str | Path, table: int) -> pd.DataFrame:
    """The paper's numbers of ``table`` from the reference CSV (columns dataset, model, metric, value, std)."""
    reference = pd.read_csv(path, dtype={"table": str})  # 1..6: the main paper's; aeot-1: AE-OT's; cvae-1, -2: C-VAE's
    return reference[reference["table"] == str(table)].drop(columns="table")


def _title(run: str, dataset: str | None = None) -> str:
    """The paper's name of run ``run`` (``ours-svhn``, Table 1's ``ours`` on SVHN, is "Ours")."""
    base = run.removesuffix(f"-{dataset}") if dataset else run
    return MODEL_TITLE.get(base, base)


def table1(metrics_files: list[str | Path], reference: str | Path) -> pd.DataFrame:
    """One row per measured run (MSE, FID, distance of its latents to the prior, training cost), then the paper's."""
    rows = []
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        training = m.get("training", {})
        rows.append({
            "dataset": DATASET_TITLE.get(m["dataset"], m["dataset"]), "model": _title(m["run"], m["dataset"]), "source": "measured",
            "method": m["method"], "mse_train": m["mse_train"], "mse_test": m["mse_test"], "fid": m["fid"],
            "fid_samples": m["fid_samples"], "fid_real_images": m["fid_real_images"],
            "fid_precision": m.get("fid_precision", "float32"), "ot_cost": m["ot_cost"],
            "ot_cost_prior_floor": m["ot_cost_prior_floor"], "latent_fd": m["latent_fd"],
            "train_images": m["train_images"], "iterations": m["iterations"],
            "train_seconds": training.get("train_seconds"), "device": m["device"],
        })
    paper = paper_rows(reference, 1).pivot_table(index=["dataset", "model"], columns="metric", values="value",
                                                   sort=False).reset_index()
    paper = paper.rename(columns={"mse": "mse_train"}).assign(source="paper")
    return pd.concat([pd.DataFrame(rows), paper], ignore_index=True)


def table2(anomaly_files: list[str | Path], reference: str | Path) -> pd.DataFrame:
    """AUPRC per held-out digit as mean and std over seeds, per model; the paper's rows below."""
    records = []
    for path in anomaly_files:
        a = json.loads(Path(path).read_text())
        records.append({"model": _title(a["model"]), "digit": a["heldout_digit"], "seed": a["seed"], "auprc": a["auprc"]})
    measured = (
        pd.DataFrame(records).groupby(["model", "digit"])["auprc"]
        .agg(mean="mean", std=lambda x: x.std(ddof=1) if len(x) > 1 else float("nan"), seeds="count")
        .reset_index().assign(source="measured")
    )
    paper = paper_rows(reference, 2)
    paper = pd.DataFrame({
        "model": paper["model"], "digit": paper["metric"].str.removeprefix("auprc_digit").astype(int),
        "mean": paper["value"], "std": paper["std"], "seeds": pd.NA, "source": "paper",
    })
    return pd.concat([measured, paper], ignore_index=True)


def markdown(table: pd.DataFrame, caption: str) -> str:
    """A Markdown rendering (pipe table) with a caption line."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    def cell(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.4g}"
        return "" if v is None or v is pd.NA else str(v)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([caption, "", header, rule, *body]) + "\n"


def write_table(table: pd.DataFrame, csv_path: str | Path, md_path: str | Path, caption: str) -> None:
    save_text(table.to_csv(index=False), csv_path)
    save_text(markdown(table, caption), md_path)


def sweep_curves(histories: dict[float, str | Path]) -> pd.DataFrame:
    """Per sweep value and iteration t >= 1: the inferred latents' distance to the prior (Frechet distance
    of their Gaussian fit, mean norm), the training reconstruction MSE of that inference, and on
    correction iterations the OT cost of the inferred latents to the prior sample (from ``history.csv``)."""
    frames = []
    for value, path in histories.items():
        history = pd.read_csv(path)
        history = history[history["iteration"] > 0]
        frames.append(pd.DataFrame({
            "value": value, "iteration": history["iteration"], "latent_fd": history["infer.latent_fd"],
            "latent_norm": history["infer.latent_norm"], "mse": history["infer.mse"],
            "ot_cost": history["correct.cost"] if "correct.cost" in history else float("nan"),
        }))
    return pd.concat(frames, ignore_index=True)


EVALUATION_COLUMNS = ["mse_train", "mse_test", "fid", "fid_samples", "ot_cost", "ot_cost_prior_floor", "latent_fd"]


def sweep_evaluations(evaluations: dict[float, list[str | Path]]) -> pd.DataFrame:
    """One row per evaluation JSON (evaluate / evaluate_point) of each sweep value."""
    rows = []
    for value, paths in evaluations.items():
        for path in paths:
            m = json.loads(Path(path).read_text())
            rows.append({"value": value, "run": m["run"], "iteration": m["iterations"], "point": m["point"],
                         **{key: m[key] for key in EVALUATION_COLUMNS}})
    return pd.DataFrame(rows)


def table4(before: dict[float, str | Path], after: dict[float, str | Path], reference: str | Path) -> pd.DataFrame:
    """Table 4: per step size s, the metrics "before" (the generator and latents right before the last
    correction) and "after" (the generator that learned from the corrected latents, and those latents)."""
    measured = sweep_evaluations({s: [before[s], after[s]] for s in before})
    measured = measured.assign(point=measured["point"].str.removesuffix("_correction"), source="measured")
    measured = measured.rename(columns={"value": "step_size"})
    paper = paper_rows(reference, 4)
    paper = paper.assign(step_size=paper["model"].str.removeprefix("s=").astype(float),
                         point=paper["metric"].str.rsplit("_", n=1).str[1],
                         metric=paper["metric"].str.rsplit("_", n=1).str[0])
    paper = (paper.pivot_table(index=["step_size", "point"], columns="metric", values="value", sort=False)
             .reset_index().rename(columns={"mse": "mse_train"}).assign(source="paper"))
    return pd.concat([measured, paper], ignore_index=True)


def _metrics_row(m: dict) -> dict:
    """The columns every measured row of an ablation shares: quality, distance to the prior, training cost."""
    training = m.get("training", {})
    return {"dataset": DATASET_TITLE.get(m["dataset"], m["dataset"]), "run": m["run"],
            **{key: m[key] for key in EVALUATION_COLUMNS}, "train_images": m["train_images"],
            "iterations": m["iterations"], "train_seconds": training.get("train_seconds"), "device": m["device"]}


def ablation_table(number: int, key: str, metrics: dict[float, list[str | Path]], reference: str | Path) -> pd.DataFrame:
    """An ablation over one setting (Tables 3, 5, 6): per value of ``key`` and base run, the final model's
    metrics and its training cost (seconds, device); below, the paper's rows of table ``number`` (their
    ``model`` column is ``<symbol>=<value>``: d=20, K=30, L2=1)."""
    measured = pd.DataFrame([{key: value, "source": "measured", **_metrics_row(json.loads(Path(path).read_text()))}
                             for value, paths in metrics.items() for path in paths])
    paper = paper_rows(reference, number)
    paper = paper.assign(setting=paper["model"].str.split("=").str[1].astype(float))
    paper = (paper.pivot_table(index=["dataset", "setting"], columns="metric", values="value", sort=False)
             .reset_index().rename(columns={"setting": key, "mse": "mse_train"}).assign(source="paper"))
    return pd.concat([measured.sort_values(["dataset", key]), paper], ignore_index=True)


def occlusion_table(metrics_files: list[str | Path]) -> pd.DataFrame:
    """Learning from occluded images: per run, the fraction of pixels missing, the training reconstructions'
    MSE on the observed and on the missing pixels (unsupervised inpainting), on test images and FID."""
    rows = []
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        if "mse_train_missing" not in m:
            raise ValueError(f"{path}: run {m['run']!r} did not learn from occluded images (no 'occlusion.missing')")
        rows.append({"missing_fraction": m["missing_fraction"], **_metrics_row(m),
                     "mse_train_observed": m["mse_train_observed"], "mse_train_missing": m["mse_train_missing"]})
    return pd.DataFrame(rows).sort_values(["missing_fraction", "run"], ignore_index=True)


def aeot_mnist_table(scores_files: list[str | Path], metrics_files: list[str | Path], reference: str | Path) -> pd.DataFrame:
    """AE-OT's Table 1 (Liu et al.): per run the Inception Score (where the Inception logits exist), the
    classifier score, FID, MSE and training cost; below, the paper's Inception Scores."""
    rows = []
    for scores_path, metrics_path in zip(scores_files, metrics_files):
        scores, m = json.loads(Path(scores_path).read_text()), json.loads(Path(metrics_path).read_text())
        if scores["run"] != m["run"]:
            raise ValueError(f"{scores_path} is of run {scores['run']!r} but {metrics_path} of run {m['run']!r}")
        rows.append({"model": _title(m["run"], m["dataset"]), "source": "measured",
                     "inception_score": scores["inception_score"], "inception_score_std": scores["inception_score_std"],
                     "classifier_score": scores["classifier_score"], "classifier_score_std": scores["classifier_score_std"],
                     "classifier_test_accuracy": scores["classifier_test_accuracy"], "samples": scores["samples"],
                     **_metrics_row(m)})
    paper = paper_rows(reference, "aeot-1")
    paper = pd.DataFrame({"model": paper["model"], "source": "paper", "inception_score": paper["value"],
                          "inception_score_std": paper["std"], "dataset": paper["dataset"]})
    return pd.concat([pd.DataFrame(rows), paper], ignore_index=True)


MIXTURE_METRICS = ("high_density_ratio", "modes_covered", "std_within_modes", "mmd")


def mixture_table(results: list[dict], reference: str | Path) -> pd.DataFrame:
    """The Coupled VAE's Tables 1 and 2 (Hao & Shafto): per model the mean and standard deviation over seeds
    of the high-density ratio, the modes covered (not in the paper), the spread within modes, the MMD between
    prior and aggregate posterior and the training time; below, the paper's numbers (its ± as printed)."""
    frame = pd.DataFrame(results)
    rows = []
    for model, runs in frame.groupby("model", sort=False):
        row = {"model": model, "source": "measured", "seeds": len(runs)}
        for metric in (*MIXTURE_METRICS, "train_seconds"):
            row[metric], row[f"{metric}_std"] = runs[metric].mean(), runs[metric].std(ddof=1) if len(runs) > 1 else None
        row.update(points=int(runs["points"].iloc[0]), samples=int(runs["samples"].iloc[0]),
                   device=runs["device"].iloc[0])
        rows.append(row)
    paper = pd.concat([paper_rows(reference, "cvae-1"), paper_rows(reference, "cvae-2")])
    paper_wide = []
    for model, values in paper.groupby("model", sort=False):
        row = {"model": model, "source": "paper"}
        for _, entry in values.iterrows():
            row[entry["metric"]], row[f"{entry['metric']}_std"] = entry["value"], entry["std"]
        paper_wide.append(row)
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(paper_wide)], ignore_index=True)
