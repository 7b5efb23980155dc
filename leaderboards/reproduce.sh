#!/usr/bin/env bash
# Regenerate every embedded-model leaderboard entry: train, evaluate, re-score, build.
#
#   bash leaderboards/reproduce.sh            # everything (train + eval), 2 jobs at a time
#   PHASES="eval build" bash leaderboards/reproduce.sh   # only re-evaluate existing runs
#   PHASES=list bash leaderboards/reproduce.sh           # print the training runs (algo env dir steps seed)
#
# Settings (environment variables): SEEDS (default "0 1 2 3 4"), JOBS (parallel one-thread jobs, 2),
# RUNS (run directories, runs/lb), WRITING_STEPS (100), SHORT_STEPS (20: abstract expansion and coding,
# where the ~1M embedded model cannot reach the 128-token length gate nor write working code).
# Trained rows: MAGRPO, independent GRPO, IAC and MAAC (baselines/iac.py, maac.py) and single-agent GRPO.
# Single-agent GRPO = MAGRPO on the env's single-agent view (`--env single:<id>`, baselines/untrained.py)
# with 192 new tokens (both parts in one response).
# Every trained run uses the preset embedded-demo (docs/learning_on_cpu.md) with its step count overridden;
# the evaluation of every method uses the same decoding (temperature 1.0, 96 new tokens per agent).
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"0 1 2 3 4"}
JOBS=${JOBS:-2}
RUNS=${RUNS:-runs/lb}
WRITING_STEPS=${WRITING_STEPS:-100}
SHORT_STEPS=${SHORT_STEPS:-20}
PHASES=${PHASES:-"train eval build"}
ENVS=${ENVS:-"coop_writing-v0 coop_abstract_expansion-v0 coop_coding-v0"}
TRAIN_ENVS=${TRAIN_ENVS:-"$ENVS"}  # envs that get trained rows
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python}

steps_for() { if [ "$1" = coop_writing-v0 ]; then echo "$WRITING_STEPS"; else echo "$SHORT_STEPS"; fi; }

train_jobs() {  # one line per run: algo train-env output-dir steps seed
  for env in $TRAIN_ENVS; do
    for seed in $SEEDS; do
      echo "magrpo $env $RUNS/$env/magrpo-seed$seed $(steps_for "$env") $seed"
      echo "independent $env $RUNS/$env/independent-seed$seed $(steps_for "$env") $seed"
      echo "magrpo single:$env $RUNS/$env/single-seed$seed $(steps_for "$env") $seed"
      echo "iac $env $RUNS/$env/iac-seed$seed $(steps_for "$env") $seed"
      echo "maac $env $RUNS/$env/maac-seed$seed $(steps_for "$env") $seed"
    done
  done
}

train_one() {  # skips runs that finished; records wall time in <run>.seconds
  local algo=$1 env=$2 out=$3 steps=$4 seed=$5
  [ -f "$out/summary.json" ] && return 0
  mkdir -p "$(dirname "$out")"
  local t0=$SECONDS
  local extra=()
  case "$env" in single:*) extra=(--max-new-tokens 192) ;; esac  # one response holds both parts
  # a killed grid continues where it stopped (a run resumed from its checkpoint ends identical); a run killed
  # before its first checkpoint starts again
  local mode=(--overwrite)
  [ -f "$out/checkpoint.pt" ] && mode=(--resume)
  $PY -m baselines.cli train --algo "$algo" --preset embedded-demo --env "$env" --steps "$steps" --seed "$seed" \
    --eval-every 0 --eval-tasks 2 --eval-seeds 1 --output-dir "$out" --no-progress "${mode[@]}" "${extra[@]}" >>"$out.log" 2>&1
  echo $((SECONDS - t0)) >"$out.seconds"
}
export -f train_one
export PY

if [[ " $PHASES " == *" list "* ]]; then train_jobs; fi  # PHASES=list: print the training runs

if [[ " $PHASES " == *" train "* ]]; then
  train_jobs | xargs -P "$JOBS" -L 1 bash -c 'train_one "$@"' _
fi

if [[ " $PHASES " == *" eval "* ]]; then
  for env in $ENVS; do
    extra=()
    if [ "$env" = coop_coding-v0 ]; then extra=(--samples 5 --pass-k 1 5); fi
    for base in single parallel sequential discussion; do
      $PY -m baselines.evaluation --env "$env" --baseline "$base" --seeds $SEEDS "${extra[@]}" --no-progress --overwrite --resume
    done
    for method in magrpo independent single iac maac; do
      [ -d "$RUNS/$env/$method-seed${SEEDS%% *}" ] || continue  # not trained (TRAIN_ENVS)
      $PY -m baselines.evaluation --env "$env" --policy "$RUNS/$env/$method-seed{seed}" --seeds $SEEDS "${extra[@]}" \
        --no-progress --overwrite --resume
    done
  done
fi

if [[ " $PHASES " == *" build "* ]]; then
  for entry in leaderboards/entries/*--embedded--*.json; do
    $PY -m llm_coop_leaderboard rescore "$entry"
  done
  $PY -m llm_coop_leaderboard build
  $PY -m llm_coop_leaderboard build --check
fi
