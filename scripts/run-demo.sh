#!/bin/sh
# scripts/run-demo.sh BIN MODEL - what `make run` does until `cinfer serve`
# lands: the most this build can do with the default model - tokenize a chat
# prompt, then answer it with greedy generation.
set -eu
bin=$1
model=$2
question='How many legs does a spider have?'
echo "cinfer $("$bin" --version | awk '{print $2}'): the HTTP server arrives with the next issue."
echo
echo "Chat prompt -> tokens:"
"$bin" tokenize -m "$model" --special --pieces "<|im_start|>user
$question<|im_end|>"
echo
echo "Q: $question"
printf 'A: '
"$bin" run -m "$model" -p "$question" --chat --temp 0 -n 64
echo
echo
echo "Try: $bin run -m $model --chat -p \"your question\""
