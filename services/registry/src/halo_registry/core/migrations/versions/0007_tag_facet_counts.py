"""Tag facet counts without the base model, so a dashboard's tag facet reads a few thousand rows.

- ``run_tag_facet_counts``: how many runs with each tag have each (status, method, backend) — the
  ``run_facet_counts`` tag rows summed over base models. At 100,000 runs and 45 tags it holds ~5,000 rows
  against ~40,000 tag rows there: the tag facet of a search without a model filter sums these (10x fewer
  rows); with a model filter it still sums ``run_facet_counts``. NULL backend is stored as ``''``.
- Kept exact by triggers of its own beside migration 0006's (same write paths, same rules: a run's delete
  removes its tags' rows before the run goes; a tag row deleted after its run changes nothing; counts
  that reach 0 stay as rows and are skipped when read). Backfilled here. On PostgreSQL both counts tables get a fillfactor of 50, so the
trigger updates are HOT updates.

As for 0006: a later ``batch_alter_table`` that recreates ``runs`` or ``run_tags`` on SQLite must create
these triggers again (``create_triggers`` here).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_COLS = "(tag, status, method, backend, n)"
_BUMP = "ON CONFLICT (tag, status, method, backend) DO UPDATE SET n = run_tag_facet_counts.n + 1"


def _statements() -> dict[str, list[str]]:
    """Trigger bodies shared by both dialects."""
    return {
        "leave": ["UPDATE run_tag_facet_counts SET n = n - 1 WHERE status = OLD.status AND method = OLD.method "
                  "AND backend = COALESCE(OLD.backend, '') AND tag IN (SELECT tag FROM run_tags WHERE run_pk = OLD.pk)"],
        "enter": [f"INSERT INTO run_tag_facet_counts {_COLS} "
                  "SELECT tag, NEW.status, NEW.method, COALESCE(NEW.backend, ''), 1 FROM run_tags WHERE run_pk = NEW.pk "
                  + _BUMP],
        "tag_added": [f"INSERT INTO run_tag_facet_counts {_COLS} "
                      "SELECT NEW.tag, status, method, COALESCE(backend, ''), 1 FROM runs WHERE pk = NEW.run_pk " + _BUMP],
        "tag_removed": ["UPDATE run_tag_facet_counts SET n = n - 1 WHERE tag = OLD.tag AND (status, method, backend) = "
                        "(SELECT status, method, COALESCE(backend, '') FROM runs WHERE pk = OLD.run_pk)"],
    }


_CHANGED = ("OLD.status IS DISTINCT FROM NEW.status OR OLD.method IS DISTINCT FROM NEW.method OR "
            "OLD.backend IS DISTINCT FROM NEW.backend")
_TRIGGERS = (("runs", "trg_runs_tagfacets_insert"), ("runs", "trg_runs_tagfacets_update"),
             ("runs", "trg_runs_tagfacets_delete"), ("run_tags", "trg_run_tags_tagfacets_insert"),
             ("run_tags", "trg_run_tags_tagfacets_delete"))
_FUNCTIONS = ("halo_runs_tagfacets_enter", "halo_runs_tagfacets_move", "halo_runs_tagfacets_leave",
              "halo_run_tags_tagfacets_added", "halo_run_tags_tagfacets_removed")


def create_triggers() -> None:
    """The triggers that keep ``run_tag_facet_counts`` (both dialects)."""
    s = _statements()
    if op.get_bind().dialect.name == "sqlite":
        def body(parts: list[str]) -> str:
            # every SELECT before an upsert's ON CONFLICT has a WHERE (SQLite's parser needs one)
            return "BEGIN " + " ".join(p + ";" for p in parts) + " END"

        changed = _CHANGED.replace("IS DISTINCT FROM", "IS NOT")
        op.execute("CREATE TRIGGER trg_runs_tagfacets_insert AFTER INSERT ON runs " + body(s["enter"]))
        op.execute("CREATE TRIGGER trg_runs_tagfacets_update AFTER UPDATE OF status, method, backend "
                   f"ON runs WHEN {changed} " + body(s["leave"] + s["enter"]))
        op.execute("CREATE TRIGGER trg_runs_tagfacets_delete BEFORE DELETE ON runs " + body(s["leave"]))
        op.execute("CREATE TRIGGER trg_run_tags_tagfacets_insert AFTER INSERT ON run_tags " + body(s["tag_added"]))
        op.execute("CREATE TRIGGER trg_run_tags_tagfacets_delete AFTER DELETE ON run_tags " + body(s["tag_removed"]))
        return

    def function(name: str, parts: list[str], ret: str) -> None:
        op.execute(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   + " ".join(p + ";" for p in parts) + f" RETURN {ret}; END $$")

    function("halo_runs_tagfacets_enter", s["enter"], "NULL")
    function("halo_runs_tagfacets_move", s["leave"] + s["enter"], "NULL")
    function("halo_runs_tagfacets_leave", s["leave"], "OLD")
    function("halo_run_tags_tagfacets_added", s["tag_added"], "NULL")
    function("halo_run_tags_tagfacets_removed", s["tag_removed"], "NULL")
    op.execute("CREATE TRIGGER trg_runs_tagfacets_insert AFTER INSERT ON runs FOR EACH ROW "
               "EXECUTE FUNCTION halo_runs_tagfacets_enter()")
    op.execute("CREATE TRIGGER trg_runs_tagfacets_update AFTER UPDATE OF status, method, backend ON runs "
               f"FOR EACH ROW WHEN ({_CHANGED}) EXECUTE FUNCTION halo_runs_tagfacets_move()")
    op.execute("CREATE TRIGGER trg_runs_tagfacets_delete BEFORE DELETE ON runs FOR EACH ROW "
               "EXECUTE FUNCTION halo_runs_tagfacets_leave()")
    op.execute("CREATE TRIGGER trg_run_tags_tagfacets_insert AFTER INSERT ON run_tags FOR EACH ROW "
               "EXECUTE FUNCTION halo_run_tags_tagfacets_added()")
    op.execute("CREATE TRIGGER trg_run_tags_tagfacets_delete AFTER DELETE ON run_tags FOR EACH ROW "
               "EXECUTE FUNCTION halo_run_tags_tagfacets_removed()")


def drop_triggers() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, trigger in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + ("" if sqlite else f" ON {table}"))
    if not sqlite:
        for fn in _FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {fn}()")


def upgrade() -> None:
    op.create_table(
        "run_tag_facet_counts",
        sa.Column("tag", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("method", sa.String(64), primary_key=True),
        sa.Column("backend", sa.String(32), primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        sqlite_with_rowid=False,
    )
    op.execute(
        f"INSERT INTO run_tag_facet_counts {_COLS} "
        "SELECT t.tag, r.status, r.method, COALESCE(r.backend, ''), COUNT(*) "
        "FROM run_tags t JOIN runs r ON r.pk = t.run_pk GROUP BY t.tag, r.status, r.method, COALESCE(r.backend, '')")
    create_triggers()
    if op.get_bind().dialect.name == "postgresql":
        # Every run written updates a few count rows in place: leave room in their pages so PostgreSQL
        # updates them HOT (no new index entries; a bulk load left ~60 dead index entries per live row).
        for table in ("run_facet_counts", "run_tag_facet_counts"):
            op.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def downgrade() -> None:
    drop_triggers()
    op.drop_table("run_tag_facet_counts")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE run_facet_counts RESET (fillfactor)")
