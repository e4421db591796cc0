"""The self-contained HTML training report (tuneforge.report.write_report)."""
import math
import re
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

try:
    from tuneforge.report import write_report
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tuneforge.report import write_report


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------

def make_history(steps=300, log_every=10, eval_every=100, steps_per_epoch=100):
    """A Trainer-shaped log_history: training logs, periodic evals, final summary."""
    history = []
    for step in range(log_every, steps + 1, log_every):
        warmup = 30
        lr = 5e-5 * step / warmup if step <= warmup else 5e-5 * (steps - step) / (steps - warmup)
        loss = 0.69 * math.exp(-step / 150) + 0.1 + 0.02 * math.sin(step)
        history.append({"loss": round(loss, 4), "grad_norm": 1.0 + 0.5 * math.cos(step),
                        "learning_rate": lr, "epoch": step / steps_per_epoch, "step": step})
        if step % eval_every == 0:
            k = step // eval_every
            history.append({"eval_loss": 0.5 - 0.05 * k, "eval_accuracy": 0.8 + 0.02 * k,
                            "eval_f1": 0.79 + 0.02 * k, "eval_runtime": 3.2,
                            "eval_samples_per_second": 270.0, "eval_steps_per_second": 8.4,
                            "epoch": step / steps_per_epoch, "step": step})
    history.append({"train_runtime": 60.0, "train_samples_per_second": 33.0, "train_steps_per_second": 1.0,
                    "total_flos": 1.5e14, "train_loss": 0.4, "epoch": steps / steps_per_epoch, "step": steps})
    return history


ID2LABEL = {0: "negative", 1: "positive"}
CONFUSION = [[389, 39], [33, 411]]
PER_CLASS = [
    {"precision": 0.9218, "recall": 0.9089, "f1": 0.9153, "support": 428},
    {"precision": 0.9133, "recall": 0.9257, "f1": 0.9195, "support": 444},
]
SETTINGS = {"model_name_or_path": "all-MiniLM-L6-v2", "output_dir": "/runs/sst2-minilm", "learning_rate": 5e-5,
            "num_train_epochs": 3, "per_device_train_batch_size": 32, "seed": 1234, "fp16": False}
THROUGHPUT = {"train_samples_per_second": 33.0, "eval_samples_per_second": 270.0,
              "train_tokens_per_second": 4321.5}


def full_report(path, **overrides):
    kwargs = dict(log_history=make_history(), id2label=ID2LABEL, confusion=CONFUSION, per_class=PER_CLASS,
                  settings=SETTINGS, throughput=THROUGHPUT)
    kwargs.update(overrides)
    return write_report(path, **kwargs)


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictChecker(HTMLParser):
    """Fails on any end tag that does not close the innermost open element."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags, self.ids = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.ids.extend(v for k, v in attrs if k == "id")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.ids.extend(v for k, v in attrs if k == "id")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def check_structure(page):
    checker = StrictChecker()
    checker.feed(page)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    assert page.startswith("<!DOCTYPE html>")
    assert checker.tags[:1] == ["html"]
    assert len(checker.ids) == len(set(checker.ids)), "duplicate element ids"
    return checker


def check_self_contained(page):
    lowered = page.lower()
    assert re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", lowered) is None
    assert "http://" not in lowered and "https://" not in lowered
    assert "<script" not in lowered
    assert "<link" not in lowered
    assert "@import" not in lowered
    assert "<img" not in lowered and "<iframe" not in lowered


def section(page, section_id):
    """The HTML of one <section id=...> (sections do not nest)."""
    m = re.search(rf'<section class="card" id="{re.escape(section_id)}">(.*?)</section>', page, re.S)
    assert m, f"section {section_id!r} missing"
    return m.group(1)


def polyline_points(svg):
    return [len(p.split()) for p in re.findall(r'<polyline[^>]*points="([^"]*)"', svg)]


def svg_block(page, svg_id):
    m = re.search(rf'<svg id="{re.escape(svg_id)}".*?</svg>', page, re.S)
    assert m, f"svg {svg_id!r} missing"
    return m.group(0)


# ----------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------

def test_full_report_contents(tmp_path):
    out = full_report(tmp_path / "sub" / "report.html")
    assert isinstance(out, Path) and out == tmp_path / "sub" / "report.html" and out.is_file()
    page = out.read_text(encoding="utf-8")
    check_structure(page)
    check_self_contained(page)

    # Charts.
    for svg_id in ("loss-curve", "lr-curve", "grad-norm-curve", "confusion-matrix",
                   "eval-loss-curve", "eval-accuracy-curve", "eval-f1-curve"):
        assert f'<svg id="{svg_id}"' in page
    loss_svg = svg_block(page, "loss-curve")
    assert polyline_points(loss_svg)[0] == 30          # 30 training log entries
    assert ">Step</text>" in loss_svg and ">Loss</text>" in loss_svg
    assert "eval loss" in loss_svg                     # eval loss overlaid, with a legend
    assert page.count('class="chart eval-chart"') == 3  # quality metrics only, not runtime/throughput
    assert 'id="eval-runtime-curve"' not in page
    lr_svg = svg_block(page, "lr-curve")
    assert "5e-5" in lr_svg                            # scientific tick labels for small values

    # Eval table: one row per evaluation, all metrics.
    eval_html = section(page, "eval-metrics")
    assert eval_html.count("<tr>") == 1 + 3
    for text in ("0.4500", "0.8200", "0.8600", "0.8500", "270"):
        assert text in eval_html
    assert '<td class="num best">0.8600</td>' in eval_html   # best accuracy
    assert '<td class="num best">0.3500</td>' in eval_html   # best (lowest) loss

    # Confusion matrix: label names on both axes and every count.
    cm = svg_block(page, "confusion-matrix")
    assert len(re.findall(r'class="cm-row-label"[^>]*>(?:<title>[^<]*</title>)?negative<', cm)) == 1
    assert len(re.findall(r'class="cm-col-label"[^>]*>(?:<title>[^<]*</title>)?positive<', cm)) == 1
    assert "Predicted label" in cm and "True label" in cm
    for count in (389, 39, 33, 411):
        assert f">{count}</text>" in cm
    assert "90.9%" in cm and "92.6%" in cm             # row-normalised shares
    fills = re.findall(r'<rect[^>]*fill="(#[0-9a-f]{6})"', cm)
    lightness = [sum(int(f[i:i + 2], 16) for i in (1, 3, 5)) for f in fills]
    assert len(fills) == 4 and max(lightness[0], lightness[3]) < min(lightness[1], lightness[2])  # dark diagonal
    assert "800 of 872 correct" in section(page, "confusion")

    # Per-class table.
    pc = section(page, "per-class")
    for text in ("negative", "positive", "0.9218", "0.9089", "0.9153", "428", "0.9133", "0.9257", "0.9195",
                 "444", "macro avg", "weighted avg", "872"):
        assert text in pc
    assert "0.9174" in pc                              # macro F1 = (0.9153 + 0.9195) / 2

    # Settings and throughput.
    st = section(page, "settings")
    for text in ("model_name_or_path", "all-MiniLM-L6-v2", "/runs/sst2-minilm", "5e-05", "1234", "False"):
        assert text in st
    tp = section(page, "throughput")
    assert "4,321.5" in tp and "270" in tp

    # Summary tiles from the final log entry.
    summary = section(page, "summary")
    assert "0.4000" in summary and "1:00" in summary and "1.5e14" in summary


def test_text_is_escaped(tmp_path):
    nasty = "<b>&"
    page = write_report(
        tmp_path / "r.html",
        log_history=make_history(),
        id2label={0: nasty, 1: 'say "hi"'},
        confusion=CONFUSION,
        per_class=PER_CLASS,
        settings={"note": "<script>alert(1)</script>", "k<&>": "v"},
        throughput={"x<y": 1.0},
        title="Report <i>&</i>",
    ).read_text(encoding="utf-8")
    check_structure(page)
    check_self_contained(page)
    assert "<b>&" not in page
    assert "&lt;b&gt;&amp;" in svg_block(page, "confusion-matrix")
    assert "&lt;b&gt;&amp;" in section(page, "per-class")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "k&lt;&amp;&gt;" in page
    assert "<title>Report &lt;i&gt;&amp;&lt;/i&gt;</title>" in page
    assert "say &quot;hi&quot;" in page


def test_sections_omitted_when_inputs_missing(tmp_path):
    page = write_report(tmp_path / "r.html", log_history=make_history()).read_text(encoding="utf-8")
    check_structure(page)
    for missing in ('id="confusion"', 'id="confusion-matrix"', 'id="per-class"', 'id="settings"',
                    'id="throughput"'):
        assert missing not in page
    assert '<svg id="loss-curve"' in page and 'id="eval-metrics"' in page

    # No log history at all: a valid page with just the tables that were given.
    page = write_report(tmp_path / "r2.html", log_history=None, settings=SETTINGS).read_text(encoding="utf-8")
    check_structure(page)
    assert "<svg" not in page
    assert 'id="settings"' in page and 'id="eval-metrics"' not in page and 'id="summary"' not in page

    page = write_report(tmp_path / "r3.html", log_history=[]).read_text(encoding="utf-8")
    check_structure(page)
    assert "<svg" not in page


def test_regression_run_without_labels(tmp_path):
    history = [{"loss": 2.0 - 0.1 * i, "learning_rate": 1e-4, "epoch": i / 10, "step": i} for i in range(1, 11)]
    history.append({"eval_loss": 0.9, "eval_mse": 0.9, "eval_r2": 0.4, "epoch": 1.0, "step": 10})
    page = write_report(tmp_path / "r.html", log_history=history,
                        settings={"problem_type": "regression"}).read_text(encoding="utf-8")
    check_structure(page)
    assert 'id="confusion"' not in page and 'id="per-class"' not in page
    assert 'id="grad-norm-curve"' not in page        # never logged
    # One evaluation: a table, no per-metric charts.
    assert 'class="chart eval-chart"' not in page
    eval_html = section(page, "eval-metrics")
    assert "mse" in eval_html and "0.9000" in eval_html and "0.4000" in eval_html
    # Constant learning rate: drawn without dividing by zero.
    lr_svg = svg_block(page, "lr-curve")
    assert "nan" not in lr_svg.lower() and "inf" not in lr_svg.lower()
    ys = {float(p.split(",")[1]) for p in re.search(r'points="([^"]*)"', lr_svg).group(1).split()}
    assert len(ys) == 1


def test_single_point_and_non_finite_values(tmp_path):
    nan, inf = float("nan"), float("inf")
    history = [
        {"loss": 0.7, "learning_rate": 5e-5, "grad_norm": nan, "epoch": 0.1, "step": 10},
        {"loss": nan, "learning_rate": 4e-5, "grad_norm": inf, "epoch": 0.2, "step": 20},
        {"loss": inf, "learning_rate": 3e-5, "grad_norm": 1.0, "epoch": 0.3, "step": 30},
        {"loss": 0.5, "learning_rate": 2e-5, "grad_norm": 1.5, "epoch": 0.4, "step": 40},
        {"eval_loss": nan, "eval_accuracy": 0.5, "epoch": 0.4, "step": 40},
        {"eval_loss": 0.6, "eval_accuracy": nan, "epoch": 0.8, "step": 80},
        {"train_runtime": nan, "train_loss": nan, "epoch": 0.8, "step": 80},
    ]
    page = write_report(tmp_path / "r.html", log_history=history, confusion=[[3, 1], [0, 4]],
                        per_class=[{"precision": nan, "recall": 1.0, "f1": nan, "support": 4},
                                   {"precision": 0.8, "recall": 1.0, "f1": 0.89, "support": 4}]
                        ).read_text(encoding="utf-8")
    check_structure(page)
    for svg in re.findall(r"<svg.*?</svg>", page, re.S):
        coords = re.findall(r'(?:points|d|x|y|x1|x2|y1|y2|cx|cy|width|height)="([^"]*)"', svg)
        assert not any("nan" in c.lower() or "inf" in c.lower() for c in coords)
    loss_svg = svg_block(page, "loss-curve")
    assert polyline_points(loss_svg)[0] == 2          # only the two finite losses
    assert "2 non-finite values" in section(page, "training-loss")
    gn_svg = svg_block(page, "grad-norm-curve")
    assert polyline_points(gn_svg) == [2]
    # Eval metrics with one finite value each: no chart can be drawn, the table shows NaN.
    eval_html = section(page, "eval-metrics")
    assert "NaN" in eval_html
    assert "NaN" in section(page, "per-class")
    # Labels default to the class ids.
    cm = svg_block(page, "confusion-matrix")
    assert re.search(r'class="cm-row-label"[^>]*>(?:<title>[^<]*</title>)?1<', cm)

    # A single training log point: drawn as a marker, axes still have ticks.
    page = write_report(tmp_path / "one.html",
                        log_history=[{"loss": 0.69, "learning_rate": 5e-5, "epoch": 0.01, "step": 1}]
                        ).read_text(encoding="utf-8")
    check_structure(page)
    loss_svg = svg_block(page, "loss-curve")
    assert "<polyline" not in loss_svg and loss_svg.count("<circle") == 1
    assert len(re.findall(r'text-anchor="end">', loss_svg)) >= 2   # y tick labels
    assert "0.69" in loss_svg

    # Only non-finite losses: the section says so instead of drawing.
    page = write_report(tmp_path / "nan.html",
                        log_history=[{"loss": nan, "step": 1}, {"loss": nan, "step": 2}]).read_text(encoding="utf-8")
    check_structure(page)
    assert '<svg id="loss-curve"' not in page
    assert "No finite loss values" in section(page, "training-loss")


def test_ten_thousand_points_are_downsampled(tmp_path):
    history = make_history(steps=10_000, log_every=1, eval_every=1000, steps_per_epoch=1000)
    history[123]["loss"] = 50.0                        # a spike must survive downsampling
    out = write_report(tmp_path / "big.html", log_history=history, id2label=ID2LABEL, confusion=CONFUSION)
    page = out.read_text(encoding="utf-8")
    check_structure(page)
    assert out.stat().st_size < 150_000
    loss_svg = svg_block(page, "loss-curve")
    counts = polyline_points(loss_svg)
    # Raw and smoothed training loss, both thinned, then the 10 eval losses.
    assert len(counts) == 3 and all(100 <= c <= 700 for c in counts[:2]) and counts[2] == 10
    assert "smoothed" in loss_svg
    assert "50" in loss_svg                            # the spike sets the y range
    assert all(c <= 700 for c in polyline_points(svg_block(page, "lr-curve")))
    assert page.count('class="chart eval-chart"') == 3
    assert section(page, "eval-metrics").count("<tr>") == 1 + 10
    assert "10,000" in section(page, "training-loss") or "9,999" in section(page, "training-loss")


def test_many_classes_with_long_names(tmp_path):
    n = 20
    names = {i: f"category number {i} with a rather long descriptive label name" for i in range(n)}
    confusion = [[(100 + i if i == j else (i * j) % 7) for j in range(n)] for i in range(n)]
    per_class = [{"precision": 0.5 + i / 100, "recall": 0.6, "f1": 0.55, "support": sum(confusion[i])}
                 for i in range(n)]
    page = write_report(tmp_path / "r.html", log_history=make_history(), id2label=names, confusion=confusion,
                        per_class=per_class).read_text(encoding="utf-8")
    check_structure(page)
    cm = svg_block(page, "confusion-matrix")
    assert cm.count("<rect") == n * n + 1            # cells + colour scale
    assert len(re.findall(r'class="cm-row-label"', cm)) == n
    assert len(re.findall(r'class="cm-col-label"', cm)) == n
    assert "rotate(-45)" in cm                         # long column labels are slanted
    assert "…" in cm                                   # and shortened, the full name in a tooltip
    assert f"<title>{names[19]}</title>" in cm
    pc = section(page, "per-class")
    assert names[19] in pc and "0.6900" in pc
    assert pc.count("<tr>") == 1 + n + 2


def test_chromium_screenshot(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary found")
    page = full_report(tmp_path / "report.html")
    png = tmp_path / "report.png"
    profile = tmp_path / "profile"
    profile.mkdir()
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,2400",
           page.resolve().as_uri()]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180, check=False)
    assert png.is_file(), "chromium wrote no screenshot"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 2400)
    # A blank 1280x2400 page compresses to a few KB; charts, tables and text make it far larger.
    assert len(data) > 60_000
