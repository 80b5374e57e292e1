"""read_corpus on real files: the mini corpus, the bad corpus and broken folders."""

from __future__ import annotations

import re

import pytest

from embed_assets.hashing import content_hash
from embed_assets.ingest.documents import DOCUMENT_SCHEMA, CorpusError, read_corpus

_TAG = re.compile(r"<[A-Za-z/!?][^>]*>")


def test_mini_corpus_reads_every_file(mini_corpus_dir):
    result = read_corpus(mini_corpus_dir)
    docs = result.documents

    assert result.files_seen == 8
    assert not result.skipped
    assert result.skipped_files == []
    assert docs.height == 8
    assert dict(docs.schema) == DOCUMENT_SCHEMA
    assert sorted(docs["doc_path"].to_list()) == sorted(p.name for p in mini_corpus_dir.iterdir())
    suffixes = {p.rsplit(".", 1)[1] for p in docs["doc_path"]}
    assert suffixes == {"md", "html", "txt"}
    for row in docs.iter_rows(named=True):
        assert row["text"].strip() == row["text"] and row["text"]
        assert row["doc_id"] == content_hash(row["text"])
        assert row["n_chars"] == len(row["text"])
        assert row["title"]
    assert docs["doc_id"].n_unique() == 8


def test_html_is_converted_and_titled_from_title_tag(mini_corpus_dir):
    docs = read_corpus(mini_corpus_dir).documents
    html = docs.filter(docs["doc_path"] == "runtime-config-custom.html").row(0, named=True)

    assert _TAG.search(html["text"]) is None, "HTML tags survived conversion"
    assert "<title>" not in html["text"] and "<p>" not in html["text"]
    assert html["title"] == "20.16. Customized Options"
    # Inline <code> becomes a backticked identifier, which the generator relies on.
    assert "`plpgsql.variable_conflict`" in html["text"]
    assert "Custom options have two-part names" in html["text"]


def test_titles_from_heading_and_from_file_stem(mini_corpus_dir):
    docs = read_corpus(mini_corpus_dir).documents
    title = dict(zip(docs["doc_path"], docs["title"], strict=True))
    # Markdown: the first heading.
    assert title["runtime-config-resource-work-mem.md"] == "20.4. Resource Consumption"
    # Plain text without a heading: the file stem, dashes turned into spaces.
    assert title["runtime-config-client-timeouts.txt"] == "runtime config client timeouts"


def test_bad_corpus_skips_each_reason_once(bad_corpus_dir):
    result = read_corpus(bad_corpus_dir)

    assert result.files_seen == 6
    assert dict(result.skipped) == {
        "empty": 1,
        "binary": 1,
        "not_utf8": 1,
        "unsupported_extension": 1,
        "duplicate": 1,
    }
    by_reason = {reason: path for path, reason in result.skipped_files}
    assert by_reason["empty"] == "empty.md"
    assert by_reason["binary"] == "blob.txt"
    assert by_reason["not_utf8"] == "latin1.txt"
    assert by_reason["unsupported_extension"] == "notes.pdf"
    # dup.md and orig.md hold the same text: exactly one of them is kept.
    assert by_reason["duplicate"] in {"dup.md", "orig.md"}
    kept = result.documents["doc_path"].to_list()
    assert len(kept) == 1
    assert {kept[0], by_reason["duplicate"]} == {"dup.md", "orig.md"}
    # ... and the skipped one stays a name of the kept document (for labelled queries).
    assert result.documents["aliases"].to_list() == [[by_reason["duplicate"]]]


def test_missing_folder_raises_naming_path(tmp_path):
    missing = tmp_path / "no_such_corpus"
    with pytest.raises(CorpusError, match="does not exist") as exc:
        read_corpus(missing)
    assert str(missing) in str(exc.value)


def test_file_instead_of_folder_raises(tmp_path):
    f = tmp_path / "a.md"
    f.write_text("# hi\n\ntext")
    with pytest.raises(CorpusError, match="not a folder") as exc:
        read_corpus(f)
    assert str(f) in str(exc.value)


def test_empty_folder_raises_naming_path(tmp_path):
    empty = tmp_path / "empty_corpus"
    empty.mkdir()
    (empty / "sub").mkdir()  # folders alone do not count as files
    with pytest.raises(CorpusError, match="empty") as exc:
        read_corpus(empty)
    assert str(empty) in str(exc.value)


def test_only_bad_files_raises_naming_reasons(tmp_path):
    (tmp_path / "blank.md").write_text("   \n\n  ")
    (tmp_path / "slides.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "old.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusError) as exc:
        read_corpus(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path) in msg
    for reason in ("empty=1", "unsupported_extension=1", "not_utf8=1"):
        assert reason in msg


def test_recursive_and_crlf_normalised(tmp_path):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    (sub / "deep.markdown").write_bytes(b"# Deep Title\r\n\r\nBody line one.\r\nBody line two.\r\n")
    result = read_corpus(tmp_path)
    row = result.documents.row(0, named=True)
    assert row["doc_path"] == "a/b/deep.markdown"
    assert "\r" not in row["text"]
    assert row["title"] == "Deep Title"


def test_jsonl_corpus_reads_documents_and_counts_bad_lines(tmp_path):
    from embed_assets.ingest.documents import read_jsonl_documents

    path = tmp_path / "corpus.jsonl"
    path.write_text(
        '{"_id": "MED-10", "title": "Statin use and breast cancer", "text": "Recent studies ..."}\n'
        '{"id": 7, "text": "  An id under the name id, and no title.  "}\n'
        "\n"
        '{"text": "No id at all."}\n'
        "not json\n"
        '["a list"]\n'
        '{"_id": "MED-11", "text": "   "}\n'
        '{"_id": "MED-10", "text": "The same id again."}\n'
        '{"_id": "MED-12", "title": "Statin use and breast cancer", "text": "Recent studies ..."}\n'
    )
    result = read_jsonl_documents(path)
    docs = result.documents
    assert dict(docs.schema) == DOCUMENT_SCHEMA
    assert docs["doc_path"].to_list() == ["MED-10", "7", "line 4"]
    assert docs["title"].to_list() == ["Statin use and breast cancer", "", ""]
    assert docs["text"][1] == "An id under the name id, and no title."
    assert result.files_seen == 8  # non-blank lines
    assert dict(result.skipped) == {"malformed_json": 1, "not_an_object": 1, "empty": 1, "duplicate": 2}
    assert ("corpus.jsonl:5", "malformed_json") in result.skipped_files
    # MED-12 repeats MED-10's text: another name for it. The second MED-10 is a conflicting record.
    assert docs["aliases"].to_list() == [["MED-12"], [], []]


def test_jsonl_same_text_under_two_ids_and_titles_is_one_document(tmp_path):
    from embed_assets.ingest.documents import read_jsonl_documents

    path = tmp_path / "corpus.jsonl"
    path.write_text(
        '{"_id": "1", "title": "Flow past a cylinder", "text": "Experiments on the wake."}\n'
        '{"_id": "2", "title": "Another title", "text": "  Experiments on the wake. "}\n'
        '{"_id": "3", "text": "A different abstract."}\n'
    )
    result = read_jsonl_documents(path)
    assert result.documents["doc_path"].to_list() == ["1", "3"]
    assert result.documents["aliases"].to_list() == [["2"], []]
    assert dict(result.skipped) == {"duplicate": 1}


def test_jsonl_lines_not_utf8_or_with_non_string_text_are_skipped_and_named(tmp_path):
    from embed_assets.ingest.documents import read_jsonl_documents

    path = tmp_path / "corpus.jsonl"
    path.write_bytes(
        b'{"_id": "ok", "text": "Caf\xc3\xa9 au lait in UTF-8."}\n'
        b'{"_id": "latin1", "text": "Caf\xe9 in Latin-1."}\n'
        b'{"_id": "n", "text": 42}\n'
        b'{"_id": "l", "text": ["a", "list"]}\n'
        b'{"_id": "o", "text": {"nested": "object"}}\n'
        b'{"_id": "z", "text": null}\n'
        b'{"_id": "t", "title": "no text field"}\n'
        + b'{"_id": "deep", "text": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}\n"
    )
    result = read_jsonl_documents(path)
    assert result.documents["doc_path"].to_list() == ["ok"]
    assert result.documents["text"][0] == "Café au lait in UTF-8."
    assert "\ufffd" not in result.documents["text"][0]
    # JSON nested 5,000 deep is beyond Python's parser: a malformed line, not a crash.
    assert dict(result.skipped) == {
        "not_utf8": 1,
        "text_is_number": 1,
        "text_is_array": 1,
        "text_is_object": 1,
        "text_is_null": 1,
        "no_text": 1,
        "malformed_json": 1,
    }
    assert ("corpus.jsonl:2", "not_utf8") in result.skipped_files


def test_jsonl_corpus_that_is_missing_or_has_no_text_raises_naming_it(tmp_path):
    from embed_assets.ingest.documents import read_jsonl_documents

    with pytest.raises(CorpusError, match="corpus_jsonl is not a file: .*nope.jsonl"):
        read_jsonl_documents(tmp_path / "nope.jsonl")
    path = tmp_path / "empty.jsonl"
    path.write_text('{"_id": "a", "text": ""}\n')
    with pytest.raises(CorpusError, match=r"no document with text: .*empty\.jsonl \(skipped: empty=1\)"):
        read_jsonl_documents(path)
