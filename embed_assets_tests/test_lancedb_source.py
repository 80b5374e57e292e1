"""Reading the chunks of a production LanceDB table as the pipeline's documents."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dagster as dg
import lancedb
import pyarrow as pa
import pytest

from embed_assets.defs.definitions import all_assets, build_resources
from embed_assets.ingest.documents import CorpusError, read_lancedb_chunks


@pytest.fixture()
def prod_table(tmp_path):
    db = lancedb.connect(str(tmp_path / "prod"))
    db.create_table(
        "kb",
        data=pa.table(
            {
                "id": ["r1", "r2", "r3", "r4"],
                "title": ["Memory", "WAL", "Memory", "Empty"],
                "body": [
                    "`work_mem` sets sort memory.",
                    "`wal_level` sets WAL detail.",
                    "`work_mem` sets sort memory.",
                    "  ",
                ],
            }
        ),
    )
    return str(tmp_path / "prod")


def test_rows_become_documents_and_bad_rows_are_counted(prod_table):
    result = read_lancedb_chunks(prod_table, "kb", text_column="body", title_column="title", id_column="id")
    docs = result.documents
    assert docs.height == 2
    assert docs["doc_path"].to_list() == ["lancedb://kb/r1", "lancedb://kb/r2"]
    assert docs["title"].to_list() == ["Memory", "WAL"]
    assert dict(result.skipped) == {"duplicate": 1, "empty": 1}
    assert docs["aliases"].to_list() == [["lancedb://kb/r3"], []]


def test_missing_table_or_column_names_it(prod_table):
    with pytest.raises(CorpusError, match="'nope'"):
        read_lancedb_chunks(prod_table, "nope")
    with pytest.raises(CorpusError, match="text_column='text'"):
        read_lancedb_chunks(prod_table, "kb")


def test_source_documents_asset_reads_lancedb(prod_table, tmp_path):
    result = dg.materialize(
        all_assets,
        selection=["source_documents"],
        run_config={
            "ops": {
                "source_documents": {
                    "config": {
                        "lancedb_uri": prod_table,
                        "lancedb_table": "kb",
                        "text_column": "body",
                        "id_column": "id",
                    }
                }
            }
        },
        resources=build_resources(str(tmp_path / "home")),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.output_for_node("source_documents").height == 2
