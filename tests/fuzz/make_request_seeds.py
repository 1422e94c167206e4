"""Seeds for fuzz_request: chat (first byte 1) and completion (first byte 0)
bodies using every field srv_parse_request knows, valid and not."""
import json
import os
import sys

out = sys.argv[1]
chat = [
    {"messages": [{"role": "user", "content": "Hi"}]},
    {"model": "fuzz-model", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
     "max_tokens": 8, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "n": 2,
     "stop": ["\n", "END"], "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.5,
     "repetition_penalty": 1.1, "logit_bias": {"42": -100}, "logprobs": True, "top_logprobs": 3,
     "stream": True, "stream_options": {"include_usage": True}, "user": "u"},
    {"messages": [{"role": "assistant", "content": None}, {"role": "tool", "content": "x"}],
     "max_completion_tokens": 4},
    {"messages": [], "n": 17},
]
comp = [
    {"prompt": "The capital of France is", "max_tokens": 8},
    {"prompt": ["a", "b"], "n": 3, "echo": True, "logprobs": 5},
    {"prompt": [1, 2, 3, 4], "ignore_eos": True},
    {"prompt": [[1, 2], [3, 99999999]], "stop": "x"},
    {"prompt": "", "max_tokens": 0},
]
i = 0
for kind, bodies in ((1, chat), (0, comp)):
    for b in bodies:
        with open(os.path.join(out, "seed%03d" % i), "wb") as f:
            f.write(bytes([kind]) + json.dumps(b).encode())
        i += 1
