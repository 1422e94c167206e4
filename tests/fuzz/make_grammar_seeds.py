#!/usr/bin/env python3
"""Seeds for fuzz_grammar: the schemas and regexes of tests/fixtures/grammar_cases.json
and a few GBNF grammars, each as one byte (the kind: 0 GBNF, 1 schema, 2 regex, 3
choice) followed by the source.  Usage: make_grammar_seeds.py CORPUS_DIR"""
import json
import os
import sys

out = sys.argv[1]
cases = json.load(open("tests/fixtures/grammar_cases.json"))
seeds = [b"\x00" + g.encode() for g in (
    'root ::= "a" b* "c"\nb ::= [x-z] | "q"\n',
    'root ::= item ("\\n" item)*\nitem ::= "- " [^\\n]{1,30}\n',
    'root ::= (expr "=" ws term "\\n")+\nexpr ::= term ([-+*/] term)*\n'
    'term ::= [0-9]+ | "(" expr ")"\nws ::= [ \\t]*\n',
)]
seeds += [b"\x01" + json.dumps(c["schema"]).encode() for c in cases["schema_cases"]]
seeds += [b"\x01" + json.dumps(u["schema"]).encode() for u in cases["unsupported"]]
seeds += [b"\x02" + r["regex"].encode() for r in cases["regex_cases"]]
seeds += [b"\x03" + json.dumps(["yes", "no", "maybe"]).encode()]
for i, s in enumerate(seeds):
    with open(os.path.join(out, "seed%03d" % i), "wb") as f:
        f.write(s)
