"""Every decision on the differential corpus (tests/reader_corpus.py) is unchanged: the
reader and the appraisal refuse, name and accept exactly what they did when the corpus
was recorded. A change that is meant must be recorded again (see the generator) and
justified."""
import json

import reader_corpus


def test_every_corpus_decision_is_unchanged():
    stored = json.loads(reader_corpus.CORPUS.read_text(encoding="utf-8"))
    expected = reader_corpus.expand(stored)
    actual = reader_corpus.run(reader_corpus.load_bases())
    assert actual.keys() == expected.keys(), "the generator makes other cases than recorded"
    changed = [name for name in expected if actual[name] != expected[name]]
    detail = "\n".join(f"{name}:\n  was {json.dumps(expected[name])[:400]}\n"
                       f"  now {json.dumps(actual[name])[:400]}" for name in changed[:10])
    assert not changed, f"{len(changed)} of {len(expected)} decisions changed:\n{detail}"
    assert len(expected) > 5000
    assert sum(decision[0] == "ok" for decision in expected.values()) > 1000
