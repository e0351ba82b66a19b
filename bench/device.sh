#!/usr/bin/env bash
# Benchmarks and distillation on a lent CUDA machine (this workplace's `device` tool), MLX
# from wheels staged by ../shared/device/mlx-cuda-wheels.sh. Logs go to $OUT/<step>.log.
#
#   1st call, carry .device-wheels/a .gguf-parts/0:  bash bench/device.sh stage
#   2nd call, carry .device-wheels/b .gguf-parts/1:  bash bench/device.sh install smoke
#   next calls, carry .gguf-parts/N:                 bash bench/device.sh stage
#   then: bash bench/device.sh smoke | distill (twice if cut: it resumes) | bench | bench2
#
# .gguf-parts/N/part.N: the bundled Gemma 3 270M GGUF cut into pieces that fit a call's carry
# (64 MiB with the working tree): made here, once, by `bash bench/device.sh split-gguf`.
# The machine is given back 30 s after a call ends: issue the calls back to back.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/stage
GGUF=/tmp/stage/gemma-3-270m-q4_k_m.gguf

step() {  # step LOG SECONDS python-args...
    local log=$OUT/$1.log lim=$2
    shift 2
    echo "== $(date +%T) $*" | tee -a "$log"
    (cd bench && timeout "$lim" python3 "$@") 2>&1 | tee -a "$log"
    echo "== exit ${PIPESTATUS[0]}" | tee -a "$log"
}

for what in "$@"; do
    case $what in
    split-gguf)  # here, not on the device machine
        grep -qx '/.gguf-parts/' .git/info/exclude || echo '/.gguf-parts/' >> .git/info/exclude
        .venv/bin/python - <<'PY'
import os
from gemma_mtp_mlx.convert.gguf import bundled_gemma3_270m
data = open(bundled_gemma3_270m(), "rb").read()
sizes = [11_000_000, 16_000_000] + [59_000_000] * 10  # first two ride with the wheels
off = i = 0
while off < len(data):
    os.makedirs(f".gguf-parts/{i}", exist_ok=True)
    with open(f".gguf-parts/{i}/part.{i}", "wb") as f:
        f.write(data[off : off + sizes[i]])
    off, i = off + sizes[i], i + 1
print(i, "parts")
PY
        exit 0 ;;
    stage)
        for d in .device-wheels/a .gguf-parts/*; do [ -d "$d" ] && cp "$d"/* /tmp/stage/; done
        ls -la /tmp/stage
        nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv ;;
    install)
        cat /tmp/stage/mlx_cuda.part.* .device-wheels/b/mlx_cuda.part.* \
            > "/tmp/stage/$(cat .device-wheels/b/WHEEL_NAME)" &&
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
            /tmp/stage/*.whl .device-wheels/b/*.whl &&
        python3 -c "import mlx.core as mx; print(mx.__version__, mx.default_device())" ;;
    smoke)  # exactness on CUDA: the decoding-loop and model tests (float32 fixtures)
        timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_scripted.py \
            tests/test_decoding.py tests/test_models_gemma4.py 2>&1 |
            tee "$OUT/smoke.log" | tail -15 ;;
    gguf)
        cat /tmp/stage/part.* > "$GGUF" && ls -la "$GGUF" && sha256sum "$GGUF" ;;
    distill)
        [ -f "$GGUF" ] || cat /tmp/stage/part.* > "$GGUF"
        # shellcheck disable=SC2086  # DISTILL_ARGS: a smoke test elsewhere swaps the model
        step distill 460 distill_gemma3_270m.py ${DISTILL_ARGS:---gguf $GGUF} \
            --out /tmp/drafter --time-budget "${TRAIN_SECONDS:-200}"
        d=/tmp/drafter
        [ -f $d/model.safetensors ] || { mkdir -p $d; cp $d/.ckpt/drafter.safetensors \
            $d/model.safetensors 2>/dev/null; }
        cp $d/config.json $d/distill.json $d/.ckpt/meta.json "$OUT/" 2>/dev/null
        split -b 15000000 $d/model.safetensors "$OUT/drafter.safetensors.part."
        # shellcheck disable=SC2086
        step domains 100 drafter_domains.py --target "${DOMAIN_TARGET:-/tmp/gemma3-270m-f32/target}" \
            --drafter $d --k 4 --temperature 0 0.7 --tokens 96 --runs 2 ${DOMAIN_ARGS:-} ;;
    bench)  # in order of importance: each step has its own limit, logs survive a cut
        # (2026-11-23 on an H100: the 31B build takes ~30 s, a 64-token greedy run ~2 s)
        step accept31b 330 acceptance.py --family 31B --layers 60 --bits 4 --dtype bfloat16 \
            --alpha 0.8 0.5 0.7 0.9 --k 4 2 6 8 0 -1 --verify-width 0 8 --tokens 64 --runs 3
        step baseline 150 baseline_vs_mlx_lm.py --family 31B E2B --layers 60 --bits 4 \
            --dtype bfloat16 --runs 5
        step memory 90 memory.py --family 31B E2B --layers 60 --bits 4 --dtype bfloat16 ;;
    bench2)
        step costs 200 pass_costs.py --family 31B 26B-A4B E2B E4B --layers 60 --bits 4 \
            --dtype bfloat16 --widths 1 2 3 5 8 9 12 16 --contexts 512 4096 --reps 10
        step accept 200 acceptance.py --family E2B 26B-A4B E4B --layers 60 --bits 4 \
            --dtype bfloat16 --alpha 0.8 --k 4 2 6 8 0 -1 --verify-width 0 8 --tokens 64 --runs 3
        step calibrated 90 acceptance.py --family 31B --layers 60 --bits 4 --dtype bfloat16 \
            --alpha 0.8 --k 4 --verify-width 0 8 --tokens 64 --runs 3 --calibrate
        step peer 60 transformers_peer.py --family E2B E4B --prompt 256 --tokens 64 --runs 3
        step bf16 50 baseline_vs_mlx_lm.py --family E2B --bits 16 --dtype bfloat16 --runs 3 ;;
    *) echo "unknown step $what"; exit 2 ;;
    esac
done
