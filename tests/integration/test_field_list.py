"""The README's request-field list (between <!-- fields:begin --> and
<!-- fields:end -->) held against the server, both ways:

- grep: every top-level field the parsers in server/ read (a
  GetObjectItemCaseSensitive(root, "x"), get_int/get_bool/get_number/
  get_ids(root, "x"), refuse(root, "x"), or an entry of the refused and
  structured-output tables) is in the list;
- behaviour: every field the list names for a route is read there - sent
  with a value of the wrong type it is a 400 whose param names it, where a
  field the server silently dropped would pass - and the fields listed as
  ignored, like a name nobody knows, are accepted.
"""

import re
from pathlib import Path

import pytest

from conftest import Server

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCK = README[README.index("<!-- fields:begin -->"): README.index("<!-- fields:end -->")]
WRONG = [[["a value of no field's type"]]]


def bullets():
    """{bold heading: [field names]}: the backticked names outside parentheses (values and
    sub-fields are in parentheses).  A second heading in a bullet ("Refused") is named after
    the first's route."""
    out = {}
    for b in re.split(r"\n- ", BLOCK)[1:]:
        pieces = re.split(r"\*\*(.+?)\*\*", b)
        first = pieces[1]
        for head, text in zip(pieces[1::2], pieces[2::2]):
            while re.search(r"\([^()]*\)", text):
                text = re.sub(r"\([^()]*\)", "", text)
            name = head if head == first else first.rsplit(",", 1)[0] + ", " + head.lower()
            out[name] = re.findall(r"`([a-z_]+)`", text)
    return out


LISTS = bullets()


def listed(*heads):
    return sorted({f for h in heads for f in LISTS[h]})


def test_the_list_has_the_sections_the_tests_use():
    assert set(LISTS) >= {
        "Chat and completions, honoured", "Chat only, honoured", "Completions only, honoured",
        "Refused with a 400 naming the field", "Responses (`/v1/responses`), honoured",
        "Responses (`/v1/responses`), refused", "Embeddings (`/v1/embeddings`), honoured",
        "Accepted and ignored",
    }, LISTS.keys()


def parser_fields():
    src = "".join((ROOT / "server" / f).read_text() for f in
                  ("openai.c", "chat.c", "tools.c", "responses.c"))
    found = set(re.findall(
        r'(?:GetObjectItemCaseSensitive|get_int|get_bool|get_number|get_ids|refuse)\(root, "([a-z_]+)"',
        src))
    # the tables of fields read in a loop: the refused ones, the structured-output ones, tools
    for pattern, entry in ((r"k_refused\[\] = \{(.*?)\n    \};", r'\{"([a-z_]+)",'),
                           (r"\} fields\[\] = \{(.*?)\n    \};", r'\{"([a-z_]+)",'),
                           (r"tools\[\] = \{([^}]*)\}", r'"([a-z_]+)"')):
        m = re.search(pattern, src, re.S)
        assert m, pattern
        found |= set(re.findall(entry, m.group(1)))
    return found


def test_every_field_the_parsers_read_is_listed():
    everything = {f for v in LISTS.values() for f in v}
    missing = sorted(parser_fields() - everything)
    assert not missing, f"read by server/*.c but not in the README's field list: {missing}"


def probe(srv, path, base, field):
    status, out = srv.json("POST", path, {**base, field: WRONG})
    return status, (out or {}).get("error", {})


CHAT = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
COMPL = ("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
RESP = ("/v1/responses", {"input": "Hi", "max_output_tokens": 2})
EMB = ("/v1/embeddings", {"input": "Hi"})


@pytest.fixture(scope="module")
def srv():
    s = Server(["--embeddings"], "fields_server").start()
    yield s
    assert s.stop() == 0


CASES = (
    [(CHAT, f) for f in listed("Chat and completions, honoured", "Chat only, honoured")]
    + [(COMPL, f) for f in listed("Chat and completions, honoured", "Completions only, honoured")]
    + [(COMPL if f == "suffix" else CHAT, f) for f in listed("Refused with a 400 naming the field")]
    + [(RESP, f) for f in listed("Responses (`/v1/responses`), honoured",
                                 "Responses (`/v1/responses`), refused")]
    + [(EMB, f) for f in listed("Embeddings (`/v1/embeddings`), honoured")]
)


@pytest.mark.parametrize("route,field", CASES, ids=[f"{r[0]}:{f}" for r, f in CASES])
def test_each_listed_field_is_read(srv, route, field):
    path, base = route
    if field in ("tools",) and path == "/v1/completions":
        pytest.skip("tools is listed as refused on completions")
    status, err = probe(srv, path, base, field)
    assert status == 400, (status, err)
    # the param names the field (the Responses parser maps chat's names back)
    assert err.get("param", "").split(".")[0] == field or field in err.get("message", ""), err


def test_tools_are_refused_on_completions(srv):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    status, out = srv.json("POST", COMPL[0], {**COMPL[1], "tools": tools})
    assert status == 400 and out["error"]["param"] == "tools"


@pytest.mark.parametrize("route", [CHAT, COMPL, RESP, EMB], ids=lambda r: r[0])
def test_ignored_fields_and_unknown_ones_are_accepted(srv, route):
    path, base = route
    # user is checked as a string everywhere; /v1/responses repeats metadata back, so checks it
    skip = {"user"} | ({"metadata"} if path == "/v1/responses" else set())
    extra = {f: WRONG for f in listed("Accepted and ignored") if f not in skip}
    extra["a_field_nobody_ever_heard_of"] = WRONG
    status, out = srv.json("POST", path, {**base, **extra})
    assert status == 200, out
