"""The HTML report of a run directory: self-contained, faithful to results.json, atomic, and via the CLI.

One tiny real run (LeNet, 32 px, IG and GI, 3 steps, 1 restart, 2 images) is shared by the tests;
tests that alter a run work on a copy. The page is parsed with the standard library's html.parser.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gifd.cli import main
from gifd.errors import GifdError
from gifd.experiment import ExperimentConfig, run_experiment
from gifd.report import (
    MIN_IMAGE_SIDE,
    REPORT_NAME,
    RunView,
    load_results,
    render_report,
    stage_image_name,
    write_report,
)
from gifd.report.plots import stage_boundaries
from gifd.results import RESULTS_VERSION

ATTACKS = ["ig", "gi"]
RESOLUTION = 32


class ReportParser(HTMLParser):
    """Collects the <img> attributes, every table's rows (cells as (text, classes)) and <pre> texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str | None]] = []
        self.tables: list[
            dict[str, Any]
        ] = []  # {"classes": [...], "attrs": {...}, "rows": [[(text, classes, has_img)]]}
        self.pres: list[dict[str, Any]] = []
        self.tags: list[str] = []
        self._table_stack: list[dict[str, Any]] = []
        self._cell: dict[str, Any] | None = None
        self._pre: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attributes)
            if self._cell is not None:
                self._cell["img"] = True
        elif tag == "table":
            table = {"classes": classes, "attrs": attributes, "rows": []}
            self.tables.append(table)
            self._table_stack.append(table)
        elif tag == "tr" and self._table_stack:
            self._table_stack[-1]["rows"].append([])
        elif tag in ("td", "th") and self._table_stack:
            self._cell = {"text": "", "classes": classes, "img": False}
        elif tag == "pre":
            self._pre = {"classes": classes, "text": ""}

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table_stack:
            rows = self._table_stack[-1]["rows"]
            if rows:
                rows[-1].append((self._cell["text"].strip(), self._cell["classes"], self._cell["img"]))
            self._cell = None
        elif tag == "table" and self._table_stack:
            self._table_stack.pop()
        elif tag == "pre" and self._pre is not None:
            self.pres.append(self._pre)
            self._pre = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._pre is not None:
            self._pre["text"] += data


def parse(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def table(parser: ReportParser, *classes: str, exclude: str | None = None) -> dict[str, Any]:
    found = [
        t for t in parser.tables if all(c in t["classes"] for c in classes) and exclude not in t["classes"]
    ]
    assert len(found) == 1, f"expected one table with classes {classes}, found {len(found)}"
    return found[0]


def decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    picture = Image.open(io.BytesIO(data))
    picture.load()
    assert picture.format == "PNG"
    return picture


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, tiny attack run written by run_experiment."""
    out = tmp_path_factory.mktemp("report") / "run"
    config = ExperimentConfig(
        victim="lenet",
        resolution=RESOLUTION,
        images="builtin:cifar10",
        indices=[0, 1],
        attacks=ATTACKS,
        steps=3,
        restarts=1,
        seed=0,
    )
    run_experiment(config, out, progress=False)
    return out


@pytest.fixture(scope="module")
def report(run_dir: Path) -> tuple[Path, ReportParser, dict[str, Any]]:
    path = write_report(run_dir)
    return path, parse(path), json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / REPORT_NAME).unlink(missing_ok=True)
    return copy


def test_report_is_written_atomically_in_the_run_directory(report, run_dir: Path) -> None:
    path, _, _ = report
    assert path == run_dir / REPORT_NAME and path.is_file()
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")


def test_every_image_is_an_embedded_png(report) -> None:
    _, parser, _ = report
    # 2 originals + 2 reconstructions per attack + one loss plot per attack
    assert len(parser.images) == 2 + 2 * len(ATTACKS) + len(ATTACKS)
    for attributes in parser.images:
        decode_png(attributes["src"] or "")


def test_grid_images_are_enlarged_copies_of_the_run_pngs(report, run_dir: Path) -> None:
    """The grid shows each saved PNG enlarged by an integer factor with nearest neighbour (exact pixels)."""
    _, parser, _ = report
    grid = table(parser, "grid", exclude="stages")
    labels = [row[0][0] for row in grid["rows"][1:]]
    assert labels == ["original", *ATTACKS]
    factor = -(-MIN_IMAGE_SIDE // RESOLUTION)
    shown = [a for a in parser.images if (a.get("class") or "") == "px"]
    names = [f"original_{i:03d}" for i in range(2)] + [f"{a}_{i:03d}" for a in ATTACKS for i in range(2)]
    assert len(shown) == len(names)
    for attributes, name in zip(shown, names, strict=True):
        picture = np.asarray(decode_png(attributes["src"] or "").convert("RGB"))
        saved = np.asarray(Image.open(run_dir / "images" / f"{name}.png").convert("RGB"))
        assert picture.shape == (RESOLUTION * factor, RESOLUTION * factor, 3)
        assert min(picture.shape[:2]) >= MIN_IMAGE_SIDE
        np.testing.assert_array_equal(picture, saved.repeat(factor, axis=0).repeat(factor, axis=1))
        assert attributes["width"] == str(RESOLUTION * factor)


def test_metrics_table_has_one_row_per_attack_with_the_results_numbers(report) -> None:
    _, parser, results = report
    metrics = table(parser, "metrics", exclude="per-image")
    header = [cell[0] for cell in metrics["rows"][0]]
    rows = {row[0][0]: row for row in metrics["rows"][1:]}
    assert list(rows) == ATTACKS
    column = {
        name: header.index(name)
        for name in ("PSNR (dB) ↑", "SSIM ↑", "LPIPS-ST ↓", "MSE ↓", "seconds ↓", "steps")
    }
    assert "MS-SSIM ↑" not in header  # not computable at 32 px, so absent from results.json
    for attack, row in rows.items():
        summary = results["attacks"][attack]
        assert row[column["PSNR (dB) ↑"]][0] == f"{summary['psnr']:.2f}"
        assert row[column["SSIM ↑"]][0] == f"{summary['ssim']:.3f}"
        assert row[column["LPIPS-ST ↓"]][0] == f"{summary['lpips_st']:.3f}"
        assert row[column["MSE ↓"]][0] == f"{summary['mse']:.4f}"
        assert row[column["seconds ↓"]][0] == f"{summary['seconds']:.1f}"
        assert row[column["steps"]][0] == "3"
    best_psnr = max(ATTACKS, key=lambda a: results["attacks"][a]["psnr"])
    best_mse = min(ATTACKS, key=lambda a: results["attacks"][a]["mse"])
    for attack, row in rows.items():
        assert ("best" in row[column["PSNR (dB) ↑"]][1]) == (attack == best_psnr)
        assert ("best" in row[column["MSE ↓"]][1]) == (attack == best_mse)
        assert "best" not in row[column["steps"]][1]


def test_per_image_values_are_listed(report) -> None:
    _, parser, results = report
    per_image = table(parser, "per-image")
    header = [cell[0] for cell in per_image["rows"][0]]
    psnr_column = header.index("PSNR (dB) ↑")
    body = per_image["rows"][1:]
    assert len(body) == 2 * len(ATTACKS)
    for i in range(2):
        for j, attack in enumerate(ATTACKS):
            row = body[i * len(ATTACKS) + j]
            offset = 1 if j == 0 else 0  # the image cell spans the attack rows
            assert row[offset][0] == attack
            assert (
                row[psnr_column - 1 + offset][0]
                == f"{results['attacks'][attack]['per_image']['psnr'][i]:.2f}"
            )


def test_header_states_threat_model_labels_and_defense(report) -> None:
    path, parser, results = report
    facts = {row[0][0]: row[1][0] for row in parser.tables[0]["rows"]}
    assert facts["Victim"].startswith("lenet")
    assert "32 × 32" in facts["Resolution"] and "builtin:cifar10" in facts["Images"]
    assert "white-box" in facts["Threat model"] and "inferred from the gradient" in facts["Threat model"]
    assert "unique" in facts["Threat model"] and "no batch-norm statistics" in facts["Threat model"]
    assert facts["Defense"].startswith("none")
    assert f"{100 * results['label_accuracy']:.0f}%" in facts["Label inference"]
    assert "shift-tolerant" in path.read_text(encoding="utf-8")


def test_config_json_and_provenance_are_in_the_footer(report) -> None:
    path, parser, results = report
    configs = [p for p in parser.pres if "config" in p["classes"]]
    assert len(configs) == 1
    assert json.loads(configs[0]["text"]) == results["config"]
    text = path.read_text(encoding="utf-8")
    assert results["versions"]["torch"] in text and results["device"] in text


def test_page_is_self_contained(report) -> None:
    path, parser, _ = report
    text = path.read_text(encoding="utf-8")
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert "image-rendering: pixelated" in text


def test_missing_results_json_is_a_gifd_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(GifdError, match=r"no results\.json in .*gifd attack"):
        write_report(tmp_path)
    with pytest.raises(GifdError, match="does not exist"):
        write_report(tmp_path / "absent")
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(GifdError, match="cannot read"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text('{"seed": 0}')
    with pytest.raises(GifdError, match="not a gifd results file"):
        write_report(tmp_path)
    assert not (tmp_path / REPORT_NAME).exists()


def test_a_failed_rebuild_keeps_the_previous_report(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    previous = write_report(run_copy).read_bytes()
    import gifd.report

    def broken(*args: object) -> str:
        raise RuntimeError("plot failed")

    sections = [broken if s is gifd.report.curves_section else s for s in gifd.report.SECTIONS]
    monkeypatch.setattr(gifd.report, "SECTIONS", sections)
    with pytest.raises(RuntimeError):
        write_report(run_copy)
    assert (run_copy / REPORT_NAME).read_bytes() == previous
    assert not [p.name for p in run_copy.iterdir() if p.name.startswith(f".{REPORT_NAME}")]


def test_missing_png_becomes_a_placeholder(run_copy: Path) -> None:
    (run_copy / "images" / "ig_001.png").unlink()
    path = write_report(run_copy)
    parser = parse(path)
    assert len(parser.images) == 2 + 2 * len(ATTACKS) + len(ATTACKS) - 1
    assert 'title="images/ig_001.png not found"' in path.read_text(encoding="utf-8")


def test_exact_reconstruction_shows_infinite_psnr_as_best(run_copy: Path) -> None:
    results = json.loads((run_copy / "results.json").read_text())
    results["attacks"]["gi"]["psnr"] = None  # how results.json stores an infinite PSNR
    results["attacks"]["gi"]["per_image"]["psnr"][0] = None
    (run_copy / "results.json").write_text(json.dumps(results))
    parser = parse(write_report(run_copy))
    metrics = table(parser, "metrics", exclude="per-image")
    gi_row = next(row for row in metrics["rows"] if row[0][0] == "gi")
    ig_row = next(row for row in metrics["rows"] if row[0][0] == "ig")
    assert gi_row[1][0] == "∞" and "best" in gi_row[1][1] and "best" not in ig_row[1][1]


def _add_stages(run: Path, losses: list[list[float]], end_steps: bool = True) -> dict[str, Any]:
    """Pretend `ig` was a staged attack: one stage entry per loss in every batch."""
    results = json.loads((run / "results.json").read_text())
    for batch, batch_losses in zip(results["batches"], losses, strict=True):
        batch["attacks"]["ig"]["stages"] = [
            {
                "stage": s,
                "name": f"block {s}",
                "gradient_loss": loss,
                "restart_losses": [loss],
                **({"end_step": s + 1} if end_steps else {}),
            }
            for s, loss in enumerate(batch_losses)
        ]
    (run / "results.json").write_text(json.dumps(results))
    return results


def test_stage_progression_shows_each_stage_image_and_marks_the_answer(run_copy: Path) -> None:
    _add_stages(run_copy, [[0.5, 0.2, 0.3], [0.4, 0.3, 0.1]])
    colours = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}
    for stage, colour in colours.items():
        for i in range(2):
            Image.new("RGB", (RESOLUTION, RESOLUTION), colour).save(
                run_copy / stage_image_name("ig", stage, i)
            )
    parser = parse(write_report(run_copy))
    stages = table(parser, "stages")
    assert stages["attrs"]["data-attack"] == "ig"
    header = [cell[0] for cell in stages["rows"][0]]
    assert header[:2] == ["image", "original"] and header[2].startswith("stage 0")
    body = stages["rows"][1:]
    assert len(body) == 2
    for row, chosen_stage, loss in zip(body, [1, 2], ["0.2", "0.1"], strict=True):
        assert all(has_img for _, _, has_img in row[1:])
        stage_cells = row[2:]
        assert [("chosen" in classes) for _, classes, _ in stage_cells] == [
            s == chosen_stage for s in range(3)
        ]
        assert stage_cells[chosen_stage][0] == f"loss {loss}"
    # the stage cells show the stage PNGs: the first stage image is pure red, enlarged
    stage_srcs = [a["src"] for a in parser.images if "stage" in (a.get("alt") or "")]
    assert len(stage_srcs) == 6
    first = np.asarray(decode_png(stage_srcs[0] or "").convert("RGB"))
    assert first.shape[0] >= MIN_IMAGE_SIDE and (first == np.array(colours[0], dtype=np.uint8)).all()


def test_stage_progression_without_stage_pngs_shows_losses_only(run_copy: Path) -> None:
    _add_stages(run_copy, [[0.5, 0.2], [0.4, 0.3]])
    path = write_report(run_copy)
    parser = parse(path)
    stages = table(parser, "stages")
    assert [cell[0] for cell in stages["rows"][0]][1].startswith("stage 0")  # no original column
    assert not any(has_img for row in stages["rows"] for _, _, has_img in row)
    assert [row[1][0] for row in stages["rows"][1:]] == ["loss 0.5", "loss 0.4"]
    assert "were not saved in this run" in path.read_text(encoding="utf-8")


def test_unstaged_run_has_no_progression_section(report) -> None:
    path, parser, _ = report
    assert not [t for t in parser.tables if "stages" in t["classes"]]
    assert 'id="stages"' not in path.read_text(encoding="utf-8")


def test_stage_boundaries_recorded_given_or_estimated(run_copy: Path) -> None:
    results = _add_stages(run_copy, [[0.5, 0.2, 0.3], [0.4, 0.3, 0.1]])
    assert stage_boundaries(RunView(results, run_copy), "ig") == ([1.0, 2.0], False)
    results = _add_stages(run_copy, [[0.5, 0.2, 0.3], [0.4, 0.3, 0.1]], end_steps=False)
    for batch in results["batches"]:
        batch["attacks"]["ig"]["steps"] = 10
    # GIFD's default split of 10 steps over 3 stages is 4, 3, 3
    assert stage_boundaries(RunView(results, run_copy), "ig") == ([4.0, 7.0], True)
    results["config"]["attack_settings"] = {"ig": {"stage_steps": [2, 2, 6]}}
    assert stage_boundaries(RunView(results, run_copy), "ig") == ([2.0, 4.0], False)
    assert stage_boundaries(RunView(results, run_copy), "gi") == ([], False)


def test_defense_is_shown_when_the_config_has_one(run_copy: Path) -> None:
    results = json.loads((run_copy / "results.json").read_text())
    results["config"]["defense"] = {"name": "gradient-noise", "sigma": 0.01}
    (run_copy / "results.json").write_text(json.dumps(results))
    parser = parse(write_report(run_copy))
    facts = {row[0][0]: row[1][0] for row in parser.tables[0]["rows"]}
    assert "gradient-noise" in facts["Defense"] and "0.01" in facts["Defense"]


def test_cli_report_rebuilds_the_page(run_copy: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(run_copy)]) == 0
    assert (run_copy / REPORT_NAME).is_file()
    assert str(run_copy / REPORT_NAME) in out.getvalue()
    empty = tmp_path / "empty"
    empty.mkdir()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["report", str(empty)]) == 2
    assert err.getvalue().startswith("gifd report: error: no results.json")


def test_chromium_renders_the_report(report, tmp_path: Path) -> None:
    """Headless Chromium opens the file and paints it (skipped when Chromium is not installed)."""
    chromium = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if chromium is None:
        pytest.skip("chromium is not installed")
    path, _, _ = report
    screenshot = tmp_path / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                f"--screenshot={screenshot}",
                "--window-size=1000,1400",
                path.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    picture = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float32)
    assert picture.shape == (1400, 1000, 3)
    assert picture.std() > 10  # text, tables and images were painted, not a blank page


def test_results_json_is_typed_and_versioned(run_copy: Path) -> None:
    path = run_copy / "results.json"
    results = json.loads(path.read_text())
    typed = load_results(run_copy)
    assert typed.version == RESULTS_VERSION and typed.attacks["ig"].steps == results["attacks"]["ig"]["steps"]
    history = results["batches"][0]["attacks"]["gi"]["loss_history"]
    assert typed.batches[0].attacks["gi"].loss_history.steps == history["steps"] and history["steps"]
    # Version 1 (before `version`, settings and pruned were recorded) still loads.
    old = json.loads(path.read_text())
    del old["version"]
    for batch in old["batches"]:
        for record in batch["attacks"].values():
            del record["settings"], record["pruned"]
    path.write_text(json.dumps(old))
    assert load_results(run_copy).version == 1
    assert "<table" in render_report(load_results(run_copy), run_copy)
    # A newer version, or a key this gifd does not know, is one line naming the fix or the key.
    path.write_text(json.dumps({**results, "version": RESULTS_VERSION + 1}))
    with pytest.raises(GifdError, match="newer than this gifd reads .*upgrade gifd"):
        load_results(run_copy)
    results["batches"][0]["attacks"]["ig"]["surprise"] = 1
    path.write_text(json.dumps(results))
    with pytest.raises(GifdError, match=r"batches\.0\.attacks\.ig\.surprise"):
        load_results(run_copy)
