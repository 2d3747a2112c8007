#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one pass (under 10 minutes on one H100/H200):
#   0. the course's study timed (python -m leukemia.bench --study): a C-NMC-sized set, 350 px, the data resident
#      on the GPU, every depth at batch 32 and at its fastest batch, data waiting measured, the study projected;
#   1. the benchmark (python -m leukemia.bench) for resnet18/50/152 at 350 px, bf16 + channels_last;
#   2. reproducibility: two deterministic CUDA runs of the same config, every metric at every step compared;
#   3. scale-out: three joblib sweep jobs sharing the GPU, on one sqlite store (and the sweep's own run);
#   4. the logged model: task=predict on the GPU (its rate, Grad-CAM overlays), and on the training run the GPU's
#      system metrics and the evaluation (temperature, threshold, ECE, intervals, Grad-CAM figure);
#   5. ResNet18's epoch at batch 32 with torch.compile and with CUDA graphs (a quarter-size study), against none;
#   6. the test suite's tests marked gpu (python -m pytest -m gpu; on a CUDA device only).
#
#   usage: scripts/gpu_check.sh [OUTPUT_DIR]       (from the repository root, with the package importable)
# DEVICE=cpu IMAGES=16 BATCH=8 SIZE=64 DEPTHS=18 EPOCHS=1 STUDY_IMAGES=40 MAX_BATCH=64 COMPILE_TRY= tries the
# script on a machine without a GPU.
set -uo pipefail
out=$(realpath -m "${1:-gpu_check_out}")
mkdir -p "$out"
device=${DEVICE:-cuda}
images=${IMAGES:-1024}
batch=${BATCH:-64}
size=${SIZE:-350}
depths=${DEPTHS:-18 50 152}
epochs=${EPOCHS:-2}
workers=${WORKERS:-8}
study_images=${STUDY_IMAGES:-10661}
max_batch=${MAX_BATCH:-512}
compile_try=${COMPILE_TRY-default reduce-overhead}
py=${PYTHON:-python3}
work=$(mktemp -d)
export HOME="$work/home" PYTHONUNBUFFERED=1  # a fresh demo set and decode cache
repo=$PWD
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
"$py" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cpus', __import__('os').cpu_count())"

step "0. the course's study: $study_images cells, ${size}px, batches 32 to $max_batch"
"$py" -m leukemia.bench --study --device "$device" --images "$study_images" --image-size "$size" \
  --max-batch "$max_batch" --workers "$(nproc)" 2>&1 | tee "$out/study.txt" || status=1

step "1. benchmark: $images images, ${size}px, batch $batch, $workers workers"
for depth in $depths; do
  "$py" -m leukemia.bench --device "$device" --depth "$depth" --image-size "$size" --images "$images" \
    --batch-size "$batch" --workers "$workers" --steps 20 2>&1 | tee "$out/bench_resnet$depth.txt" || status=1
done

step "2. two deterministic runs, same config, compared"
cd "$work" || exit 1
for name in first second; do
  "$py" "$repo/run.py" trainer.device="$device" trainer.deterministic=true trainer.epochs="$epochs" \
    trainer.progress=false run_name="deterministic-$name" > "$out/deterministic_$name.log" 2>&1 || status=1
  tail -n 2 "$out/deterministic_$name.log"
done
"$py" - <<'EOF' | tee "$out/deterministic_compare.txt" || status=1
import sys
from mlflow.tracking import MlflowClient
from leukemia.training.loop import TIMING_METRICS

client = MlflowClient("sqlite:///mlflow.db")
experiment = client.get_experiment_by_name("leukemia")
runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
first, second = runs["deterministic-first"], runs["deterministic-second"]
def history(run):
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
            for key in run.data.metrics
            if not key.startswith("system/") and key not in TIMING_METRICS}  # the machine's samples and pace differ
a, b = history(first), history(second)
differ = sorted(key for key in a if a[key] != b.get(key))
print(f"device tag: {first.data.params.get('trainer.device')}; statuses {first.info.status}/{second.info.status}; "
      f"{len(a)} metrics, {sum(len(v) for v in a.values())} values; differing: {differ or 'none'}")
print("val_accuracy by epoch:", a["val_accuracy"])
print("data_wait_fraction by epoch:", [(m.step, round(m.value, 4)) for m in client.get_metric_history(first.info.run_id, "data_wait_fraction")])
sys.exit(1 if differ or first.info.status != "FINISHED" else 0)
EOF

step "3. three parallel joblib jobs sharing the $device"
"$py" "$repo/run.py" -m hydra/launcher=joblib hydra.launcher.n_jobs=3 optim.lr=0.1,0.01,0.001 \
  trainer.device="$device" trainer.epochs="$epochs" trainer.progress=false tracking.experiment=sweep \
  > "$out/joblib_sweep.log" 2>&1 || status=1
grep -h "images, device" "$out/joblib_sweep.log"
"$py" - <<'EOF' | tee "$out/joblib_compare.txt" || status=1
import sys
from mlflow.tracking import MlflowClient

client = MlflowClient("sqlite:///mlflow.db")
everything = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
runs = [run for run in everything if run.data.tags.get("kind") == "train"]
print("sweep run:", [(run.info.run_name, run.info.status) for run in everything if run.data.tags.get("kind") == "sweep"])
for run in runs:
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
    print(run.info.run_name, run.info.status, "val_accuracy steps", steps,
          "best", round(run.data.metrics.get("best_val_accuracy", float("nan")), 4))
sys.exit(0 if len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs) else 1)
EOF
step "4. task=predict with the first deterministic run's model on the $device, explained"
first_id=$("$py" -c "from mlflow.tracking import MlflowClient as C; c = C('sqlite:///mlflow.db'); print(c.search_runs([c.get_experiment_by_name('leukemia').experiment_id], \"attributes.run_name = 'deterministic-first'\")[0].info.run_id)")
test_dir=$(dirname "$(find "$HOME/.cache/leukemia/demo-v1" -path '*new_dataset/test/*.bmp' | head -n 1)")
"$py" "$repo/run.py" task=predict predict.model="$first_id" predict.input="$test_dir" trainer.device="$device" \
  predict.output="$out/predictions.csv" predict.explain=true trainer.progress=false > "$out/predict.log" 2>&1 || status=1
grep -h "predicting\|predictions (" "$out/predict.log"
echo "Grad-CAM overlays: $(ls "$out/predictions_gradcam" | wc -l)"
rm -rf "$out/predictions_gradcam"
"$py" -c "
import sys
from mlflow.tracking import MlflowClient as C
client = C('sqlite:///mlflow.db')
run = client.get_run('$first_id')
m = run.data.metrics
print('system metrics of the training run:', sorted(k for k in m if k.startswith('system/')))
keys = ('temperature', 'threshold', 'test_ece', 'test_ece_calibrated', 'test_accuracy', 'test_accuracy_ci_low',
        'test_accuracy_ci_high', 'test_subject_accuracy')
print('evaluation:', {k: round(m[k], 4) for k in keys if k in m}, run.data.tags.get('test_ci'))
figures = {item.path for item in client.list_artifacts(run.info.run_id, 'figures')}
print('gradcam figure:', 'figures/gradcam.png' in figures)
sys.exit(0 if 'figures/gradcam.png' in figures and all(k in m for k in keys) else 1)
" | tee "$out/system_metrics.txt" || status=1
cd "$repo" || exit 1

quarter=$(( study_images / 4 ))
for mode in none $compile_try; do
  [ "$mode" = none ] && [ -z "$compile_try" ] && break
  step "5. ResNet18's study epoch at batch 32, compile $mode ($quarter cells)"
  "$py" -m leukemia.bench --study --depths 18 --device "$device" --images "$quarter" --image-size "$size" \
    --max-batch 32 --workers "$(nproc)" --compile "$mode" 2>&1 | tee "$out/study_compile_$mode.txt" || status=1
done
step "6. the test suite's gpu tests (bf16 + channels_last, data.cache=device, compile, CUDA graphs)"
if [ "$device" != cuda ]; then
  echo "skipped: the device is $device"
elif ! "$py" -c "import pytest, xdist" 2>/dev/null; then
  echo "skipped: pytest and pytest-xdist are not installed (pip install -e \".[test]\")"
else
  "$py" -m pytest -m gpu -n 0 -q -p no:cacheprovider 2>&1 | tee "$out/pytest_gpu.txt" || status=1
fi
rm -rf "$work"
echo; echo "gpu_check: $([ $status = 0 ] && echo all passed || echo SOME CHECK FAILED)"
exit $status
