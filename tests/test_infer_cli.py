"""tools/infer.py and tools/env.py run as a user would, on the real LeNet and real MNIST PNGs."""
import json
import shutil

from conftest import LENET_CONFIG, error_line, run_tool, write_config


def test_infer_test_folder_top1_and_json(lenet, tmp_path):
    out = tmp_path / "r.json"
    result = run_tool("infer", "-c", LENET_CONFIG, "--image", lenet / "data" / "test", "--output", out, check=True)
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("summary: 1000 images, 0 failures")
    data = json.loads(out.read_text())
    records = data["results"]
    assert len(records) == 1000 and set(records[0]) == {"path", "topk_ids", "labels", "scores", "label"}
    assert len(records[0]["topk_ids"]) == 3 and records[0]["scores"] == sorted(records[0]["scores"], reverse=True)
    top1 = sum(r["topk_ids"][0] == r["label"] for r in records) / len(records)
    assert top1 >= 0.95
    assert f"top-1 {100 * top1:.2f}%" in summary  # the console agrees with the JSON
    assert data["summary"]["images"] == 1000 and data["summary"]["failures"] == 0


def test_corrupt_image_in_folder_is_skipped_and_counted(lenet, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(lenet / "data" / "test" / "7", folder / "7")
    (folder / "7" / "broken.png").write_bytes(b"not a png")
    result = run_tool("infer", "-c", LENET_CONFIG, "--image", folder, "--quiet", check=True)
    assert "broken.png" in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("summary: 100 images, 1 failures")


def test_single_bad_image_is_an_error(lenet, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    result = run_tool("infer", "-c", LENET_CONFIG, "--image", bad)
    assert result.returncode == 2
    assert "cannot decode image" in error_line(result)
    missing = run_tool("infer", "-c", LENET_CONFIG, "--image", tmp_path / "nothing")
    assert missing.returncode == 2 and "image source not found" in error_line(missing)


def test_impossible_device_or_backend_exits_2_with_one_line(lenet):
    gpu = run_tool("infer", "-c", LENET_CONFIG, "--device", "gpu")
    assert gpu.returncode == 2 and "has no CUDA" in error_line(gpu)
    trt = run_tool("infer", "-c", LENET_CONFIG, "-o", "runtime.backend=trt")
    assert trt.returncode == 2 and "TensorRT" in error_line(trt)


def test_misspelt_key_exits_2_with_suggestion(tmp_path):
    bad = write_config(tmp_path / "bad.yml", f"_base_: {LENET_CONFIG}\npostprocess:\n  top_k: 3\n")
    result = run_tool("infer", "-c", bad)
    line = error_line(result)
    assert result.returncode == 2
    assert "'postprocess.top_k'" in line and str(bad) in line and "did you mean 'postprocess.topk'" in line


def test_model_not_matching_the_config_shape(lenet, tmp_path):
    cfg = write_config(tmp_path / "shape.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  input_shape: [3, 32, 32]\n")
    line = error_line(run_tool("infer", "-c", cfg))
    assert "model.input_shape [3, 32, 32] does not match the model" in line and "[?, 1, 28, 28]" in line
    cfg = write_config(tmp_path / "pre.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  input_shape: null\n"
                       "preprocess: [decode, {resize: {size: 32}}, {normalize: {mean: [0.5], std: [0.5]}}, to_chw]\n")
    line = error_line(run_tool("infer", "-c", cfg, "--image", lenet / "data" / "test" / "0"))
    assert "model input 'x' is fed [3, 32, 32] per image but expects [1, 28, 28]" in line


def test_missing_model_without_build_script(tmp_path):
    cfg = write_config(tmp_path / "m.yml", f"_base_: {LENET_CONFIG}\nmodel:\n  dir: nowhere\n  build: null\n")
    line = error_line(run_tool("infer", "-c", cfg))
    assert "missing an inference model" in line and "nowhere" in line


def test_env_prints_capability_table():
    result = run_tool("env", check=True)
    assert "cpu     paddle    fp32       yes" in result.stdout
    assert "gpu     trt       int8       no:" in result.stdout
    assert "cpu     openvino  fp32       yes" in result.stdout
    info = json.loads(run_tool("env", "--json", check=True).stdout)
    assert info["paddle_version"] and info["openvino_version"] == "2026.4.1"  # pinned in requirements.txt


def test_list_file_with_labels(lenet, tmp_path):
    test_dir = lenet / "data" / "test"
    lines = [f"{p.relative_to(test_dir)} {p.parent.name}" for p in sorted(test_dir.glob("[27]/*.png"))[:150]]
    shutil.copytree(test_dir / "2", tmp_path / "2")
    shutil.copytree(test_dir / "7", tmp_path / "7")
    listing = tmp_path / "val_list.txt"
    listing.write_text("# path label\n" + "\n".join(lines) + "\n")
    result = run_tool("infer", "-c", LENET_CONFIG, "--image", listing, "--quiet", check=True)
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("summary: 150 images, 0 failures") and "over 150 labelled" in summary
