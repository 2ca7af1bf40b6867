"""The Snakemake HTML report (`snakemake --report`) of a tiny workflow, opened in a headless Chromium.

A tiny configuration trains two runs (ours and ABP) and builds Table 1, each run's sample grid and
history, Fig. 4 and the chain-stability figure; the report of those targets, as a .zip (figures and
tables beside the page) and as one self-contained .html, is clicked through like a reader would: every
category and subcategory of the menu, every result's description and its view (the image shown in the
page, or the table's download link). Every image must load (naturalWidth > 0), every table link must give
back the CSV the workflow wrote, and nothing may raise a script error, log a console error or fail to load.

Chromium comes from tests/chromium.sh (Debian's package, installed where it is missing); without root and
apt-get the module skips and says why. A screenshot of the report goes where REPORT_SCREENSHOT points
(docs/images/report.png; docs/report.md).
"""

import base64
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import REPO, snakemake, tiny_config
from chromium_devtools import Browser

pytestmark = pytest.mark.slow

CHROMIUM = REPO / "tests" / "chromium.sh"

# In the page: go through the menu to every subcategory, open each result's info and view. Returns what it
# saw: per result its labels, description, and the image's natural size or the table link's text.
CLICK_THROUGH = r"""
(async () => {
    const settle = () => new Promise(done => requestAnimationFrame(() => setTimeout(done, 30)));
    const nav = () => document.querySelector("nav");
    const click = async (text) => {
        const link = [...nav().querySelectorAll("a")].find(a => a.textContent.trim() === text);
        if (!link) throw new Error(`no link "${text}" in the menu: ${nav().innerText}`);
        link.click();
        await settle();
    };
    const open = async (category, subcategory) => {  // from the home menu, as a reader clicks
        app.setView({navbarMode: "menu"});
        await settle();
        await click(category);
        if (app.state.navbarMode === "category") await click(subcategory);
        if (app.state.navbarMode !== "subcategory" || app.state.category !== category
            || app.state.subcategory !== subcategory)
            throw new Error(`could not open ${category} / ${subcategory}`);
        return [...nav().querySelectorAll("tbody tr")];
    };
    const shown = async () => {  // the image in the content pane, once loaded (or failed)
        for (let i = 0; i < 200; i++) {
            const image = [...document.images].find(img => !img.closest("nav"));
            if (image && image.complete && image.getAttribute("src") === app.state.contentPath) {
                if (image.naturalWidth > 0) await image.decode().catch(() => {});
                return {src: image.getAttribute("src").slice(0, 80), width: image.naturalWidth,
                        height: image.naturalHeight};
            }
            await new Promise(done => setTimeout(done, 50));
        }
        return {src: null, width: 0, height: 0};
    };
    const read = (url) => new Promise(done => {  // the table behind a download link
        const request = new XMLHttpRequest();
        request.onload = () => done(request.responseText);
        request.onerror = () => done(null);
        request.open("GET", url);
        request.send();
    });

    const seen = {};
    for (const category of Object.keys(categories)) {
        for (const subcategory of Object.keys(categories[category])) {
            const count = (await open(category, subcategory)).length;
            for (let row = 0; row < count; row++) {
                let cells = (await open(category, subcategory))[row].querySelectorAll("td");
                const labels = [...cells].slice(0, -1).map(td => td.textContent.trim());
                cells[cells.length - 1].querySelectorAll("a")[1].click();  // info
                await settle();
                const path = app.state.resultPath;
                const description = nav().querySelector(".prose");
                const entry = {category, subcategory, labels, mime: results[path].mime_type,
                               description: description ? description.textContent.trim() : ""};
                cells = (await open(category, subcategory))[row].querySelectorAll("td");
                const view = cells[cells.length - 1].querySelectorAll("a")[0];
                if (entry.mime.startsWith("image/")) {
                    view.click();  // eye: the image in the page
                    await settle();
                    entry.image = await shown();
                } else {
                    entry.href = view.getAttribute("href").slice(0, 80);
                    entry.text = await read(view.href);
                }
                seen[path] = entry;
            }
        }
    }
    app.setView({navbarMode: "menu", content: "stats"});
    await settle();
    const drawn = (id) => !!document.querySelector(`#${id} svg, #${id} canvas`);
    for (let i = 0; i < 100 && !(drawn("runtimes") && drawn("timeline")); i++) await settle();
    const statistics = drawn("runtimes") && drawn("timeline");
    app.setView({navbarMode: "menu", content: "rulegraph"});
    await settle();
    for (let i = 0; i < 100 && !drawn("rulegraph"); i++) await settle();
    return {seen, statistics, rulegraph: drawn("rulegraph"), results: Object.keys(results),
            title: (document.querySelector("h1.title") || {}).textContent || null,
            broken: [...document.images].filter(img => img.complete && img.naturalWidth === 0).map(img => img.src)};
})()
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    install = subprocess.run(["bash", str(CHROMIUM), "install"], capture_output=True, text=True)
    if install.returncode == 3:
        pytest.skip(install.stderr.strip())
    assert install.returncode == 0, install.stderr
    return subprocess.run(["bash", str(CHROMIUM), "path"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """A tiny trained workflow: its configuration and the targets whose report the tests build."""
    tmp = tmp_path_factory.mktemp("report")
    config_path = tiny_config(tmp, compute={"iterations_per_job": 4, "cuda_graphs": False, "tf32": False})
    config = yaml.safe_load(config_path.read_text())
    config["figures"] = {"figure4": {"runs": ["ours"]},
                         "chain_stability": {"runs": ["ours"], "step_sizes": [0.01, 3.0], "steps": 5, "images": 20,
                                             "perturbation": 1e-3}}
    config_path.write_text(yaml.safe_dump(config))
    results = tmp / "results"
    targets = ["all", str(results / "figures" / "figure4.png"), str(results / "figures" / "chain_stability.png")]
    snakemake("--configfile", "config/quick.yaml", str(config_path), "--", *targets)
    return {"config": config_path, "targets": targets, "results": results}


def build_report(workflow, out: Path) -> Path:
    """`snakemake --report OUT` of the tiny workflow's targets; the page to open (unpacked from a .zip)."""
    snakemake("--configfile", "config/quick.yaml", str(workflow["config"]), "--report", str(out), "--",
              *workflow["targets"])
    if out.suffix != ".zip":
        return out
    with zipfile.ZipFile(out) as archive:
        archive.extractall(out.parent)
    return out.parent / "report" / "report.html"


def embedded_data(page: Path) -> dict:
    """The report's `results` object: result path -> name, mime type, caption, labels, data URI or file."""
    text = page.read_text()
    start = text.index("var results = ", text.index('<script id="results">')) + len("var results = ")
    return json.JSONDecoder().raw_decode(text, start)[0]


def click_through(binary: str, page: Path, screenshot: Path | None = None) -> tuple[dict, list[str]]:
    with Browser(binary, width=1280, height=800) as browser:
        browser.open(page.as_uri())
        browser.wait_for("typeof app !== 'undefined' && typeof results !== 'undefined' && "
                         "getComputedStyle(document.querySelector('#loading-screen')).display === 'none'",
                         "the report's app")
        seen = browser.evaluate(CLICK_THROUGH)
        if screenshot is not None:  # Fig. 4 shown from the list under Figures, as a reader finds it
            figure4 = json.dumps(next(path for path in seen["seen"] if path.endswith("figure4.png")))
            browser.evaluate(f"""(async () => {{
                app.setView({{navbarMode: "menu", content: "rulegraph"}});
                await new Promise(done => setTimeout(done, 50));
                app.showCategory("Figures");
                await new Promise(done => setTimeout(done, 50));
                app.setView({{content: "img", contentPath: results[{figure4}].data_uri, resultPath: {figure4}}});
                await new Promise(done => setTimeout(done, 500));
            }})()""")
            screenshot.write_bytes(browser.screenshot())
        return seen, list(browser.errors)


def check(seen: dict, errors: list[str], workflow) -> list[str]:
    """What is wrong with the clicked-through report (nothing: [])."""
    problems = [f"browser: {error}" for error in errors]
    results = workflow["results"]
    expected = {results / "table1.csv", results / "figures" / "figure4.png", results / "figures" / "chain_stability.png",
                *(results / "runs" / run / name for run in ("ours", "abp") for name in ("figures/grid.png", "history.csv"))}
    if set(map(Path, seen["results"])) != expected:
        problems.append(f"the report holds {sorted(seen['results'])}, not {sorted(map(str, expected))}")
    for path in seen["results"]:
        entry = seen["seen"].get(path)
        if entry is None:
            problems.append(f"{path}: not reachable from the menu")
            continue
        where = f"{entry['category']} / {entry['subcategory']} / {' '.join(entry['labels'])}"
        if not entry["description"]:
            problems.append(f"{where}: no description")
        if any(label == path or not label for label in entry["labels"]):
            problems.append(f"{where}: listed by its path, not by a label")
        if "image" in entry and not entry["image"]["width"] > 0:
            problems.append(f"{where}: the image {entry['image']['src']} does not load")
        if "href" in entry and entry["text"] != Path(path).read_text():
            problems.append(f"{where}: the table link {entry['href']} does not give back {path}")
    if seen["broken"]:
        problems.append(f"broken images: {seen['broken']}")
    if not seen["statistics"]:
        problems.append("the statistics (run times, timeline) are not drawn")
    if not seen["rulegraph"]:
        problems.append("the rule graph is not drawn")
    if seen["title"] != "Short-run MCMC inference with OT correction":
        problems.append(f"the landing page's description is missing (title {seen['title']!r})")
    return problems


def test_the_zip_report_shows_every_table_and_figure_without_errors(chromium, workflow, tmp_path):
    page = build_report(workflow, tmp_path / "report.zip")
    # every figure and table of the report is a file beside the page, the one the workflow wrote
    for path, entry in embedded_data(page).items():
        assert (page.parent / entry["data_uri"]).read_bytes() == Path(path).read_bytes(), entry["data_uri"]
    screenshot = tmp_path / "report.png"
    seen, errors = click_through(chromium, page, screenshot)
    assert check(seen, errors, workflow) == []
    categories = {(entry["category"], entry["subcategory"]) for entry in seen["seen"].values()}
    assert categories == {("Tables", "Other"), ("Figures", "Other"), ("Samples", "Other"),
                          ("Training curves", "ours"), ("Training curves", "abp")}
    table1 = next(entry for path, entry in seen["seen"].items() if path.endswith("table1.csv"))
    assert table1["labels"] == ["Table 1: MSE, FID and OT cost"] and "reconstruction MSE" in table1["description"]
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
    if os.environ.get("REPORT_SCREENSHOT"):  # for docs/report.md: 256 colours, about 330 KB
        with Image.open(screenshot) as image:
            image.convert("RGB").quantize(256).save(os.environ["REPORT_SCREENSHOT"], optimize=True)

    # the check sees a figure that does not load: the same report without Fig. 4's file
    figure4 = next(entry for entry in embedded_data(page).values() if entry["name"] == "figure4.png")
    (page.parent / figure4["data_uri"]).unlink()
    seen, errors = click_through(chromium, page)
    problems = check(seen, errors, workflow)
    assert any("Fig. 4: reconstructions and samples: the image" in problem for problem in problems), problems
    assert any(problem.startswith("browser: ") and "ERR_FILE_NOT_FOUND" in problem for problem in problems), problems


def test_the_self_contained_html_report_shows_every_table_and_figure_without_errors(chromium, workflow, tmp_path):
    page = build_report(workflow, tmp_path / "report.html")
    for path, entry in embedded_data(page).items():  # every figure and table inside the page, as data: URIs
        assert entry["data_uri"].startswith("data:")
        payload = entry["data_uri"].split(";base64,", 1)[1]
        assert base64.b64decode(payload) == Path(path).read_bytes(), path
    seen, errors = click_through(chromium, page)
    assert check(seen, errors, workflow) == []
