#!/bin/sh
# scripts/run-demo.sh BIN MODEL - what `make run` does until the server lands:
# the most this build can do with the default model, which is tokenizing.
set -eu
bin=$1
model=$2
text="<|im_start|>user
Hello! How many r's are in \"strawberry\"? 🍓<|im_end|>"
echo "cinfer $("$bin" --version | awk '{print $2}'): the server and generation arrive with the next"
echo "issues; this build loads the model and tokenizes.  Chat prompt -> tokens:"
echo
"$bin" tokenize -m "$model" --special --pieces "$text"
echo
echo "Try: $bin tokenize -m $model --pieces \"your text\""
