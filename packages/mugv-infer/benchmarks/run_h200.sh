#!/usr/bin/env bash
# One-H200 run of mugv-infer: GPU tests, the 10b per-CFG-step table against the plain SDPA
# reference, the 25-step end-to-end latency (offload + VAE tiling) and the step cache.
# Run from the repository root on a machine staged by
#     bash packages/mugv-dit/benchmarks/run_h200.sh stage            (carry .fa4a .whl)
# then, one call each (OUT = the folder that comes back; each call stays under ~560 s):
#     bash packages/mugv-infer/benchmarks/run_h200.sh stage           (carry .infer-wheels)
#     source .fa4b/fa4-install.sh; bash packages/mugv-infer/benchmarks/run_h200.sh tests step
#     source .fa4b/fa4-install.sh; bash packages/mugv-infer/benchmarks/run_h200.sh e2e
#     source .fa4b/fa4-install.sh; bash packages/mugv-infer/benchmarks/run_h200.sh cache
# (carry .fa4b in the last three; once /tmp/fa4 exists they also run without it).
# PARTs, with the wall-clock limit of each (estimates on one H200 in brackets):
#   stage  install the wheels of .infer-wheels/ that the machine lacks into /tmp/infer-deps
#   tests  pytest -m gpu test_gpu.py                                        180 s  [~90 s]
#   step   10b, 720p x 105 frames, 3 timed CFG steps, reference vs ours     330 s  [~260 s]
#   e2e    10b, 25 steps end to end (T5 + DiT + VAE decode), CPU offload,
#          VAE tile 32; no per-step table, one untimed warm-up step         520 s  [~480 s]
#   cache  2b, 1 timed CFG step, then 25 steps end to end exact and with
#          the step cache at 0.1: speed-up and deviation                    440 s  [~360 s]
# Issue 27 (FP8, graphed step, 24 GB recipe, calibrated cache), in the order to run them:
#   fast      10b, 720p x 105: reference / ours bf16 / ours fp8 / ours fp8 + CUDA graph, 1
#             timed CFG step each after the warm-up (velocity rel L2 vs ours bf16, peak
#             memory), the kernel profile of one fp8 step, and 25 steps of ours bf16 vs fp8 at
#             33x256x448 from the same noise (final latent rel L2)         420 s  [~320 s]
#   fast2     10b, 720p x 105: first the fp8 calibration (scaled_mm) for a 3 % final-latent
#             budget at 33x256x448, 25 steps (sensitivity of 28 layer cells on the DiT inputs
#             of 2 steps, then generations); then ours (FA4 padded to 80) / ours fp8 (the
#             chosen layers) / ours hd72 (unpadded, the 2026-12-07 baseline), 1 timed CFG step
#             each after the compile step; the kernel profile of one fp8 step; weight-only
#             fp8 final latents                                            300 s  [~280 s]
#   lowmem    10b, 25 steps end to end in the 24 GB recipe (fp8, T5/DiT/VAE offloaded in
#             turn, VAE tile 16) under a 24 GB cap of GPU memory            470 s  [~380 s]
#   e2e-fp8   10b, 25 steps end to end, fp8 + CUDA graph, offload of T5/VAE,
#             VAE tile 32                                                   470 s  [~360 s]
#   e2e-fp8-cache  the same with the step cache (CACHE_THRESHOLD, default 0.1; no exact
#             run: its deviation is what `curve` measures)                 470 s  [~250 s]
#   e2e-fp8-cal  10b, 25 steps end to end, fp8 with the calibrated layer set
#             (FP8_CALIBRATION, default the 2026-12-07 H100 fast2 file: 110 of 392 layers
#             float8, final latent 1.57 % from bf16), CUDA graph, offload, VAE tile 32, no
#             step cache                                                    470 s  [~350 s]
#   e2e-fp8-cal-cache  the same with the step cache at CACHE_THRESHOLD (the cached
#             run alone)                                                    470 s  [~220 s]
#   curve     2b fp8, 720p x 105: the step-cache calibration over 2 prompts,
#             thresholds 0.05 / 0.1 / 0.2 (CACHE_CURVE), 25 steps           470 s  [~400 s]
# Each part writes its log and JSON under $OUT (partial JSON if cut short) and the call ends
# with a table of every JSON found there (summary.md). BENCH_EXTRA="..." appends flags to
# every bench_generate.py call (e.g. "--no-compile" if compiling the 10b block eats the e2e
# budget; "--device cpu --preset debug --height 32 --width 48 --frames 9" for a CPU dry run).
# The cached run's deviation at the 10b across two calls on one machine (/tmp survives):
#     BENCH_EXTRA="--save-latent /tmp/lat-cal.safetensors" ... run_h200.sh e2e-fp8-cal
#     BENCH_EXTRA="--compare-latent /tmp/lat-cal.safetensors" ... run_h200.sh e2e-fp8-cal-cache
set -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.." || exit 1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
parts=${*:-tests step}
here=packages/mugv-infer/benchmarks

if [ "$parts" = stage ]; then
  [ -f .infer-wheels/gpu-install.sh ] || {
    echo "no .infer-wheels/: build it here with bash $here/gpu-carry.sh and carry it"
    exit 1
  }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  mkdir -p /tmp/site/mugv_formats-1.0.0.dist-info
  printf 'Metadata-Version: 2.1\nName: mugv-formats\nVersion: 1.0.0\n' \
    > /tmp/site/mugv_formats-1.0.0.dist-info/METADATA
  source .infer-wheels/gpu-install.sh || exit 1
  here=packages/mugv-infer/benchmarks
  ls /tmp/infer-deps 2>/dev/null | grep dist-info | tee "$OUT/stage.txt"
  exit 0
fi

# FlashAttention-4: already on PYTHONPATH (caller sourced .fa4b), or installed by an earlier call
if ! python3 -c "import flash_attn.cute" 2>/dev/null; then
  if [ -f .fa4b/fa4-install.sh ]; then
    source .fa4b/fa4-install.sh || echo "fa4: not installed; ours runs SDPA"
  elif [ -d /tmp/fa4/flash_attn ]; then
    export PYTHONPATH=/tmp/fa4:/tmp/fa4/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "fa4: not installed; ours runs SDPA"
  fi
fi
src=$PWD/packages/mugv-formats/src:$PWD/packages/mugv-kernels/src:$PWD/packages/mugv-vae/src
src=$src:$PWD/packages/mugv-infer/src
# /tmp/infer-deps before /tmp/site: what the stage part installed there (versions of uv.lock)
# wins over other versions of the same distributions
export PYTHONPATH=$PYTHONPATH:/tmp/infer-deps:/tmp/site:$src
export PYTHONUNBUFFERED=1
# library deprecation chatter dropped from the logs (our own UserWarnings, e.g. an FA4
# self-check that failed, stay)
NOISE="FutureWarning|DeprecationWarning|^ +warnings\.warn|^ +return func|^ +checkpoint\.load"
mkdir -p /tmp/site/mugv_formats-1.0.0.dist-info
printf 'Metadata-Version: 2.1\nName: mugv-formats\nVersion: 1.0.0\n' \
  > /tmp/site/mugv_formats-1.0.0.dist-info/METADATA
# the wheels, if carried in this call and not yet installed (torchao too: a machine that has
# diffusers and transformers from elsewhere still lacks it; 2026-12-07 run: fp8 fell back to
# scaled_mm for that alone)
if [ -f .infer-wheels/gpu-install.sh ] && ! python3 -c "import diffusers, transformers, torchao" 2>/dev/null; then
  source .infer-wheels/gpu-install.sh
fi
# gpu-install.sh, sourced, sets its own `here` (the wheel folder): ours again
here=packages/mugv-infer/benchmarks

{
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 - <<'PY'
import importlib
for name in ("torch", "triton", "diffusers", "transformers", "peft", "safetensors", "torchao",
             "sentencepiece", "flash_attn.cute", "mugv_kernels", "mugv_vae", "mugv_infer"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:16s} {getattr(mod, '__version__', 'ok')}")
    except Exception as e:  # report, do not stop: the parts say what they miss
        print(f"{name:16s} MISSING ({type(e).__name__}: {str(e)[:120]})")
PY
} 2>&1 | tee "$OUT/env.txt"
if ! python3 -c "import diffusers, transformers, mugv_infer" 2>/dev/null; then
  echo "mugv-infer's dependencies are missing: run the 'stage' part first (carry .infer-wheels)"
  exit 1
fi

bench() {  # NAME LIMIT_S ARGS...: one bench_generate.py run -> NAME.log, NAME.json
  local name=$1 limit=$2
  shift 2
  # BENCH_EXTRA (e.g. "--device cpu --preset debug ...") overrides, for a dry run on a CPU
  # shellcheck disable=SC2086
  set -- "$@" ${BENCH_EXTRA:-}
  echo "=== $name (limit ${limit} s): bench_generate.py $*"
  timeout -k 10 "$limit" python3 "$here/bench_generate.py" "$@" --out "$OUT/$name.json" 2>&1 \
    | grep --line-buffered -v -E "$NOISE" | tee "$OUT/$name.log"
  echo "=== $name rc ${PIPESTATUS[0]} (124: cut at the limit; partial JSON kept)"
}

# the fp8 layer set calibrated on the 10b's random weights (seed 0) by the 2026-12-07 H100 fast2
FAST2_CAL=docs/benchmarks/infer/h100_2026-12-07_fast2/fast2.fp8-calibration.json

for part in $parts; do
  t0=$SECONDS
  case $part in
    tests)
      echo "=== tests (limit 180 s)"
      # the whole report to the log (failures with their messages), its end to the console
      COLUMNS=200 timeout -k 10 180 python3 -m pytest -m gpu packages/mugv-infer/tests/test_gpu.py \
        -rfEX -q --tb=short -p no:cacheprovider -W ignore::DeprecationWarning \
        -W ignore::UserWarning > "$OUT/tests.log" 2>&1
      tail -30 "$OUT/tests.log"
      ;;
    step) bench step 330 --preset 10b --steps 3 ;;
    e2e) bench e2e 520 --preset 10b --steps 0 --e2e-steps 25 --offload --vae-tile 32 ;;
    cache) bench cache 440 --preset 2b --steps 1 --e2e-steps 25 --step-cache 0.1 ;;
    fast) bench fast 420 --preset 10b --steps 1 --fp8 --graphed --profile --latent-steps 25 \
      --latent-size 33x256x448 ;;
    fast2) bench fast2 300 --preset 10b --steps 1 --warmup 0 --variants "ours,ours fp8,ours hd72" \
      --fp8 --fp8-backend "${FP8_BACKEND:-scaled_mm}" --fp8-calibrate "${FP8_BUDGET:-0.03}" \
      --fp8-weight-only-check --profile --latent-steps 25 --latent-size 33x256x448 ;;
    lowmem)
      export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
      bench lowmem 470 --preset 10b --steps 0 --e2e-steps 25 --low-memory --memory-cap-gb 24
      unset PYTORCH_CUDA_ALLOC_CONF
      ;;
    e2e-fp8) bench e2e-fp8 470 --preset 10b --steps 0 --e2e-steps 25 --fp8 --graphed --offload \
      --vae-tile 32 ;;
    e2e-fp8-cache) bench e2e-fp8-cache 470 --preset 10b --steps 0 --e2e-steps 25 --fp8 --graphed \
      --offload --vae-tile 32 --step-cache "${CACHE_THRESHOLD:-0.1}" --cache-only ;;
    e2e-fp8-cal) bench e2e-fp8-cal 470 --preset 10b --steps 0 --e2e-steps 25 --fp8 --graphed \
      --offload --vae-tile 32 --fp8-calibration "${FP8_CALIBRATION:-$FAST2_CAL}" ;;
    e2e-fp8-cal-cache) bench e2e-fp8-cal-cache 470 --preset 10b --steps 0 --e2e-steps 25 --fp8 \
      --graphed --offload --vae-tile 32 --fp8-calibration "${FP8_CALIBRATION:-$FAST2_CAL}" \
      --step-cache "${CACHE_THRESHOLD:-0.1}" --cache-only ;;
    curve) bench curve 470 --preset 2b --steps 0 --fp8 --cache-curve "${CACHE_CURVE:-0.05,0.1,0.2}" \
      --cache-prompts 2 --cache-steps 25 ;;
    fasttests)
      echo "=== fasttests (limit 180 s)"
      COLUMNS=200 timeout -k 10 180 python3 -m pytest -m gpu packages/mugv-infer/tests/test_gpu_fast.py \
        -rfEX -q --tb=short -p no:cacheprovider -W ignore::DeprecationWarning \
        -W ignore::UserWarning > "$OUT/fasttests.log" 2>&1
      tail -30 "$OUT/fasttests.log"
      ;;
    *) echo "unknown part $part (stage | tests | step | e2e | cache | fast | fast2 | lowmem | e2e-fp8 | e2e-fp8-cache | e2e-fp8-cal | e2e-fp8-cal-cache | curve | fasttests)" && exit 2 ;;
  esac
  echo "=== $part took $((SECONDS - t0)) s"
done

python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
print("| run | preset | fa4 | ours variant | ref s/CFG step | ours s/CFG step | speed-up | rel L2 "
      "| ours TFLOP/s | DiT peak GB |")
print("|---|---|---|---|---|---|---|---|---|---|")
e2e_rows, cross_rows, variant_rows, notes = [], [], [], []
for f in sorted(out.glob("*.json")):
    try:
        r = json.loads(f.read_text())
    except ValueError:
        continue
    d = r.get("dit")
    if d and "reference_s_per_cfg_step" in d:
        print(f"| {f.stem} | {r['preset']} | {r['fa4']} | {r.get('ours_variant')} "
              f"| {d['reference_s_per_cfg_step']:.2f} | {d['ours_s_per_cfg_step']:.2f} "
              f"| {d['speedup']:.2f}x | {d['ours_vs_reference_rel_l2']:.1e} "
              f"| {d['ours_tflops']:.0f} | {d['peak_memory_gb_dit_only']:.1f} |")
    for name, v in ((d or {}).get("variants") or {}).items():
        if "s_per_cfg_step" in v:
            rel = v.get("velocity_rel_l2_vs_ours", v.get("velocity_rel_l2_vs_ours_hd72"))
            variant_rows.append(
                f"| {f.stem} | {r['preset']} | {name} | {v['s_per_cfg_step']:.2f} "
                f"| {v['tflops']:.0f} | {'' if rel is None else f'{rel:.2e}'} "
                f"| {v['peak_memory_gb']:.1f} | {v.get('graph', '')} |")
        else:
            variant_rows.append(f"| {f.stem} | {r['preset']} | {name} | {v.get('error')} |")
    if r.get("fp8"):
        notes.append(f"- {f.stem}: fp8 {json.dumps(r['fp8'])}")
    if (d or {}).get("profile"):
        p = d["profile"]
        notes.append(f"- {f.stem}: profile of one {p['variant']} step: {p['kernel_s']:.2f} s of "
                     "kernels, " + ", ".join(f"{k} {v:.2f} s" for k, v in p["by_kind_s"].items()))
    if r.get("latent"):
        lt = r["latent"]
        notes.append(f"- {f.stem}: final latent after {lt['steps']} steps at {lt['size']}: fp8 vs "
                     f"bf16 rel L2 {lt['final_latent_rel_l2_fp8_vs_bf16']:.3e}"
                     + (f" ({lt['fp8_layers']} float8 layers; all float8: "
                        f"{lt['final_latent_rel_l2_all_fp8_vs_bf16']:.3e})"
                        if "fp8_layers" in lt else ""))
    cal8 = r.get("fp8_calibration")
    if cal8:
        notes.append(f"- {f.stem}: fp8 calibration (budget {cal8['budget']}, {cal8['seconds']:.0f} s): "
                     f"{cal8['fp8_layers']} layers float8, {100 * cal8['fp8_benefit_share']:.0f}% "
                     f"of the benefit, met {cal8['met']}, rounds {json.dumps(cal8['rounds'])}")
        for c in sorted(cal8["cells"], key=lambda c: -c["velocity_rel_l2"])[:10]:
            notes.append(f"  - {c['cell']}: velocity rel L2 {c['velocity_rel_l2']:.2e}, "
                         f"float8 {c['fp8']}")
    if r.get("weight_only"):
        for label, w in r["weight_only"].items():
            if isinstance(w, dict):
                notes.append(f"- {f.stem}: weight-only fp8 ({label}, {w['layers']} layers): "
                             f"final latent rel L2 {w['final_latent_rel_l2_vs_bf16']:.3e}")
    cal = (r.get("e2e") or {}).get("cache_calibration")
    if cal:
        notes.append(f"- {f.stem}: step-cache calibration ({cal['prompts']} prompts, {cal['steps']} "
                     f"steps, max rel L2 {cal['max_rel_l2']}): chosen threshold {cal['threshold']}")
        for pt in cal["curve"]:
            notes.append(f"  - threshold {pt['threshold']}: skipped {pt['skipped_steps']}, DiT "
                         f"x{pt['dit_speedup']:.2f}, rel L2 {pt['rel_l2']}")
    c = r.get("cross_attention")
    if c:
        cross_rows.append(f"| {f.stem} | {r['preset']} | {c['sdpa_masked_ms']:.2f} "
                          f"| {c['fa4_packed_ms']:.2f} | {c['saved_s_per_cfg_step']:+.3f} "
                          f"| {c['fa4_vs_sdpa_rel_l2']:.1e} |")
    for name, e in (r.get("e2e") or {}).items():
        if isinstance(e, dict):
            e2e_rows.append((f.stem, r["preset"], name, e))
if cross_rows:
    print()
    print("| run | preset | cross-attn SDPA masked ms/layer | FA4 packed ms/layer "
          "| s saved / CFG step | rel L2 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(cross_rows))
print()
print("| run | preset | variant | total s | T5 s | DiT s | VAE decode s | peak GB | skipped "
      "| DiT speed-up | latent max / mean abs | video PSNR dB |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for stem, preset, name, e in e2e_rows:
    if name == "cache_calibration":
        continue
    if name == "ours_progress":  # the run was cut short: how far it got
        print(f"| {stem} | {preset} | ours, cut short after {e['steps_done']} steps "
              f"| {e['elapsed_s']:.1f} s of DiT (+ T5) | | | | | | | | |")
        continue
    try:
        extra = "| | | |"
        if "speedup_dit" in e:
            extra = ("| {speedup_dit:.2f}x | {latent_max_abs:.3g} / {latent_mean_abs:.3g} "
                     "| {video_psnr_db:.1f} |").format(**e)
        print(f"| {stem} | {preset} | {name} | {e['total_s']:.1f} | {e['t5_s']:.1f} "
              f"| {e['dit_s']:.1f} | {e['vae_decode_s']:.1f} | {e['peak_memory_gb']:.1f} "
              f"| {e['skipped_steps']} {extra}")
    except (KeyError, TypeError, ValueError) as err:
        print(f"| {stem} | {preset} | {name} | incomplete: {err!r} |")
if variant_rows:
    print()
    print("| run | preset | variant | s / CFG step | TFLOP/s | velocity rel L2 vs ours bf16 (ours: vs hd72) "
          "| peak GB | graph |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(variant_rows))
if notes:
    print()
    print("\n".join(notes))
PY
