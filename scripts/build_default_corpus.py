"""Build the default corpus in ``data/corpus/`` from the PostgreSQL 15 HTML docs.

Source: Debian package ``postgresql-doc-15`` (version 15.20-0+deb12u1), whose
``usr/share/doc/postgresql-doc-15/html/`` holds the DocBook-generated manual.
To get it::

    mkdir -p /tmp/pgdoc && cd /tmp/pgdoc
    apt-get download postgresql-doc-15 && dpkg-deb -x postgresql-doc-15*.deb x

then run (from the repository root)::

    python scripts/build_default_corpus.py \\
        --html-dir /tmp/pgdoc/x/usr/share/doc/postgresql-doc-15/html --out data/corpus

Every page in :data:`PAGES` becomes ``<page>.md``: the navigation header and
footer are removed, commit links in the release notes are dropped, the rest is
converted with html2text (no wrapping, links and images dropped, inline
``<code>`` kept as backticks) and the page title becomes the first line as
``# Title``. The selection is an explicit list, so a rerun on the same HTML (and
the same html2text version; data/corpus was made with 2025.4.15) gives the same
files byte for byte.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

import html2text

EXPECTED_VERSION = "15.20"

# Server configuration, client authentication, roles and settings management.
CONFIG_PAGES = [
    "runtime-config",
    "config-setting",
    "runtime-config-file-locations",
    "runtime-config-connection",
    "runtime-config-resource",
    "runtime-config-wal",
    "runtime-config-replication",
    "runtime-config-query",
    "runtime-config-logging",
    "runtime-config-statistics",
    "runtime-config-autovacuum",
    "runtime-config-client",
    "runtime-config-locks",
    "runtime-config-compatible",
    "runtime-config-error-handling",
    "runtime-config-preset",
    "runtime-config-custom",
    "runtime-config-short",
    "client-authentication",
    "auth-pg-hba-conf",
    "auth-username-maps",
    "auth-methods",
    "auth-trust",
    "auth-password",
    "gssapi-auth",
    "auth-ident",
    "auth-peer",
    "auth-ldap",
    "auth-radius",
    "auth-cert",
    "auth-pam",
    "auth-bsd",
    "client-authentication-problems",
    "auth-delay",
    "user-manag",
    "database-roles",
    "role-attributes",
    "role-membership",
    "role-removal",
    "predefined-roles",
    "default-roles",
    "sql-altersystem",
    "sql-set",
    "sql-show",
    "sql-reset",
    "sql-set-role",
    "sql-set-session-authorization",
    "sql-alterrole",
    "sql-createuser",
    "sql-alteruser",
    "sql-droprole",
    "sql-reassign-owned",
    "sql-load",
    "sql-discard",
    "view-pg-settings",
    "view-pg-file-settings",
    "view-pg-hba-file-rules",
    "view-pg-ident-file-mappings",
    "view-pg-roles",
    "view-pg-user",
    "view-pg-shadow",
    "view-pg-group",
    "catalog-pg-authid",
    "catalog-pg-auth-members",
    "catalog-pg-db-role-setting",
    "catalog-pg-parameter-acl",
    "view-pg-config",
    "view-pg-shmem-allocations",
    "view-pg-backend-memory-contexts",
    "view-pg-available-extensions",
    "runtime",
    "postgres-user",
    "creating-cluster",
    "server-start",
    "server-shutdown",
    "upgrading",
    "preventing-server-spoofing",
    "encryption-options",
    "ssl-tcp",
    "gssapi-enc",
    "manage-ag-overview",
    "manage-ag-createdb",
    "manage-ag-templatedbs",
    "manage-ag-config",
    "sql-alterdatabase",
    "catalog-pg-database",
    "manage-ag-dropdb",
    "manage-ag-tablespaces",
    "sql-createtablespace",
    "sql-droptablespace",
    "catalog-pg-tablespace",
    "non-durability",
    "jit",
    "jit-reason",
    "jit-decision",
    "jit-configuration",
    "libpq-envars",
    "libpq-pgpass",
    "libpq-pgservice",
    "libpq-ldap",
]

# SQLSTATE error codes and how errors are raised, reported and trapped.
ERROR_PAGES = [
    "errcodes-appendix",
    "plpgsql-errors-and-messages",
    "pltcl-error-handling",
    "error-message-reporting",
    "protocol-error-fields",
    "mvcc-serialization-failure-handling",
]

# Release notes: the 15.0 major release and the five latest minor releases (15.16 to 15.20).
RELEASE_PAGES = ["release", "release-15"] + [f"release-15-{minor}" for minor in range(16, 21)]

# Other server administration: WAL, backup, replication, monitoring, maintenance, tools.
ADMIN_PAGES = [
    "wal",
    "wal-reliability",
    "checksums",
    "wal-intro",
    "wal-async-commit",
    "wal-configuration",
    "wal-internals",
    "pgtestfsync",
    "backup",
    "backup-dump",
    "backup-file",
    "continuous-archiving",
    "pgarchivecleanup",
    "backup-manifest-files",
    "backup-manifest-format",
    "backup-manifest-toplevel",
    "backup-manifest-wal-ranges",
    "high-availability",
    "warm-standby-failover",
    "hot-standby",
    "logical-replication",
    "logical-replication-publication",
    "logical-replication-subscription",
    "logical-replication-col-lists",
    "logical-replication-conflicts",
    "logical-replication-restrictions",
    "logical-replication-architecture",
    "logical-replication-monitoring",
    "logical-replication-security",
    "logical-replication-config",
    "logical-replication-quick-setup",
    "logicaldecoding",
    "logicaldecoding-explanation",
    "logicaldecoding-synchronous",
    "logicaldecoding-streaming",
    "logicaldecoding-two-phase-commits",
    "sql-createpublication",
    "sql-droppublication",
    "catalog-pg-publication",
    "view-pg-publication-tables",
    "sql-createsubscription",
    "sql-dropsubscription",
    "catalog-pg-subscription",
    "catalog-pg-replication-origin",
    "view-pg-replication-slots",
    "view-pg-replication-origin-status",
    "monitoring",
    "monitoring-ps",
    "monitoring-locks",
    "diskusage",
    "disk-usage",
    "disk-full",
    "maintenance",
    "routine-vacuuming",
    "routine-reindex",
    "logfile-maintenance",
    "sql-vacuum",
    "sql-analyze",
    "sql-checkpoint",
    "mvcc",
    "mvcc-intro",
    "mvcc-caveats",
    "sql-prepare-transaction",
    "sql-commit-prepared",
    "sql-rollback-prepared",
    "view-pg-prepared-xacts",
    "views",
    "app-pg-isready",
    "app-pgcontroldata",
    "app-pgchecksums",
    "pgbuffercache",
    "pgprewarm",
    "auto-explain",
]

PAGES: list[str] = CONFIG_PAGES + ERROR_PAGES + RELEASE_PAGES + ADMIN_PAGES

_TITLE = re.compile(r"<title>(.*?)</title>", re.DOTALL)
# DocBook emits these as flat divs (a table and an <hr/>, no nested div).
_NAV = {cls: re.compile(rf'<div class="{cls}">(.*?)</div>', re.DOTALL) for cls in ("navheader", "navfooter")}
# Release notes end each item with links to the git commits, rendered as "§".
_COMMIT_LINK = re.compile(r'\s*<a class="ulink"[^>]*>§</a>')
# Cross-references to a setting carry its bare name; mark it as code like the rest.
_GUC_XREF = re.compile(r'<a class="xref" href="[^"]*#GUC-[^"]*"[^>]*>([^<]+)</a>')
# A one-column "simplelist" table would become a Markdown table with a bogus header row.
_SIMPLELIST = re.compile(r'<table[^>]*class="simplelist"[^>]*>(.*?)</table>', re.DOTALL)
_CELL = re.compile(r"<td>(.*?)</td>", re.DOTALL)
_HEADING = re.compile(r"^#{1,6} +(.+?)\s*$")
_LONE_INDENT = re.compile(r"^ (?=\S)")
_BLANK_RUNS = re.compile(r"\n{3,}")


def _clean_inline(text: str) -> str:
    # DocBook inserts zero-width spaces inside long identifiers; they would split them.
    return text.replace("\u200b", "").replace("\u00a0", " ")


def page_title(raw: str) -> str:
    m = _TITLE.search(raw)
    if not m:
        raise ValueError("page has no <title>")
    return re.sub(r"\s+", " ", _clean_inline(html.unescape(m.group(1)))).strip()


def strip_navigation(raw: str) -> str:
    for cls, pattern in _NAV.items():
        m = pattern.search(raw)
        if m is None:
            raise ValueError(f"page has no div.{cls}")
        if "<div" in m.group(1):
            raise ValueError(f"div.{cls} has a nested div; the regex would cut it short")
        raw = raw[: m.start()] + raw[m.end() :]
    return raw


def html_page_to_markdown(raw: str) -> str:
    """Convert one DocBook HTML page to Markdown with a ``# Title`` first line."""
    title = page_title(raw)
    body = _COMMIT_LINK.sub("", strip_navigation(raw))
    body = _GUC_XREF.sub(r'<code class="varname">\1</code>', body)
    body = _SIMPLELIST.sub(
        lambda m: "<ul>" + "".join(f"<li>{c}</li>" for c in _CELL.findall(m.group(1))) + "</ul>", body
    )
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_links = True
    converter.ignore_images = True
    converter.unicode_snob = True
    md = _clean_inline(converter.handle(body))
    # Trailing blanks, and the lone leading blank html2text puts before some terms, are noise.
    lines = [_LONE_INDENT.sub("", line.rstrip()) for line in md.splitlines()]
    # The page's own top heading repeats the title: drop it, the title line replaces it.
    for i, line in enumerate(lines):
        if not line:
            continue
        m = _HEADING.match(line)
        if m and m.group(1).strip() == title:
            del lines[i]
        break
    text = _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()
    return f"# {title}\n\n{text}\n"


def build(html_dir: Path, out: Path, prune: bool = False) -> tuple[int, int]:
    """Convert every page of :data:`PAGES`; return (pages written, total bytes)."""
    if len(set(PAGES)) != len(PAGES):
        raise SystemExit("PAGES lists a page twice")
    missing = [p for p in PAGES if not (html_dir / f"{p}.html").is_file()]
    if missing:
        raise SystemExit(f"missing pages in {html_dir}: {', '.join(missing)}")
    index = html_dir / "index.html"
    if index.is_file() and f"PostgreSQL {EXPECTED_VERSION} Documentation" not in index.read_text("utf-8"):
        print(f"warning: {html_dir} is not the PostgreSQL {EXPECTED_VERSION} manual", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for page in PAGES:
        raw = (html_dir / f"{page}.html").read_text(encoding="utf-8")
        try:
            md = html_page_to_markdown(raw)
        except ValueError as e:
            raise SystemExit(f"{page}.html: {e}") from e
        data = md.encode("utf-8")
        (out / f"{page}.md").write_bytes(data)
        total += len(data)

    stale = sorted(p for p in out.glob("*.md") if p.stem not in set(PAGES))
    for p in stale:
        if prune:
            p.unlink()
        else:
            print(f"warning: {p} is not in PAGES (use --prune to remove it)", file=sys.stderr)
    return len(PAGES), total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--html-dir",
        type=Path,
        default=Path("/tmp/pgdoc/x/usr/share/doc/postgresql-doc-15/html"),
        help="html/ folder of the extracted postgresql-doc-15 package",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data/corpus"), help="output folder (flat .md files)"
    )
    parser.add_argument(
        "--prune", action="store_true", help="delete .md files in --out that are not in PAGES"
    )
    args = parser.parse_args(argv)
    n, total = build(args.html_dir, args.out, prune=args.prune)
    print(f"wrote {n} pages, {total} bytes, to {args.out}")


if __name__ == "__main__":
    main()
