#!/bin/sh
# scripts/fuzz.sh DIR SECONDS TARGET... - runs each libFuzzer target built in
# DIR for SECONDS, with a seed corpus, and prints its exec count (make fuzz).
# A crash fails the run; the crashing input is left in build/fuzz/.
set -eu
dir=$1
secs=$2
shift 2
export CINFER_MODEL="${CINFER_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
work="$dir/work"
mkdir -p "$work"

# the SentencePiece target needs a model: train a small one like the tests do
if [ ! -f "$work/spm.model" ]; then
    spm_train --input=tests/fixtures/spm_train.txt --model_prefix="$work/spm" --vocab_size=1000 \
        --model_type=bpe --byte_fallback=true --character_coverage=1.0 \
        --normalization_rule_name=identity --remove_extra_whitespaces=false \
        --num_threads=1 >"$work/spm_train.log" 2>&1
fi
export CINFER_SPM_MODEL="$work/spm.model"

status=0
for t in "$@"; do
    corpus="$work/corpus_$t"
    mkdir -p "$corpus"
    if [ -z "$(ls "$corpus")" ]; then
        case $t in
        gguf) python3 tests/fuzz/make_gguf_seeds.py "$corpus" "$CINFER_MODEL" ;;
        request) python3 tests/fuzz/make_request_seeds.py "$corpus" ;;
        grammar) python3 tests/fuzz/make_grammar_seeds.py "$corpus" ;;
        template) python3 tests/fuzz/make_template_seeds.py "$corpus" ;;
        *) python3 -c "
import json, os, sys
for i, s in enumerate(json.load(open('tests/fixtures/tokenizer_corpus.json'))):
    open(os.path.join(sys.argv[1], 'seed%03d' % i), 'wb').write(bytes([i % 8]) + s.encode())
" "$corpus" ;;
        esac
    fi
    log="$work/fuzz_$t.log"
    echo "fuzz_$t: running for ${secs}s"
    if "$dir/fuzz_$t" -max_total_time="$secs" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$dir/crash_$t-" "$corpus" >"$log" 2>&1; then
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{print $2}')
        [ -n "$execs" ] || execs=$(grep -Eo '#[0-9]+' "$log" | tail -1 | tr -d '#')
        echo "fuzz_$t: ok, $execs executions, no crash"
    else
        echo "fuzz_$t: FAILED, see $log" >&2
        tail -30 "$log" >&2
        status=1
    fi
done
exit $status
