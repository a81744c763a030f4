"""tools/eval.py and tools/benchmark.py on the real LeNet: the report's numbers checked against plain numpy on
outputs of predictors run here, every documented report.json key, the calibration sweep leaving the user's
calibration untouched, and the CLI errors. Speed is never asserted (noisy machine): only that it was measured."""
import json
import shutil

import numpy as np
import pytest

from conftest import LENET_CONFIG, error_line, run_tool, write_config
from deploy.int8.calibration import calibrate
from deploy.config.loader import load_config
from deploy.errors import CalibrationError, ConfigError
from deploy.evalset import spaced_subset
from deploy.tasks.classification import cosine_rows, topk_accuracy
from deploy.engines.paddle import Predictor
from deploy.engines.plan import resolve_plan
from deploy.data.pipeline import ImagePipeline
from deploy.report import benchmark as bench
from deploy.report.runs import load_runs, parse_compare, run_specs

PER_CLASS = 10
SWEEP = (32, 64)
BENCH = {"batch_sizes": [1, 4], "warmup": 1, "iters": 3}
BUDGET = 0.5

# The documented report.json keys (README, "report.json keys"): this test is their contract.
TOP_KEYS = {"format", "created", "environment", "task", "reference", "runs", "accuracy", "calibration_sweep",
            "benchmark", "budget", "int8_provenance", "files"}
ENV_KEYS = {"python", "paddle", "paddleslim", "tensorrt", "onednn", "cpu", "cpu_count", "gpus", "gpu_capabilities"}
RUN_KEYS = {"label", "config", "precision", "device", "backend", "int8_mode", "explicit_quantization", "model",
            "plan"}
ACCURACY_KEYS = {"task", "columns", "source", "images", "labelled", "skipped", "batch_size", "reference", "results"}
METRIC_KEYS = {"top1", "top5", "agreement", "top1_agreement", "cosine_mean", "cosine_min", "max_abs_diff",
               "mean_abs_diff"}
ACCURACY_RESULT_KEYS = {"label", "seconds"} | METRIC_KEYS
SWEEP_KEYS = {"config", "algo", "calibration_images", "seed", "results"}
SWEEP_RESULT_KEYS = {"num_images", "calibration_seconds"} | METRIC_KEYS
BENCH_KEYS = {"reference", "batch_sizes", "warmup", "iters", "images", "order", "results"}
BENCH_RESULT_KEYS = {"label", "batch_size", "threads", "build_ms", "first_run_ms", "latency_ms", "e2e_latency_ms",
                     "throughput_ips", "e2e_throughput_ips", "throughput_mean_ips", "throughput_ratio",
                     "e2e_throughput_ratio", "peak_rss_mb", "rss_added_mb", "gpu_memory_mb", "samples_ms",
                     "e2e_samples_ms"}
LATENCY_KEYS = {"mean", "p50", "p90", "p99", "min", "max"}
FILES_KEYS = {"json", "markdown", "plots"}
PLOTS = {"accuracy": "accuracy.png", "calibration_sweep": "calib_sweep.png", "throughput": "throughput.png",
         "latency_cdf": "latency_cdf.png"}


def snapshot(model_dir):
    return {p.relative_to(model_dir): p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(lenet, tmp_path_factory):
    """A calibrated private model, a quantized-model config standing in for QAT, and 100 labelled test images
    in a list file."""
    root = tmp_path_factory.mktemp("report")
    shutil.copytree(lenet / "inference", root / "model", ignore=shutil.ignore_patterns("_opt_cache"))
    cfg = write_config(root / "lenet.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: {root / 'model'}\n  build: null\n")
    calibrate(load_config(cfg), num_images=64, quiet=True)
    quantized = root / "model" / "_opt_cache" / "int8_cpu"
    qcfg = write_config(root / "quantized.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: {quantized}\n  build: null\n")
    test_dir = lenet / "data" / "test"
    lines = [f"{path} {digit}" for digit in range(10)
             for path in sorted((test_dir / str(digit)).glob("*.png"))[:PER_CLASS]]
    images = root / "images.txt"
    images.write_text("\n".join(lines) + "\n")
    return {"root": root, "cfg": cfg, "qcfg": qcfg, "images": images, "model": root / "model"}


@pytest.fixture(scope="module")
def full_report(setup):
    """One eval run with every section: accuracy of fp32/int8/compare, a calibration sweep, a tiny benchmark."""
    out = setup["root"] / "out"
    before = snapshot(setup["model"])
    result = run_tool("eval", "-c", setup["cfg"], "--precisions", "fp32,int8", "--compare", f"ptq={setup['qcfg']}:int8",
                      "--image", setup["images"], "--calib-sweep", ",".join(map(str, SWEEP)), "--benchmark",
                      "--batch-sizes", ",".join(map(str, BENCH["batch_sizes"])), "--warmup", str(BENCH["warmup"]),
                      "--iters", str(BENCH["iters"]), "--budget", str(BUDGET), "--output-dir", out, "--quiet",
                      check=True)
    return {"result": result, "data": json.loads((out / "report.json").read_text()), "out": out,
            "before": before, "after": snapshot(setup["model"])}


def numpy_outputs(cfg_path, precision, items, batch_size=64):
    """Outputs of a predictor built here, on images preprocessed here, batched like the report."""
    cfg = load_config(cfg_path, [f"runtime.precision={precision}"])
    pipeline = ImagePipeline(cfg.preprocess)
    arrays = np.stack([pipeline(path) for path, _ in items])
    with Predictor(resolve_plan(cfg, quiet=True)) as predictor:
        outs = [predictor.run({"x": arrays[i:i + batch_size]})[predictor.output_names[0]]
                for i in range(0, len(arrays), batch_size)]
    return np.concatenate(outs).reshape(len(items), -1).astype(np.float64)


def numpy_metrics(out, ref, labels):
    top5 = np.argsort(-out, axis=1, kind="stable")[:, :5]
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    diff = np.abs(out - ref)
    return {"top1": np.mean(out.argmax(1) == labels), "top5": np.mean([lab in row for lab, row in zip(labels, top5)]),
            "top1_agreement": np.mean(out.argmax(1) == ref.argmax(1)), "cosine_mean": cos.mean(),
            "cosine_min": cos.min(), "max_abs_diff": diff.max(), "mean_abs_diff": diff.mean()}


def test_accuracy_and_agreement_match_numpy(setup, full_report):
    items = [(line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1])) for line in setup["images"].read_text().split("\n")
             if line]
    labels = np.array([label for _, label in items])
    outputs = {"fp32": numpy_outputs(setup["cfg"], "fp32", items), "int8": numpy_outputs(setup["cfg"], "int8", items),
               "ptq": numpy_outputs(setup["qcfg"], "int8", items)}
    acc = full_report["data"]["accuracy"]
    assert acc["images"] == acc["labelled"] == 10 * PER_CLASS and acc["skipped"] == 0 and acc["reference"] == "fp32"
    assert [r["label"] for r in acc["results"]] == ["fp32", "int8", "ptq"]
    for record in acc["results"]:
        expected = numpy_metrics(outputs[record["label"]], outputs["fp32"], labels)
        for key, value in expected.items():
            assert record[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (record["label"], key)
    fp32 = acc["results"][0]
    assert fp32["top1_agreement"] == 1.0 and fp32["max_abs_diff"] == 0.0 and fp32["top1"] >= 0.9
    assert not np.array_equal(outputs["int8"], outputs["fp32"])  # INT8 really ran a different kernel


def test_every_documented_key_is_present(full_report):
    data = full_report["data"]
    assert set(data) == TOP_KEYS and data["format"] == 1 and data["reference"] == "fp32"
    assert set(data["environment"]) == ENV_KEYS
    assert [r["label"] for r in data["runs"]] == ["fp32", "int8", "ptq"]
    assert all(set(r) == RUN_KEYS for r in data["runs"])
    assert [r["int8_mode"] for r in data["runs"]] == [None, "quantized", "quantized"]
    assert set(data["accuracy"]) == ACCURACY_KEYS
    assert all(set(r) == ACCURACY_RESULT_KEYS for r in data["accuracy"]["results"])
    assert set(data["calibration_sweep"]) == SWEEP_KEYS
    assert all(set(r) == SWEEP_RESULT_KEYS for r in data["calibration_sweep"]["results"])
    assert set(data["benchmark"]) == BENCH_KEYS
    assert all(set(r) == BENCH_RESULT_KEYS for r in data["benchmark"]["results"])
    assert set(data["files"]) == FILES_KEYS and data["files"]["plots"] == PLOTS


def test_benchmark_measured_every_field(full_report):
    bench = full_report["data"]["benchmark"]
    assert bench["batch_sizes"] == BENCH["batch_sizes"] and bench["iters"] == BENCH["iters"]
    assert [(e["label"], e["batch_size"]) for e in bench["results"]] == [
        (label, bs) for bs in BENCH["batch_sizes"] for label in ("fp32", "int8", "ptq")]
    for e in bench["results"]:
        lat = e["latency_ms"]
        assert set(lat) == LATENCY_KEYS and set(e["e2e_latency_ms"]) == LATENCY_KEYS
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert len(e["samples_ms"]) == len(e["e2e_samples_ms"]) == BENCH["iters"]
        assert min(e["samples_ms"]) > 0 and min(e["e2e_samples_ms"]) > 0  # two passes: e2e overlaps decoding
        assert e["throughput_ips"] == pytest.approx(e["batch_size"] * 1000 / lat["p50"])
        assert e["first_run_ms"] >= e["build_ms"] > 0 and e["peak_rss_mb"] > 0 and e["rss_added_mb"] >= 0
        assert e["gpu_memory_mb"] is None and e["threads"] >= 1
        assert e["throughput_ratio"] > 0 and e["e2e_throughput_ratio"] > 0
        if e["label"] == "fp32":
            assert e["throughput_ratio"] == e["e2e_throughput_ratio"] == 1.0


def test_budget_names_the_fastest_run_within_the_loss(full_report):
    data = full_report["data"]
    budget, bench = data["budget"], data["benchmark"]
    top1 = {r["label"]: r["top1"] for r in data["accuracy"]["results"]}
    loss = {label: 100 * (top1["fp32"] - value) for label, value in top1.items()}
    assert budget["points"] == BUDGET and budget["metric"] == "top1" and budget["reference"] == "fp32"
    assert budget["loss_points"] == pytest.approx(loss)
    within = {label for label, points in loss.items() if points <= BUDGET + 1e-9}
    assert "fp32" in within and set(budget["over_budget"]) == set(loss) - within
    assert [c["batch_size"] for c in budget["fastest"]] == BENCH["batch_sizes"]
    for choice in budget["fastest"]:
        entries = [e for e in bench["results"] if e["batch_size"] == choice["batch_size"] and e["label"] in within]
        fastest = max(entries, key=lambda e: e["throughput_ips"])
        assert choice["label"] == fastest["label"] and choice["throughput_ratio"] == fastest["throughput_ratio"]
    assert "fastest within 0.5 pt of fp32 top-1" in full_report["result"].stdout
    assert "## Fastest within the accuracy budget" in (full_report["out"] / "report.md").read_text()


def test_calibration_sweep_recalibrates_in_scratch_only(full_report, setup):
    sweep = full_report["data"]["calibration_sweep"]
    assert [p["num_images"] for p in sweep["results"]] == list(SWEEP) and sweep["algo"] == "hist"
    for point in sweep["results"]:
        assert 0.9 <= point["top1"] <= 1 and 0.9 <= point["top1_agreement"] <= 1 and point["calibration_seconds"] > 0
    # The user's model, calibration manifest and quantized model are byte-for-byte what they were.
    assert full_report["after"] == full_report["before"]
    # Calibrating with the same 64 images as the fixture gives the same INT8 model: the same numbers.
    int8 = next(r for r in full_report["data"]["accuracy"]["results"] if r["label"] == "int8")
    same = next(p for p in sweep["results"] if p["num_images"] == 64)
    assert same["cosine_min"] == pytest.approx(int8["cosine_min"]) and same["top1"] == int8["top1"]


def test_markdown_plots_and_console(full_report):
    out, stdout = full_report["out"], full_report["result"].stdout
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in (out / "report.md").read_text()
    assert not list(out.glob(".*tmp"))  # atomic writes left no temp files
    md = (out / "report.md").read_text()
    assert "## Accuracy and agreement" in md and "## Calibration-set size" in md and "## Speed" in md
    for label in ("fp32", "int8", "ptq"):
        assert f"| {label} |" in md
    assert "top-1 agree" in stdout and "vs ref" in stdout and "x1.00" in stdout and "report:" in stdout


def test_benchmark_tool_alone(setup):
    out = setup["root"] / "bench"
    result = run_tool("benchmark", "-c", setup["cfg"], "--precisions", "int8", "--batch-sizes", "2", "--iters", "2",
                      "--warmup", "0", "--threads", "1", "--image", setup["images"], "--output-dir", out, "--quiet",
                      check=True)
    data = json.loads((out / "report.json").read_text())
    assert data["accuracy"] is None and data["calibration_sweep"] is None and data["budget"] is None
    assert [(e["label"], e["threads"]) for e in data["benchmark"]["results"]] == [("fp32", 1), ("int8", 1)]
    assert set(data["files"]["plots"]) == {"throughput", "latency_cdf"} and not (out / "accuracy.png").exists()
    assert "fp32" in result.stdout and "int8" in result.stdout


def test_benchmark_takes_turns_in_blocks(setup, monkeypatch):
    """Each run's turn is a predictor-only block (its batches decoded first, one untimed run, then the timed runs
    back to back) and an end-to-end block (one untimed batch first): no timed sample is the first run after
    another run's turn, and no predictor-only sample follows a decode (one sample per turn made predictor-only
    slower than end to end)."""
    events = []
    create_predictor, batch_stream = bench.create_predictor, bench.batch_stream

    def recording_predictor(plan):
        predictor = create_predictor(plan)
        run = predictor.run
        predictor.run = lambda feeds: events.append(plan.precision) or run(feeds)
        return predictor

    def recording_stream(*args, **kwargs):
        for batch in batch_stream(*args, **kwargs):
            events.append("decode")
            yield batch

    monkeypatch.setattr(bench, "create_predictor", recording_predictor)
    monkeypatch.setattr(bench, "batch_stream", recording_stream)
    runs = load_runs(run_specs(setup["cfg"], ["fp32", "int8"]), quiet=True)
    iters = bench.BLOCK + 2
    result = bench.benchmark(runs, bench.BenchOptions([2], warmup=0, iters=iters, images=str(setup["images"])),
                             quiet=True)
    assert all(len(e.samples_ms) == len(e.e2e_samples_ms) == iters for e in result.entries)
    turns = [("fp32", bench.BLOCK), ("int8", bench.BLOCK), ("int8", 2), ("fp32", 2)]  # the first run rotates
    expected = ["decode", "fp32", "int8"]  # the first batch, each predictor's first run
    for label, block in turns:
        expected += ["decode"] * (block + 1) + [label] * (block + 1) + ["decode", label] * (block + 1)
    assert events == expected


def test_cli_errors_are_one_line(setup, tmp_path):
    bad = run_tool("eval", "-c", setup["cfg"], "--compare", "configs/lenet_mnist_qat.yml")
    assert bad.returncode == 2 and "expected [LABEL=]CONFIG:PRECISION" in error_line(bad)
    other = write_config(tmp_path / "rgb.yml", f"_base_: {setup['cfg']}\npreprocess: [{{decode: {{mode: GRAY}}}}, "
                         "{resize: {size: [28, 28]}}, {normalize: {mean: [0.5], std: [0.5]}}, to_chw]\n")
    diff = run_tool("eval", "-c", setup["cfg"], "--precisions", "fp32", "--compare", f"{other}:fp32")
    assert diff.returncode == 2 and "preprocesses images differently" in error_line(diff)
    sweep = run_tool("eval", "-c", setup["qcfg"], "--precisions", "fp32", "--calib-sweep", "10")
    assert sweep.returncode == 2 and "already quantized" in error_line(sweep)
    sizes = run_tool("benchmark", "-c", setup["cfg"], "--batch-sizes", "0,8")
    assert sizes.returncode == 2 and "--batch-sizes '0,8'" in error_line(sizes)
    budget = run_tool("eval", "-c", setup["cfg"], "--precisions", "fp32", "--budget", "0.5")
    assert budget.returncode == 2 and "--budget" in error_line(budget) and "add --benchmark" in error_line(budget)
    negative = run_tool("benchmark", "-c", setup["cfg"], "--budget", "-1")
    assert negative.returncode == 2 and "must be >= 0" in error_line(negative)


def test_benchmark_budget_scores_the_runs_it_times(setup):
    out = setup["root"] / "bench_budget"
    run_tool("benchmark", "-c", setup["cfg"], "--precisions", "fp32,int8", "--batch-sizes", "2", "--iters", "2",
             "--warmup", "0", "--image", setup["images"], "--budget", "100", "--output-dir", out, "--quiet",
             check=True)
    data = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in data["accuracy"]["results"]] == ["fp32", "int8"]
    assert data["budget"]["over_budget"] == [] and len(data["budget"]["fastest"]) == 1


def test_run_specs_reference_first_and_labels_unique():
    specs = run_specs("a.yml", ["int8"], ["q=b.yml:int8", "c.yml:fp32"], ["model.dir=x"], ["runtime.cpu_threads=1"])
    assert [(s.label, str(s.config), s.precision) for s in specs] == [
        ("fp32", "a.yml", "fp32"), ("int8", "a.yml", "int8"), ("q", "b.yml", "int8"), ("c:fp32", "c.yml", "fp32")]
    # Runtime shortcuts reach every run; -o reaches only the -c config.
    assert [s.overrides for s in specs] == [("runtime.cpu_threads=1", "model.dir=x")] * 2 + [
        ("runtime.cpu_threads=1",)] * 2
    assert parse_compare("dir:with:colons/x.yml:bf16") == (None, __import__("pathlib").Path("dir:with:colons/x.yml"),
                                                           "bf16")
    with pytest.raises(ConfigError, match="used twice"):
        run_specs("a.yml", ["fp32"], ["fp32=b.yml:int8"])
    with pytest.raises(ConfigError, match="expected"):
        parse_compare("b.yml:int4")


def test_metric_helpers_edge_cases():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert cosine_rows(a, b).tolist() == [1.0, 1.0, 0.0]
    ties = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    assert topk_accuracy(ties, np.array([1, 2]), 1) == 0.5  # a tie goes to the lower class id
    assert topk_accuracy(ties, np.array([-1, -1]), 1) is None
    assert [i.path for i in spaced_subset([type("I", (), {"path": n})() for n in range(10)], 3)] == [0, 3, 6]


def test_sweep_refuses_without_writing_when_model_is_quantized(setup):
    from deploy.report.calib_sweep import check_sweepable
    from deploy.report.runs import load_runs

    run = load_runs(run_specs(setup["qcfg"], ["fp32"]), quiet=True)[0]
    with pytest.raises(CalibrationError, match="already quantized"):
        check_sweepable(run)
