#!/usr/bin/env python3
"""Seeds for fuzz_template: every template of tests/fixtures/templates, alone (rendered with the
fuzzer's fixed chat context) and followed by a NUL and the JSON context of a few of its cases in
cases.json (the first, the first with tools, the first that fails), plus a few small templates.
Usage: make_template_seeds.py CORPUS_DIR"""
import glob
import json
import os
import sys

out = sys.argv[1]
fix = "tests/fixtures/templates/"
cases = json.load(open(fix + "cases.json"))["cases"]
seeds = []
for path in sorted(glob.glob(fix + "*.jinja")):
    name = os.path.basename(path)
    src = open(path, "rb").read()
    seeds.append(src)
    mine = [c for c in cases if c["template"] == name]
    picks = mine[:1]
    picks += [c for c in mine if "tools" in c["context"]][:1]
    picks += [c for c in mine if "error" in c][:1]
    for c in picks:
        seeds.append(src + b"\x00" + json.dumps(c["context"], ensure_ascii=False).encode())
seeds += [s.encode() for s in (
    "{% for m in messages %}{{ m.role }}: {{ m.content | trim }}\n{% endfor %}",
    "{% set ns = namespace(n=0) %}{% for i in range(5) %}{% set ns.n = ns.n + i %}{% endfor %}"
    "{{ ns.n }}",
    "{% macro f(x, y=2) %}{{ x ~ y }}{% endmacro %}{{ f(1) }}{{ f(y=3, x='a') }}",
    "{{ {'b': 1, 'a': [1, 2.5, none, true]} | tojson }}{{ 'x,y'.split(',') | join('-') }}",
    "{%- if add_generation_prompt -%}{{ bos_token }}{% raw %}{{ x }}{% endraw %}{%- endif %}",
    "{% for x in [3, 1, 2] | sort recursive %}{{ loop.index }}{{ x }}{% endfor %}",
)]
for i, s in enumerate(seeds):
    with open(os.path.join(out, "seed%03d" % i), "wb") as f:
        f.write(s)
