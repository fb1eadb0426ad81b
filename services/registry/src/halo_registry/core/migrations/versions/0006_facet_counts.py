"""Facet counts kept by the database itself, so a dashboard's search + facets never scans the runs.

- ``run_facet_counts``: how many runs have each (status, method, backend, base_model) — rows with
  ``tag = ''`` — and how many runs with each tag have it — rows with ``tag = <the tag>``. NULL backend
  and base_model are stored as ``''`` (so they can be part of the primary key). At 100,000 runs it holds
  a few thousand to a few tens of thousands of rows, against the runs table and its 1.5 tag rows per run.
- Triggers keep it exact on every write path (ingest, tag edits, imports, deletes, raw SQL): on
  ``runs`` insert / update of the four columns / delete, and on ``run_tags`` insert / delete. A run's
  delete removes its tags' rows from the counts before the run goes (``BEFORE DELETE``); a tag row
  deleted after its run (a cascade) finds no run and changes nothing. Counts that reach 0 stay as rows
  (bounded by the distinct combinations) and are skipped when read.
- Backfilled here from the runs and tags already stored.

Note for later migrations: on SQLite a ``batch_alter_table`` that recreates ``runs`` or ``run_tags``
drops their triggers; such a migration must create them again (``create_triggers`` here). The test
``test_facet_counts_match_a_scan`` checks the counts against a scan after every kind of write.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_KEY = "(tag, status, method, backend, base_model)"
_BUMP = f"ON CONFLICT {_KEY} DO UPDATE SET n = run_facet_counts.n + 1"


def _old_matches(r: str) -> str:
    return (f"status = {r}.status AND method = {r}.method AND backend = COALESCE({r}.backend, '') "
            f"AND base_model = COALESCE({r}.base_model, '')")


def _statements() -> dict[str, list[str]]:
    """Trigger bodies shared by both dialects."""
    return {
        # a run leaves its combination, and each of its tags' combination
        "leave": [f"UPDATE run_facet_counts SET n = n - 1 WHERE {_old_matches('OLD')} "
                  "AND (tag = '' OR tag IN (SELECT tag FROM run_tags WHERE run_pk = OLD.pk))"],
        "enter": [
            "INSERT INTO run_facet_counts (tag, status, method, backend, base_model, n) "
            "VALUES ('', NEW.status, NEW.method, COALESCE(NEW.backend, ''), COALESCE(NEW.base_model, ''), 1) " + _BUMP,
            "INSERT INTO run_facet_counts (tag, status, method, backend, base_model, n) "
            "SELECT tag, NEW.status, NEW.method, COALESCE(NEW.backend, ''), COALESCE(NEW.base_model, ''), 1 "
            "FROM run_tags WHERE run_pk = NEW.pk " + _BUMP,
        ],
        "tag_added": [
            "INSERT INTO run_facet_counts (tag, status, method, backend, base_model, n) "
            "SELECT NEW.tag, status, method, COALESCE(backend, ''), COALESCE(base_model, ''), 1 "
            "FROM runs WHERE pk = NEW.run_pk " + _BUMP],
        "tag_removed": [
            "UPDATE run_facet_counts SET n = n - 1 WHERE tag = OLD.tag AND (status, method, backend, base_model) = "
            "(SELECT status, method, COALESCE(backend, ''), COALESCE(base_model, '') FROM runs WHERE pk = OLD.run_pk)"],
    }


_CHANGED = ("OLD.status IS DISTINCT FROM NEW.status OR OLD.method IS DISTINCT FROM NEW.method OR "
            "OLD.backend IS DISTINCT FROM NEW.backend OR OLD.base_model IS DISTINCT FROM NEW.base_model")


def create_triggers() -> None:
    """The triggers that keep ``run_facet_counts`` (both dialects)."""
    s = _statements()
    if op.get_bind().dialect.name == "sqlite":
        def body(parts: list[str]) -> str:
            # SQLite's parser needs a WHERE before an upsert's ON CONFLICT after a SELECT: every SELECT here has one.
            return "BEGIN " + " ".join(p + ";" for p in parts) + " END"

        changed = _CHANGED.replace("IS DISTINCT FROM", "IS NOT")
        op.execute("CREATE TRIGGER trg_runs_facets_insert AFTER INSERT ON runs " + body(s["enter"]))
        op.execute("CREATE TRIGGER trg_runs_facets_update AFTER UPDATE OF status, method, backend, base_model "
                   f"ON runs WHEN {changed} " + body(s["leave"] + s["enter"]))
        op.execute("CREATE TRIGGER trg_runs_facets_delete BEFORE DELETE ON runs " + body(s["leave"]))
        op.execute("CREATE TRIGGER trg_run_tags_facets_insert AFTER INSERT ON run_tags " + body(s["tag_added"]))
        op.execute("CREATE TRIGGER trg_run_tags_facets_delete AFTER DELETE ON run_tags " + body(s["tag_removed"]))
        return

    def function(name: str, parts: list[str], ret: str) -> None:
        op.execute(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   + " ".join(p + ";" for p in parts) + f" RETURN {ret}; END $$")

    function("halo_runs_facets_enter", s["enter"], "NULL")
    function("halo_runs_facets_move", s["leave"] + s["enter"], "NULL")
    function("halo_runs_facets_leave", s["leave"], "OLD")
    function("halo_run_tags_facets_added", s["tag_added"], "NULL")
    function("halo_run_tags_facets_removed", s["tag_removed"], "NULL")
    op.execute("CREATE TRIGGER trg_runs_facets_insert AFTER INSERT ON runs FOR EACH ROW "
               "EXECUTE FUNCTION halo_runs_facets_enter()")
    op.execute("CREATE TRIGGER trg_runs_facets_update AFTER UPDATE OF status, method, backend, base_model ON runs "
               f"FOR EACH ROW WHEN ({_CHANGED}) EXECUTE FUNCTION halo_runs_facets_move()")
    op.execute("CREATE TRIGGER trg_runs_facets_delete BEFORE DELETE ON runs FOR EACH ROW "
               "EXECUTE FUNCTION halo_runs_facets_leave()")
    op.execute("CREATE TRIGGER trg_run_tags_facets_insert AFTER INSERT ON run_tags FOR EACH ROW "
               "EXECUTE FUNCTION halo_run_tags_facets_added()")
    op.execute("CREATE TRIGGER trg_run_tags_facets_delete AFTER DELETE ON run_tags FOR EACH ROW "
               "EXECUTE FUNCTION halo_run_tags_facets_removed()")


def drop_triggers() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, trigger in (("runs", "trg_runs_facets_insert"), ("runs", "trg_runs_facets_update"),
                           ("runs", "trg_runs_facets_delete"), ("run_tags", "trg_run_tags_facets_insert"),
                           ("run_tags", "trg_run_tags_facets_delete")):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + ("" if sqlite else f" ON {table}"))
    if not sqlite:
        for fn in ("halo_runs_facets_enter", "halo_runs_facets_move", "halo_runs_facets_leave",
                   "halo_run_tags_facets_added", "halo_run_tags_facets_removed"):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}()")


def upgrade() -> None:
    op.create_table(
        "run_facet_counts",
        sa.Column("tag", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("method", sa.String(64), primary_key=True),
        sa.Column("backend", sa.String(32), primary_key=True),
        sa.Column("base_model", sa.String(500), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO run_facet_counts (tag, status, method, backend, base_model, n) "
        "SELECT '', status, method, COALESCE(backend, ''), COALESCE(base_model, ''), COUNT(*) FROM runs "
        "GROUP BY status, method, COALESCE(backend, ''), COALESCE(base_model, '')")
    op.execute(
        "INSERT INTO run_facet_counts (tag, status, method, backend, base_model, n) "
        "SELECT t.tag, r.status, r.method, COALESCE(r.backend, ''), COALESCE(r.base_model, ''), COUNT(*) "
        "FROM run_tags t JOIN runs r ON r.pk = t.run_pk "
        "GROUP BY t.tag, r.status, r.method, COALESCE(r.backend, ''), COALESCE(r.base_model, '')")
    create_triggers()


def downgrade() -> None:
    drop_triggers()
    op.drop_table("run_facet_counts")
